"""``python -m training`` is ``rem-train``."""

from training.cli import main

raise SystemExit(main())
