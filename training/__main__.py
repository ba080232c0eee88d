"""``python -m rem_train`` is ``rem-train``."""

from rem_train.cli import main

raise SystemExit(main())
