"""`python -m trackgate`: the same as the `trackgate` command."""

from trackgate.cli import main

raise SystemExit(main())
