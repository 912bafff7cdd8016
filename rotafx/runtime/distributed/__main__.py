"""``python -m rotafx.runtime.distributed --plan DIR --stage i ...``: one stage process (what ``rotafx serve`` runs)."""

from .stage import main

raise SystemExit(main())
