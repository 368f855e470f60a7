"""`python -m serving ...`: the command line."""

from serving.cli import main

raise SystemExit(main())
