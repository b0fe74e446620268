"""Run a command, then fsync the file it wrote (``python bench/fsynced.py OUT CMD...``).

llama.cpp's converter leaves its output in the page cache; slmctl's writers fsync theirs before the
rename that makes it visible. Timed through this wrapper, the converter gets the same durability, so
the two sides do the same work; the bench sections report the plain and the fsynced comparison."""

import os
import subprocess
import sys

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
