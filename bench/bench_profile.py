"""slmctl profile on the sample: torch, onnxruntime and llama.cpp side by side, and a depth-width sweep.

Stages (all by default; name some to run only those, each under the heavy-job lock so the machine is quiet):

  prepare   export the sample to ONNX once (bench/out/profile/onnx; reused when present)
  targets   `slmctl profile` on each target: the fp32 HF folder on torch, the fp32 ONNX on onnxruntime,
            the sample's own Q4_1 GGUF on llamacpp; the same prompts, BENCH_REPEATS (10) repetitions after warm-ups
  sweep     `slmctl profile --sweep depth-width --params 135M --base sample:smollm2-135m --target torch`,
            plot in docs/profile-sweep-smollm2.png (+ .svg)
  render    write profile.json and profile.md from the JSON reports in bench/out/profile of this run (run id:
            SLMCTL_BENCH_RUN_ID, which `make bench` sets; set it yourself to join stages run separately)

  flock /tmp/slmctl-heavy.lock .venv/bin/python bench/bench_profile.py prepare targets
  flock /tmp/slmctl-heavy.lock .venv/bin/python bench/bench_profile.py sweep render

BENCH_THREADS (default "<cores>") and BENCH_SWEEP_THREADS (default "<cores>,1") set the thread counts.
Each CLI run is its own process; its --json report is kept (bench/out/profile/<target>.json), with the
1-minute load average before and after the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from timing import portable, run_id, write_results  # noqa: E402  (bench/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "profile"
PLOT = ROOT / "docs" / "profile-sweep-smollm2.png"
SLMCTL = [sys.executable, "-m", "slmctl"]

# `make bench` budget: about 6 minutes on 2 cores at these defaults
REPEATS = int(os.environ.get("BENCH_REPEATS", "10"))
# thread counts to profile at (SLMCTL_THREADS for every target): all cores, and one core, which a
# neighbour's process on the other core does not stall (each parallel region's barrier waits on it)
THREADS = [int(x) for x in os.environ.get("BENCH_THREADS", f"{os.cpu_count() or 1}").split(",") if x.strip()]
PROFILE_ARGS = ["--ctx", "128,512", "--batch", "1,4", "--decode-ctx", "128", "--decode-tokens", "16",
                "--repeats", str(REPEATS), "--warmup", "3"]
SWEEP_DEPTHS = os.environ.get("BENCH_SWEEP_DEPTHS", "6,8,12,16,24,32,48")
SWEEP_ARGS = ["profile", "--sweep", "depth-width", "--params", "135M", "--base", "sample:smollm2-135m", "--target", "torch",
              "--depths", SWEEP_DEPTHS, "--ctx", "32", "--batch", "1,16", "--decode-tokens", "8",
              "--repeats", os.environ.get("BENCH_SWEEP_REPEATS", "5"), "--warmup", "2"]
TARGETS = {  # target: (model ref, what it runs)
    "torch": ("sample:smollm2-135m", "fp32 HF folder"),
    "onnxruntime": (str(OUT / "onnx"), "fp32 ONNX with KV cache (`slmctl export --format onnx`)"),
    "llamacpp": ("sample:smollm2-135m-gguf", "the sample's Q4_1 GGUF"),
}


def run(args: list[str], what: str, threads: int | None = None) -> tuple[dict | None, dict]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    if threads:
        env["SLMCTL_THREADS"] = str(threads)
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    r = subprocess.run(SLMCTL + args, capture_output=True, text=True, env=env, cwd=ROOT)
    info = {"wall_s": time.perf_counter() - t, "load_before": load0, "load_after": os.getloadavg()[0],
            "command": portable((f"SLMCTL_THREADS={threads} " if threads else "") + "slmctl " + " ".join(args)),
            "threads": threads}
    print(f"{what}: exit {r.returncode} in {info['wall_s']:.0f} s (load {load0:.1f} -> {info['load_after']:.1f})",
          file=sys.stderr, flush=True)
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
        return None, info
    return json.loads(r.stdout), info


def save(name: str, rep: dict | None, info: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({"report": rep, "run": info, "run_id": run_id()}, indent=2,
                                                 default=str) + "\n")


def load(name: str) -> tuple[dict | None, dict | None]:
    p = OUT / f"{name}.json"
    if not p.is_file():
        return None, None
    doc = json.loads(p.read_text())
    if doc.get("run_id") != run_id():  # a stage of another run (older code): not mixed into this one
        return None, None
    return doc["report"], doc["run"]


def prepare() -> int:
    onnx = OUT / "onnx"
    if onnx.is_dir() and any(onnx.glob("*.onnx")) and load("onnx-export")[1]:  # exported by this run
        print(f"reusing {onnx}", file=sys.stderr)
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    rep, info = run(["export", "sample:smollm2-135m", "--format", "onnx", "-o", str(onnx), "--json", "--force"],
                    "onnx export")
    save("onnx-export", rep, info)
    return 0 if rep is not None else 1


def targets() -> int:
    bad = 0
    for th in THREADS:
        for tgt, (ref, _) in TARGETS.items():
            rep, info = run(["profile", ref, "--target", tgt, *PROFILE_ARGS, "--json"], f"profile {tgt} x{th}", th)
            save(f"{tgt}-t{th}", rep, info)
            bad += rep is None
    return 1 if bad else 0


SWEEP_THREADS = [int(x) for x in os.environ.get("BENCH_SWEEP_THREADS", f"{os.cpu_count() or 1},1").split(",")
                 if x.strip()]


def _plot(th: int) -> Path:
    return PLOT if th == SWEEP_THREADS[0] else PLOT.with_name(f"{PLOT.stem}-t{th}{PLOT.suffix}")


def sweep() -> int:
    bad = 0
    for th in SWEEP_THREADS:
        rep, info = run([*SWEEP_ARGS, "--plot", str(_plot(th)), "--force", "--json"], f"depth-width sweep x{th}", th)
        save(f"sweep-t{th}", rep, info)
        bad += rep is None
    return 1 if bad else 0


# ------------------------------------------------------------------ the fragment
def _f(v, nd=1):
    return "-" if v is None else f"{v:,.{nd}f}"


def _lat(r: dict | None) -> str:
    if r is None:
        return "-"
    return f"{_f(r['p50_ms'])} / {_f(r['p95_ms'])} ({r['p95_over_p50']:.2f})"


def _targets_table(th: int, lines: list[str]) -> None:
    reps = {t: load(f"{t}-t{th}") for t in TARGETS}
    have = {t: v for t, v in reps.items() if v[0] is not None}
    if not have:
        return
    lines.append(f"### {th} thread{'s' if th > 1 else ''} (SLMCTL_THREADS={th})\n")
    cols = list(have)
    rows = [("runs", [TARGETS[t][1] for t in cols])]
    rows.append(("weights read per token", [f"{have[t][0]['weight_bytes'] / 2**20:,.0f} MiB" for t in cols]))
    first = have[cols[0]][0]["settings"]
    for c in first["ctx"]:
        rows.append((f"prefill (TTFT) ctx {c}, ms", [_lat(next((r for r in have[t][0]["prefill"] if r["ctx"] == c), None))
                                                     for t in cols]))
    for b in first["batch"]:
        def dec(t, b=b):
            return next((r for r in have[t][0]["decode"] if r["batch"] == b), None)
        rows.append((f"decode batch {b}, ms/step", [_lat(dec(t)) if dec(t) else "skipped (batch 1 only)" for t in cols]))
        rows.append((f"decode batch {b}, tokens/s", [_f(dec(t)["tokens_per_s"]) if dec(t) else "-" for t in cols]))
    rows.append(("memory bandwidth (copy, all cores)", [f"{have[t][0]['bandwidth']['gb_per_s']:.1f} GB/s"
                                                        if have[t][0].get("bandwidth") else "-" for t in cols]))
    rows.append(("decode efficiency, batch 1", [
        (f"**{100 * e['fraction']:.1f}%** ({e['achieved_gb_per_s']:.2f} GB/s; roofline "
         f"{e['roofline_tokens_per_s']:,.0f} tok/s)" if (e := have[t][0].get("efficiency")) else "-")
        for t in cols]))
    rows.append(("peak RSS (rise over baseline)", [f"{have[t][0]['memory']['peak_rss_mb']:,.0f} MiB "
                                                   f"(+{have[t][0]['memory']['peak_over_baseline_mb']:,.0f})"
                                                   for t in cols]))
    worst = {t: max(r["p95_over_p50"] for r in have[t][0]["prefill"] + have[t][0]["decode"]) for t in cols}
    rows.append(("worst p95/p50", [f"{worst[t]:.2f}" for t in cols]))
    rows.append(("load average (1 min) before -> after", [f"{have[t][1]['load_before']:.1f} -> "
                                                          f"{have[t][1]['load_after']:.1f}" for t in cols]))
    lines.append("| | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for name, vals in rows:
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    w = max(worst.values())
    lines.append("")
    lines.append(f"p95/p50 <= 1.5 at {first['repeats']} repetitions: worst figure over the three targets {w:.2f}, "
                 + ("**met**." if w <= 1.5 else "**missed** (" + ", ".join(f"{t} {v:.2f}" for t, v in worst.items()
                                                                       if v > 1.5) + ")."))
    missing = [t for t in TARGETS if t not in have]
    if missing:
        lines.append(f"Not measured at {th} thread(s): {', '.join(missing)}.")
    lines.append("")
    for t in cols:
        lines.append(f"    {have[t][1]['command']}")
    lines.append("")


def _sweep_section(th: int, lines: list[str]) -> None:
    rep, info = load(f"sweep-t{th}")
    if rep is not None:
        from slmctl.profiling.report import render_sweep

        s = rep["settings"]
        lines.append(f"### Depth-width sweep at the sample's budget ({rep['params_target']:,} parameters), "
                     f"{th} thread{'s' if th > 1 else ''}\n")
        lines.append(f"Random-weight Llama shapes of equal parameter count (+-{rep['tolerance_pct']}%) built from the "
                     f"sample's config, on torch ({rep['device']}); decode after a {s['ctx']}-token prompt, "
                     f"{s['decode_tokens']} steps per run, {s['repeats']} repeats after {s['warmup']} warm-ups, "
                     f"batch {', '.join(map(str, s['batch']))}; load average {info['load_before']:.1f} -> "
                     f"{info['load_after']:.1f}.\n")
        lines.append("```")
        lines.append(render_sweep(rep))
        lines.append("```\n")
        worst = {b: max(c["decode"][b]["p95_over_p50"] for c in rep["configs"] if b in c["decode"])
                 for b in map(str, s["batch"])}
        lines.append("Worst decode p95/p50 over the shapes: " + ", ".join(f"batch {b} {v:.2f}" for b, v in worst.items())
                     + ".\n")
        lines.append(f"![latency against depth at the sample's budget]({_plot(th).name})\n")
        e, el = rep.get("effect"), rep.get("effect_large_batch")
        if e:
            lines.append(f"**The Nemotron-Flash effect on this CPU:** "
                         + ("shown" if e["shows_effect"] else "not shown")
                         + f" at batch 1: the deepest shape is {e['deepest_over_shallowest']:.2f}x the shallowest's "
                           f"decode latency, Spearman rho(depth, latency) = {e['spearman_rho']:.2f}."
                         + (f" At batch {el['batch']}: {el['deepest_over_shallowest']:.2f}x, rho "
                            f"{el['spearman_rho']:.2f}." if el else "") + "\n")
        lines.append(f"    {info['command']}\n")


def render() -> int:
    lines = ["## profile: the sample on three targets, and a depth-width sweep\n"]
    any_rep = next((load(f"{t}-t{th}")[0] for th in THREADS for t in TARGETS if load(f"{t}-t{th}")[0]), None)
    if any_rep:
        m, s = any_rep["machine"], any_rep["settings"]
        lines.append(
            f"`slmctl profile` on SmolLM2-135M-Instruct, one process per target, one after another under the heavy-job "
            f"lock ({m.get('cpu', '?')}, {m.get('cpus')} cores). Prefill (= TTFT) at ctx "
            f"{', '.join(map(str, s['ctx']))} (batch 1); decode: {s['decode_tokens']} steps after a "
            f"{s['decode_ctx']}-token prompt per timed run, at batch {', '.join(map(str, s['batch']))}; each cell is "
            f"p50 / p95 (p95/p50) over {s['repeats']} timed runs after {s['warmup']} warm-ups. Decode efficiency = "
            "weight bytes read per token x batch-1 tokens/s / the streaming-copy bandwidth measured in the same "
            "process with all cores. The lock keeps other heavy jobs off, but not the other sessions' editors and "
            "niced unit tests, so the load average column says how quiet it was.\n")
        for th in THREADS:
            _targets_table(th, lines)
        lines.append("The ONNX model is `slmctl export sample:smollm2-135m --format onnx` (the `prepare` stage; reused "
                     "when present). llama.cpp runs without its extra weight buffers (AMX): this build's AMX matmul "
                     "segfaults on this CPU (ggml-org/llama.cpp#20824), so the target turns them off when the build "
                     "reports AMX_INT8 (`SLMCTL_LLAMACPP_AMX=1` keeps them). "
                     "llama-cpp-python's high-level API decodes one sequence, hence batch 1 only.\n")
        lines.append("Produced by `flock /tmp/slmctl-heavy.lock .venv/bin/python bench/bench_profile.py prepare targets` "
                     "and `... bench_profile.py sweep render` (two locked runs).\n")

    for th in SWEEP_THREADS:
        _sweep_section(th, lines)
    stages = {p.stem: load(p.stem) for p in sorted(OUT.glob("*.json"))}
    write_results("profile", {"repeats": REPEATS, "threads": THREADS, "sweep_threads": SWEEP_THREADS,
                              "stages": {k: {"report": r, "run": i} for k, (r, i) in stages.items() if i}},
                  "\n".join(lines))
    print("\n".join(lines))
    return 0


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    stages = argv or ["prepare", "targets", "sweep", "render"]
    fns = {"prepare": prepare, "targets": targets, "sweep": sweep, "render": render}
    unknown = [s for s in stages if s not in fns]
    if unknown:
        print(f"unknown stage(s) {unknown}; valid: {', '.join(fns)}", file=sys.stderr)
        return 2
    rc = 0
    for s in stages:
        rc = fns[s]() or rc
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
