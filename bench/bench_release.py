"""The release example end to end (examples/release/Makefile, its default settings, `make -j2`): every artifact's
quality against the original from its own eval report, and the issue-20 target that the ONNX int4 row stays
within 1.2x of the GGUF Q4_K_M row (perplexity rise over the original).

The build goes to a temporary folder (BENCH_RELEASE_BUILD to keep it); the Makefile's own knobs pass through
from the environment (e.g. BENCH_RELEASE_ARGS="DISTILL_STEPS=10"). Writes bench/results/release.{json,md}.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

from timing import measure, write_results  # noqa: E402  (bench/ is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "release"
ARGS = shlex.split(os.environ.get("BENCH_RELEASE_ARGS", ""))
JOBS = os.environ.get("BENCH_RELEASE_JOBS", "2")
ROWS = (("base", "original (HF fp32)"), ("distilled", "pruned + distilled (HF fp32)"),
        ("gguf", "GGUF Q4_K_M"), ("onnx", "ONNX int4"))


def size(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main() -> int:
    build = Path(os.environ.get("BENCH_RELEASE_BUILD") or tempfile.mkdtemp(prefix="bench-release-"))
    py = sys.executable
    make = ["make", "-C", str(EXAMPLE), f"BUILD={build}", f"SLMCTL={py} -m slmctl", f"PYTHON={py}", *ARGS]
    m = measure([*make, f"-j{JOBS}"], cwd=ROOT)
    if m["rc"]:
        print(m["stderr"][-4000:], file=sys.stderr)
        raise SystemExit(f"the release example failed ({m['rc']})")
    again = measure([*make, "-q"], cwd=ROOT)  # a second make must find nothing to do
    paths = {"base": build / "base", "distilled": build / "distilled", "gguf": build / "model-Q4_K_M.gguf",
             "onnx": build / "onnx-int4"}
    rows = []
    for key, label in ROWS:
        ev = json.loads((build / f"eval-{key}.json").read_text())
        d = ev["domains"][0] if "domains" in ev else ev
        rise = d["ppl"] / d["reference_ppl"] - 1
        rows.append({"artifact": key, "label": label, "bytes": size(paths[key]), "ppl": d["ppl"],
                     "reference_ppl": d["reference_ppl"], "rise_pct": 100 * rise, "kld": d["kld"]["mean"],
                     "top1": d["top1_agreement_pct"]})
    by = {r["artifact"]: r for r in rows}
    target = by["onnx"]["rise_pct"] / by["gguf"]["rise_pct"] if by["gguf"]["rise_pct"] > 0 else None
    kl_ratio = by["onnx"]["kld"] / by["gguf"]["kld"] if by["gguf"]["kld"] > 0 else None
    settings = " ".join(ARGS) or "the Makefile's defaults"
    lines = ["## release: the release example end to end", "",
             f"`make -C examples/release -j{JOBS}` ({settings}) in a fresh build folder: import, depth prune, distill, "
             "GGUF Q4_K_M (slmctl's GPTQ on the grids) and calibrated ONNX int4, each evaluated against the original "
             "on the held-out text (`examples/release/data/eval.txt`) by its own eval report (the figures the model "
             f"card carries). Wall time of the whole graph: {m['wall_s'] / 60:.1f} min; a second `make -q` "
             + ("found nothing to do." if again["rc"] == 0 else f"wanted to rebuild (exit {again['rc']})."), "",
             "| artifact | size MB | perplexity | vs original | KL mean | top-1 % |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['bytes'] / 1e6:.1f} | {r['ppl']:.3f} | {r['rise_pct']:+.2f}% | "
                     f"{r['kld']:.4f} | {r['top1']:.2f} |")
    lines += ["", "Target (issue 20): the ONNX int4 row's perplexity rise over the original within 1.2x of the GGUF "
              "row's.", f"- ONNX int4 vs GGUF Q4_K_M: rise {by['onnx']['rise_pct']:+.2f}% vs {by['gguf']['rise_pct']:+.2f}%"
              + (f" = {target:.2f}x: {'met' if target <= 1.2 else 'MISSED'}" if target is not None else "")
              + (f"; KL {kl_ratio:.2f}x" if kl_ratio is not None else ""),
              "", f"1-minute load average before/after: {m['load_before'][0]:.2f}/{m['load_after'][0]:.2f} (2 cores). "
              "Command: `python bench/bench_release.py`."]
    md = "\n".join(lines)
    write_results("release", {"rows": rows, "wall_s": m["wall_s"], "jobs": JOBS, "args": ARGS,
                              "noop_rc": again["rc"], "onnx_over_gguf_rise": target, "onnx_over_gguf_kl": kl_ratio},
                  md, packages=("llama-cpp-python", "onnxruntime", "torch"))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
