"""``python -m benchmarks``: run the dnmf benchmark suite (see benchmarks/suite.py)."""

import sys

from benchmarks.suite import main

if __name__ == "__main__":  # worker processes started by spawn re-import this module
    sys.exit(main())
