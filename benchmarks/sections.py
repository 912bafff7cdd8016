"""What the small benchmark scripts share: the machine they ran on, and their table written as a section of a
RESULTS file (the rest of the file kept)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch


def machine() -> str:
    """``x86_64, 2 cores, Python 3.11.7, torch 2.13.0+cpu, 2026-12-07``."""
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
            f"{torch.__version__}, {time.strftime('%Y-%m-%d')}")


def write_section(path: str | os.PathLike[str], title: str, text: str) -> None:
    """Put ``text`` (which starts with the ``title`` line) in ``path`` in place of the section ``title`` had, or at
    its end; the sections after it stay."""
    out = Path(path)
    old = out.read_text() if out.exists() else ""
    head, _, rest = ("", "", old[len(title):]) if old.startswith(title) else old.partition("\n" + title)
    tail = rest.split("\n## ", 1)[1] if "\n## " in rest else ""
    before = head.rstrip("\n") + "\n\n" if head.strip() else ""
    out.write_text(before + text.rstrip("\n") + "\n" + ("\n## " + tail if tail else ""))
