"""Run the bench sections (bench/bench_*.py, each side by side with its peer tool) and rebuild docs/benchmarks.md.

One invocation is one run: every section gets the same run id (SLMCTL_BENCH_RUN_ID) and writes its
results (SECTION.json and the Markdown fragment SECTION.md) into a staging folder. A section's files
replace those in bench/results/ only when the section succeeded, and docs/benchmarks.md is rebuilt only
when every section of the invocation succeeded: a failed run keeps the previous figures and says so.

    python bench/run.py              # every section
    python bench/run.py gguf merge   # some sections (make bench ONLY="gguf merge")
    python bench/run.py --collect    # rebuild docs/benchmarks.md from bench/results/, run nothing
    python bench/run.py --list       # the sections in run order, with their budgets

Sections run in ORDER (the rest after, by name); each section's wall time is printed, recorded in its JSON
(``section_seconds``) and in bench/results/run.json (the last run: id, sections, failures, minutes), and
compared with its budget (BUDGET_MIN: each section's minutes in its last recorded run on the 2-core machine, where
one is recorded; `make bench` as a whole takes about 5.2 hours there).
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


# run order and minutes per section on the 2-core machine at each script's defaults: the section_seconds of the
# last recorded run where there is one (prune, distill, eval and profile predate that record: their smoke-measured
# minutes). A section over its budget is reported, not stopped.
BUDGET_MIN = {"gguf": 4, "merge": 5, "onnx": 22, "quantize": 17, "prune": 7, "distill": 6, "eval": 2, "profile": 5,
              "calib": 133, "gguf_quant": 39, "imatrix": 9, "scale": 29, "release": 34}
ORDER = list(BUDGET_MIN)


def sections() -> dict[str, Path]:
    found = {s.stem.removeprefix("bench_"): s for s in sorted(BENCH.glob("bench_*.py"))}
    return {n: found[n] for n in sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))}


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
    if "--list" in argv:
        for n in sections():
            print(f"{n}\t{BUDGET_MIN.get(n, '?')} min")
        print(f"total\t{sum(BUDGET_MIN.get(n, 0) for n in sections())} min")
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
    failed, took = [], {}
    for name, script in todo.items():
        sec_stage = stage / name
        sec_stage.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, SLMCTL_BENCH_RUN_ID=rid, SLMCTL_BENCH_RESULTS=str(sec_stage))
        print(f"== bench {name} (run {rid})", file=sys.stderr, flush=True)
        t = time.time()
        r = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env)
        took[name] = time.time() - t
        budget = BUDGET_MIN.get(name)
        over = f" (over its {budget}-minute budget)" if budget and took[name] > 60 * budget else ""
        print(f"== bench {name}: exit {r.returncode} in {took[name]:.0f} s{over}", file=sys.stderr, flush=True)
        produced = sorted(sec_stage.iterdir())
        if r.returncode or not any(p.suffix == ".md" for p in produced):
            failed.append(name)
            continue
        RESULTS.mkdir(exist_ok=True)
        for p in produced:
            if p.suffix == ".json":  # the section's own duration goes into its record
                with open(p) as f:
                    doc = json.load(f)
                p.write_text(json.dumps({**doc, "section_seconds": round(took[name], 1)}, indent=1) + "\n")
            shutil.copy2(p, RESULTS / p.name)
        if not (RESULTS / f"{name}.json").exists() or json.loads((RESULTS / f"{name}.json").read_text()).get("run_id") != rid:
            # a section that writes only its Markdown still gets its run recorded
            (RESULTS / f"{name}.json").write_text(json.dumps(
                {"section": name, "run_id": rid, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "machine": machine()}, indent=1) + "\n")
    (RESULTS / "run.json").write_text(json.dumps(
        {"run_id": rid, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "sections": list(todo),
         "failed": failed, "minutes": {n: round(v / 60, 1) for n, v in took.items()},
         "total_minutes": round(sum(took.values()) / 60, 1)}, indent=1) + "\n")
    print(f"bench run {rid}: {sum(took.values()) / 60:.1f} minutes; " + ", ".join(f"{n} {v / 60:.1f}" for n, v in took.items()),
          file=sys.stderr)
    if failed:
        print(f"bench run {rid} failed in: {', '.join(failed)}; docs/benchmarks.md and the previous results of "
              f"those sections are kept", file=sys.stderr)
        return 1
    DOC.write_text(render())
    print(str(DOC))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
