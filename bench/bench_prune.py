"""slmctl prune on the sample: 50% unstructured (magnitude, Wanda, SparseGPT), 2:4, depth (Block
Influence vs dropping the last layers) and width (heads + MLP), side by side with llm-compressor's
WandaPruningModifier and SparseGPTModifier when its environment exists
(/work/peers/llmcompressor/bin/python, or $BENCH_LLMCOMPRESSOR_PYTHON), on the same calibration
windows (slmctl draws them; the peer gets the token ids) and the same held-out evaluation windows.

Writes bench/results/prune.md. Settings via environment: BENCH_P_SAMPLES (32), BENCH_P_SEQLEN (256),
BENCH_P_WINDOWS (8), BENCH_P_CTX (256), BENCH_P_RUNS (comma list of the run names below).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import timed  # noqa: E402  (bench/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = os.environ.get("BENCH_P_SAMPLES", "32")
SEQLEN = os.environ.get("BENCH_P_SEQLEN", "256")
WINDOWS = os.environ.get("BENCH_P_WINDOWS", "8")
CTX = os.environ.get("BENCH_P_CTX", "256")
MODEL = "sample:smollm2-135m"
PEER = Path(os.environ.get("BENCH_LLMCOMPRESSOR_PYTHON", "/work/peers/llmcompressor/bin/python"))
SLMCTL = [sys.executable, "-m", "slmctl"]

RUNS = {  # name -> prune arguments
    "magnitude-50": ["--method", "magnitude", "--sparsity", "0.5"],
    "wanda-50": ["--method", "wanda", "--sparsity", "0.5"],
    "sparsegpt-50": ["--method", "sparsegpt", "--sparsity", "0.5"],
    "wanda-2:4": ["--method", "wanda", "--pattern", "2:4"],
    "sparsegpt-2:4": ["--method", "sparsegpt", "--pattern", "2:4"],
    "depth-bi-25%": ["--method", "depth", "--ratio", "0.25", "--depth-metric", "bi"],
    "depth-angular-25%": ["--method", "depth", "--ratio", "0.25", "--depth-metric", "angular"],
    "depth-last-25%": ["--method", "depth", "--ratio", "0.25", "--depth-metric", "last"],
    "width-25%": ["--method", "width", "--heads-ratio", "0.25", "--mlp-ratio", "0.25"],
}
SELECTED = os.environ.get("BENCH_P_RUNS", ",".join(RUNS)).split(",")

PEER_SCRIPT = r'''
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from llmcompressor.modifiers.obcq import SparseGPTModifier
from llmcompressor.modifiers.pruning import WandaPruningModifier
from datasets import Dataset
src, out, ids_file, which, mask = sys.argv[1:6]
ids = json.load(open(ids_file))
ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]})
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(src)
cls = WandaPruningModifier if which == "wanda" else SparseGPTModifier
recipe = cls(sparsity=0.5, mask_structure=mask, targets=["Linear"], ignore=["re:.*lm_head"])
oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=len(ids[0]), num_calibration_samples=len(ids))
model.save_pretrained(out, save_compressed=False)
tok.save_pretrained(out)
'''


def evaluate(path: str, reference: str) -> dict:
    r = subprocess.run([*SLMCTL, "eval", path, "--reference", reference, "--ctx", CTX, "--windows", WINDOWS, "--json"],
                       capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"eval of {path} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-prune-"))
    rows: list = []
    dense = None
    for name in SELECTED:
        if rows:
            write(rows, [], dense, partial=True)
        out = tmp / name.replace(":", "-").replace("%", "")
        r, wall, rss = timed([*SLMCTL, "prune", MODEL, "-o", str(out), *RUNS[name], "--samples", SAMPLES,
                              "--seqlen", SEQLEN, "--eval-ctx", CTX, "--eval-windows", WINDOWS, "--json", "-q"], cwd=ROOT)
        if r.returncode:
            print(f"{name}: failed\n{r.stderr[-3000:]}", file=sys.stderr)
            rows.append((f"slmctl {name}", None, None, None, wall, rss, "failed"))
            continue
        rep = json.loads(r.stdout)
        q = rep["quality"]
        dense = dense or q["ppl_before"]
        rows.append((f"slmctl {name}", q["ppl_after"], q["kld_mean"], rep["parameters_after"], wall, rss,
                     f"{rep.get('sparsity', 0):.1%} sparse" if "sparsity" in rep else
                     f"{rep['parameters_after'] / rep['parameters_before']:.1%} of the parameters"))
        print(f"{name}: ppl {q['ppl_after']:.3f} in {wall:.0f} s", file=sys.stderr)
    peer_rows = []
    if PEER.is_file():
        from slmctl.api import load_artifact
        from slmctl.eval.backends import load_tokenizer
        from slmctl.pipelines.prune import calibration_ids

        art, src = load_artifact(MODEL)
        ids = calibration_ids(load_tokenizer(art), data="sample:shakespeare", field="text", samples=int(SAMPLES),
                              seqlen=int(SEQLEN), seed=0)
        (tmp / "ids.json").write_text(json.dumps(ids.tolist()))
        (tmp / "peer.py").write_text(PEER_SCRIPT)
        for which, mask in (("wanda", "0:0"), ("sparsegpt", "0:0"), ("wanda", "2:4"), ("sparsegpt", "2:4")):
            label = f"{which}-{'50' if mask == '0:0' else '2:4'}"
            out = tmp / f"peer-{label.replace(':', '-')}"
            r, wall, rss = timed([str(PEER), str(tmp / "peer.py"), str(src), str(out), str(tmp / "ids.json"), which, mask], cwd=ROOT)
            if r.returncode:
                print(f"llm-compressor {label}: failed\n{r.stderr[-3000:]}", file=sys.stderr)
                peer_rows.append((f"llm-compressor {label}", None, None, None, wall, rss, "failed"))
                continue
            e = evaluate(str(out), str(src))
            peer_rows.append((f"llm-compressor {label}", e["ppl"], e["kld"]["mean"], None, wall, rss, ""))
    write(rows, peer_rows, dense)
    return 0 if all(r[1] is not None for r in rows + peer_rows) else 1


def write(rows: list, peer_rows: list, dense: float | None, partial: bool = False) -> None:
    lines = ["## prune (SmolLM2-135M-Instruct, fp32)\n",
             f"Calibration: {SAMPLES} windows x {SEQLEN} tokens of the sample's calibration region (seed 0); "
             f"perplexity and KL against the dense model on {WINDOWS} x {CTX} tokens of the held-out evaluation "
             f"region. Dense perplexity: {dense:.3f}.\n" if dense else "",
             "| run | ppl | KL mean | parameters | wall s | peak RSS MiB | note |",
             "|---|---|---|---|---|---|---|"]
    for row in rows + peer_rows:
        n, ppl, kl, params, wall, rss, note = row
        lines.append(f"| {n} | {'' if ppl is None else f'{ppl:.3f}'} | {'' if kl is None else f'{kl:.4f}'} | "
                     f"{'' if params is None else f'{params:,}'} | {wall:.0f} | {rss:.0f} | {note} |")
    if peer_rows:
        by = {r[0]: r for r in rows + peer_rows}
        lines.append("\nslmctl / llm-compressor:\n")
        for label in ("wanda-50", "sparsegpt-50", "wanda-2:4", "sparsegpt-2:4"):
            a, b = by.get(f"slmctl {label}"), by.get(f"llm-compressor {label}")
            if a and b and a[1] and b[1]:
                lines.append(f"- {label}: perplexity ratio {a[1] / b[1]:.4f}, time ratio {a[4] / b[4]:.2f}")
    else:
        lines.append(f"\nllm-compressor was not run ({PEER} does not exist): install it in its own environment "
                     "(it pins transformers <= 5.17) to add the side-by-side rows.")
    if partial:
        lines.append("\n(partial: the run was still going when this was written)")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "prune.md").write_text("\n".join(lines) + "\n")
    if not partial:
        print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
