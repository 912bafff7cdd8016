"""A stage process that fails on purpose, for the fault tests: ``python -m tests.faulty_stage --fault KIND@R ...``.

``die@R``: when request R is about to be computed, deliver what was already sent, then
exit with status 17 (a crash between requests); ``hang@R``: stop there for good (the
process still answers heartbeats); ``stop@R``: suspend the whole process (SIGSTOP), as a
debugger or an operator's ctrl-Z would; ``fail@R``: raise ``RuntimeError("injected")`` there (a bug in
the stage's own code, which the stage reports itself).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from rotafx.runtime.distributed.stage import StageServer, add_serve_args, serve_from_args

DIED = 17


class FaultyStage(StageServer):
    """A :class:`StageServer` that dies, hangs, stops or raises before computing one request."""

    def __init__(self, *args: object, fault: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        kind, _, at = fault.partition("@")
        if kind not in ("die", "hang", "stop", "fail") or not at.isdigit():
            raise SystemExit(f"faulty_stage: --fault must be die@R, hang@R, stop@R or fail@R, got {fault!r}")
        self.kind, self.at = kind, int(at)

    def before_compute(self, request: int) -> None:
        if request != self.at:
            return
        if self.kind == "fail":
            raise RuntimeError("injected")
        if self.kind == "die":
            self.flush()
            os._exit(DIED)
        if self.kind == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        while True:
            time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.faulty_stage")
    add_serve_args(ap)
    ap.add_argument("--fault", required=True, help="die@R, hang@R, stop@R or fail@R")
    args = ap.parse_args(argv)
    return serve_from_args(args, FaultyStage, fault=args.fault)


def command(fault: str) -> list[str]:
    """The command ``launch_local(stage_commands=...)`` runs for a stage that fails with ``fault``."""
    return [sys.executable, "-m", "tests.faulty_stage", "--fault", fault]


if __name__ == "__main__":
    raise SystemExit(main())
