"""Run one command as a fresh process and report its own wall time, CPU time and peak RSS.

Started by bench/timing.py as ``python -S -E launch.py REPORT.json CMD...``. The command is forked
from this small interpreter, not from the (large) bench process: Linux charges a child the peak RSS of
the memory it was forked or vfork-exec'd from, so a command started straight from a bench script that
already holds a model would report the script's peak, not its own. Here that floor is this launcher's
few MiB. Nothing but the report is written; the command's stdout and stderr pass through.
"""

import json
import os
import sys
import time


def busy_ticks() -> int:
    """CPU ticks spent by the whole machine outside idle and iowait (from /proc/stat), or -1."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v) - v[3] - v[4]
    except (OSError, ValueError, IndexError):
        return -1


def main() -> int:
    report, cmd = sys.argv[1], sys.argv[2:]
    load_before = os.getloadavg()
    ticks0, t0 = busy_ticks(), time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    ticks1 = busy_ticks()
    cpu = ru.ru_utime + ru.ru_stime
    hz = os.sysconf("SC_CLK_TCK")
    # cores' worth of CPU that other processes used while the command ran (machine busy time minus its own)
    other = max(0.0, (ticks1 - ticks0) / hz - cpu) / wall if ticks0 >= 0 and wall > 0 else None
    rc = os.waitstatus_to_exitcode(status)
    with open(report, "w") as f:
        json.dump({"rc": rc, "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": ru.ru_maxrss / 1024,
                   "load_before": load_before, "load_after": os.getloadavg(), "other_cores": other}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
