"""`python -m serving ...`: the command line."""

from serving.cli.main import main

raise SystemExit(main())
