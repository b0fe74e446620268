"""Run a command, then fsync the file it wrote (``python bench/fsynced.py OUT CMD...``).

llama.cpp's converter leaves its output in the page cache; slmctl's writers fsync theirs before the
rename that makes it visible. Timed through this wrapper, the converter gets the same durability, so
the two sides do the same work; the bench sections report the plain and the fsynced comparison."""

import os
import subprocess
import sys
from pathlib import Path


def command(cmd: list[str], out) -> list[str]:
    """``cmd`` (which writes ``out``) run through this wrapper, so its output is fsynced before it returns."""
    return [sys.executable, str(Path(__file__).resolve()), str(out), *map(str, cmd)]


if __name__ == "__main__":
    out, cmd = sys.argv[1], sys.argv[2:]
    rc = subprocess.call(cmd)
    if rc == 0:
        fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    sys.exit(rc)
