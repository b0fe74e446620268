"""Shared by the bench scripts: run a command under GNU time and read its wall time and peak RSS."""

from __future__ import annotations

import subprocess


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
