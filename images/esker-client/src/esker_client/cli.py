"""`esker` inside a notebook environment: only `esker fn` (the hub's own `esker` has more)."""

import sys

from .functions.cli import main

if __name__ == "__main__":
    sys.exit(main())
