"""Launch a plan on this machine: one ``rotafx serve`` process per stage on 127.0.0.1, and a driver in this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ...plan.schema import read_plan
from .driver import Driver
from .secret import ENV, new_secret
from .transport import free_port

__all__ = ["LocalCluster", "launch_local"]


@dataclass
class LocalCluster:
    """Stage processes started on this machine plus the driver in this process; ``close`` ends them all."""

    driver: Driver
    processes: list[subprocess.Popen]
    logs: list[Path] = field(default_factory=list)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(stop=exc[0] is None)

    def run(self, requests: Sequence[Any], **kw: Any) -> list[Any]:
        """:meth:`Driver.run` on this cluster's driver."""
        return self.driver.run(requests, **kw)

    generates_across_processes = True  # rotafx.generate(cluster, ...) calls generate

    def generate(self, input_ids: Any, max_new_tokens: int = 20, **kw: Any) -> Any:
        """:meth:`Driver.generate` on this cluster's driver."""
        return self.driver.generate(input_ids, max_new_tokens, **kw)

    def wait(self, timeout: float) -> list[int | None]:
        """Wait up to ``timeout`` s for every stage process to exit; their exit codes (``None``: still running)."""
        deadline = time.monotonic() + timeout
        for p in self.processes:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        return [p.poll() for p in self.processes]

    def stderr(self, i: int) -> str:
        """What stage process ``i`` wrote to its stderr."""
        return self.logs[i].read_text() if i < len(self.logs) and self.logs[i].exists() else ""

    def close(self, stop: bool = True, grace_s: float = 10.0) -> None:
        """Stop the stages (or abort them with ``stop=False``), wait ``grace_s`` for them to exit, kill the rest."""
        try:
            self.driver.close(stop=stop)
        finally:
            for p in self.processes:  # a stopped (SIGSTOP) stage must run again to see the abort and exit
                if p.poll() is None:
                    try:
                        p.send_signal(signal.SIGCONT)
                    except OSError:
                        pass
            self.wait(grace_s if stop else 2.0)
            for p in self.processes:
                if p.poll() is None:
                    p.kill()
                    p.wait(5)


def launch_local(plan_dir: str | os.PathLike[str], *, port: int | None = None, timeout: float = 60.0,
                 join_timeout: float = 60.0, heartbeat_timeout: float = 5.0, emulate_links: bool = False,
                 threads: int = 1,
                 log_dir: str | os.PathLike[str] | None = None, python: str = sys.executable,
                 stage_commands: Mapping[int, Sequence[str]] | None = None,
                 trace: str | os.PathLike[str] | None = None) -> LocalCluster:
    """Start ``rotafx serve`` for every stage of the plan on 127.0.0.1 and connect a :class:`Driver` to them.

    Each stage process runs ``python -m rotafx.runtime.distributed`` (``stage_commands``
    gives another command for some stages, to which the serve arguments are appended) with
    ``OMP_NUM_THREADS=threads``; its stderr goes to ``log_dir/stage{i}.log`` (a temporary
    directory by default). Use as a context manager: leaving it stops the stages and kills
    any that did not exit. A fresh secret is generated for the run and given to the stage
    processes in their environment (``ROTAFX_SECRET``), never on a command line. ``trace``: record a Chrome
    trace there (:meth:`Driver.trace`).
    """
    plan = read_plan(plan_dir)
    port = port or free_port()
    logs_at = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="rotafx-logs-"))
    logs_at.mkdir(parents=True, exist_ok=True)
    secret = new_secret()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), ENV: secret,
           "ROTAFX_PARENT_PID": str(os.getpid())}
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []
    try:
        for i in range(plan.num_stages):
            base = list((stage_commands or {}).get(i, [python, "-m", "rotafx.runtime.distributed"]))
            cmd = [*base, "--plan", str(plan_dir), "--stage", str(i), "--master-addr", "127.0.0.1", "--master-port",
                   str(port), "--timeout", str(timeout), "--join-timeout", str(join_timeout), "--threads", str(threads)]
            if emulate_links:
                cmd.append("--emulate-links")
            log = logs_at / f"stage{i}.log"
            logs.append(log)
            with open(log, "wb") as f:
                procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, env=env))
        driver = Driver(plan_dir, master_addr="127.0.0.1", master_port=port, timeout=timeout,
                        join_timeout=join_timeout, heartbeat_timeout=heartbeat_timeout, emulate_links=emulate_links,
                        processes=procs, secret=secret, trace=trace)
    except BaseException:
        for p in procs:
            p.kill()
            p.wait(5)
        raise
    return LocalCluster(driver, procs, logs)
