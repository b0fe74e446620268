"""Run the bench sections (bench/bench_*.py, each side by side with its peer tool) and rebuild docs/benchmarks.md.

One invocation is one run: every section gets the same run id (SLMCTL_BENCH_RUN_ID) and writes its
results (SECTION.json and the Markdown fragment SECTION.md) into a staging folder. A section's files
replace those in bench/results/ only when the section succeeded, and docs/benchmarks.md is rebuilt only
when every section of the invocation succeeded: a failed run keeps the previous figures and says so.

    python bench/run.py              # every section
    python bench/run.py gguf merge   # some sections (make bench ONLY="gguf merge")
    python bench/run.py --collect    # rebuild docs/benchmarks.md from bench/results/, run nothing
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import ROOT, machine, run_id  # noqa: E402

BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
DOC = ROOT / "docs" / "benchmarks.md"


def sections() -> dict[str, Path]:
    return {s.stem.removeprefix("bench_"): s for s in sorted(BENCH.glob("bench_*.py"))}


def render() -> str:
    """docs/benchmarks.md from the fragments in bench/results/, each headed by the run that produced it."""
    runs = {}
    for j in sorted(RESULTS.glob("*.json")):
        with open(j) as f:
            meta = json.load(f)
        runs[j.stem] = (meta.get("run_id"), meta.get("date"))
    ids = sorted({r for r, _ in runs.values() if r})
    m = machine()
    parts = ["# Benchmarks\n",
             "Produced by `make bench` (`bench/run.py`), which builds the peer tools' venvs and runs every section\n"
             "side by side with its peer: the same inputs, alternating rounds, medians with the range, the load\n"
             "recorded. Ratios are slmctl / peer (below 1.0: slmctl faster or smaller). Rerun one section with\n"
             "`make bench ONLY=NAME`.\n",
             f"Run{'s' if len(ids) > 1 else ''}: {', '.join(f'`{i}`' for i in ids) or 'none recorded'}; "
             f"machine of the last render: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB.\n"]
    for frag in sorted(RESULTS.glob("*.md")):
        rid, date = runs.get(frag.stem, (None, None))
        text = frag.read_text().rstrip() + "\n"
        if rid:
            text += f"\n_Section `{frag.stem}`: run `{rid}`, {date}._\n"
        else:
            text += (f"\n_Section `{frag.stem}`: from a run before run ids were recorded (older code); "
                     f"`make bench ONLY={frag.stem}` measures it again._\n")
        parts.append(text)
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    if "--collect" in argv:
        DOC.write_text(render())
        return 0
    all_sections = sections()
    only = [a for a in argv if not a.startswith("-")] + os.environ.get("ONLY", "").split()
    unknown = sorted(set(only) - set(all_sections))
    if unknown:
        print(f"unknown bench section(s): {', '.join(unknown)}; known: {', '.join(all_sections)}", file=sys.stderr)
        return 2
    todo = {n: s for n, s in all_sections.items() if not only or n in only}
    rid = run_id()
    stage = BENCH / "out" / f"results-{rid}"
    failed = []
    for name, script in todo.items():
        sec_stage = stage / name
        sec_stage.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, SLMCTL_BENCH_RUN_ID=rid, SLMCTL_BENCH_RESULTS=str(sec_stage))
        print(f"== bench {name} (run {rid})", file=sys.stderr, flush=True)
        t = time.time()
        r = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env)
        print(f"== bench {name}: exit {r.returncode} in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
        produced = sorted(sec_stage.iterdir())
        if r.returncode or not any(p.suffix == ".md" for p in produced):
            failed.append(name)
            continue
        RESULTS.mkdir(exist_ok=True)
        for p in produced:
            shutil.copy2(p, RESULTS / p.name)
        if not (RESULTS / f"{name}.json").exists() or json.loads((RESULTS / f"{name}.json").read_text()).get("run_id") != rid:
            # a section that writes only its Markdown still gets its run recorded
            (RESULTS / f"{name}.json").write_text(json.dumps(
                {"section": name, "run_id": rid, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "machine": machine()}, indent=1) + "\n")
    if failed:
        print(f"bench run {rid} failed in: {', '.join(failed)}; docs/benchmarks.md and the previous results of "
              f"those sections are kept", file=sys.stderr)
        return 1
    DOC.write_text(render())
    print(str(DOC))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
