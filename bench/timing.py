"""Shared by the bench scripts: run a command under GNU time and read its wall time and peak RSS."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from pathlib import Path

# peer tools' venvs, built by `make peers` (project-relative .peers/, or $SLMCTL_PEERS)
PEERS = Path(os.environ.get("SLMCTL_PEERS", Path(__file__).resolve().parent.parent / ".peers"))


def timed(cmd: list[str], cwd=None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run under /usr/bin/time -v: (result, wall seconds, peak RSS MiB)."""
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=cwd)
    wall = rss = float("nan")
    for line in r.stderr.splitlines():
        line = line.strip()
        if line.startswith("Elapsed (wall clock) time"):
            parts = line.rsplit(" ", 1)[-1].split(":")
            wall = sum(float(p) * 60 ** i for i, p in enumerate(reversed(parts)))
        elif line.startswith("Maximum resident set size"):
            rss = int(line.rsplit(" ", 1)[-1]) / 1024
    return r, wall, rss


@contextlib.contextmanager
def heavy(lock: str | None):
    """Hold ``lock`` (flock(2), the same lock as `flock FILE cmd`) around one command, so that heavy jobs
    run one at a time and a command's wall time never includes the wait for the lock; no-op without one."""
    if not lock:
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
