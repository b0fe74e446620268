"""Run every bench/bench_*.py (side by side with its peer tool) and rebuild docs/benchmarks.md.

Each benchmark writes a Markdown fragment to bench/results/<name>.md; this script runs them in
order and joins the fragments under one header, so docs/benchmarks.md is always the latest run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    collect_only = "--collect" in argv  # rebuild docs/benchmarks.md from the fragments, run nothing
    only = set(a for a in argv if not a.startswith("--"))
    scripts = [] if collect_only else sorted((ROOT / "bench").glob("bench_*.py"))
    failed = []
    for s in scripts:
        name = s.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        print(f"== bench {name}", file=sys.stderr, flush=True)
        t = time.time()
        r = subprocess.run([sys.executable, str(s)], cwd=ROOT)
        print(f"== bench {name}: exit {r.returncode} in {time.time() - t:.0f} s", file=sys.stderr)
        if r.returncode:
            failed.append(name)
    parts = ["# Benchmarks\n",
             "Measured on this project's CI machine (2 CPU cores, 24 GiB, no GPU) by `make bench`, which runs\n"
             "`bench/run.py`. Each section is side by side with the peer tool in the same run, as ratios\n"
             "(slmctl / peer: below 1.0 means slmctl is faster or smaller).\n"]
    for frag in sorted((ROOT / "bench" / "results").glob("*.md")):
        parts.append(frag.read_text().rstrip() + "\n")
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(parts))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
