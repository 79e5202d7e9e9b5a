"""``python -m benchmarks``: the command line of ``benchmarks/cli.py``."""

import sys

from benchmarks.cli import main

sys.exit(main())
