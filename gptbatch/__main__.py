"""`python -m gptbatch`."""

import sys

from gptbatch.cli import main

sys.exit(main())
