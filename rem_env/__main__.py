"""``python -m rem_env``: the ``rem-env`` command."""

import sys

from rem_env.cli import main

if __name__ == "__main__":
    sys.exit(main())
