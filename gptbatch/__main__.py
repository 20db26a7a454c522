"""`python -m gptbatch`."""

import sys

try:  # Ctrl-C while the command line loads: one line and exit 130, not a traceback
    from gptbatch.cli import main
except KeyboardInterrupt:
    sys.stderr.write("gptbatch: interrupted before anything was done\n")
    sys.exit(130)

sys.exit(main())
