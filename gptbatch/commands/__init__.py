"""The core of each CLI command but build, paired with gptbatch/cli/ by name."""
