"""gptbatch: make for the OpenAI Batch API.

The command line is the primary interface; `gptbatch.load(config)` is the Python one (see
gptbatch/project.py).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Project", "__version__", "load"]


def __getattr__(name: str) -> Any:
    # Lazy: every CLI command imports this package, and most never need the Python API.
    if name in ("load", "Project"):
        from gptbatch import project

        return getattr(project, name)
    raise AttributeError(f"module 'gptbatch' has no attribute {name!r}")
