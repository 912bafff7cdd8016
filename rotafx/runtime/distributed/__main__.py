"""``python -m rotafx.runtime.distributed --plan DIR --stage i ...``: one stage process (what ``rotafx serve`` runs)."""

import os
import sys

from .stage import main

code = main()
sys.stdout.flush()
sys.stderr.flush()
# the stage is done (its store says so); skip the interpreter's teardown, where gloo's threads may still be winding
# down: under torchrun, about one exit in ten aborted there ("terminate called without an active exception")
os._exit(code)
