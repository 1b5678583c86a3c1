"""Entry point of ``python -m cores``."""

from cores.cli import main

raise SystemExit(main())
