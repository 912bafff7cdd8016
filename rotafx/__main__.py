"""``python -m rotafx``: the ``rotafx`` command."""

from .cli import main

raise SystemExit(main())
