"""ONNX export and onnxruntime speed on the SmolLM2-135M sample, side by side in one run.

Rows: PyTorch (transformers, fp32, its own KV cache); slmctl's ONNX export (fp32) on onnxruntime;
the same quantised by onnxruntime to dynamic int8 and to 4-bit MatMulNBits. Figures: decode tokens/s
(greedy, batch 1, KV cache carried present -> past), 1x512 prefill latency, export/quantise time and
peak RSS of the slmctl process. optimum-cli's export would be a row here too; it needs its own
environment (transformers 4.57, torch 2.13) and is listed as not measured when /work/peers/optimum is absent.

Writes bench/results/onnx.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = os.environ.get("BENCH_ONNX_MODEL", "sample:smollm2-135m")
PREFILL = int(os.environ.get("BENCH_ONNX_PREFILL", "512"))
DECODE = int(os.environ.get("BENCH_ONNX_DECODE", "64"))
REPEATS = int(os.environ.get("BENCH_ONNX_REPEATS", "3"))
SLMCTL = [sys.executable, "-m", "slmctl"]


def timed_run(cmd: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS MiB of the child, stdout)."""
    t = time.perf_counter()
    code = (
        "import resource,subprocess,sys,json;"
        "r=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
        "sys.stderr.write(r.stderr);"
        "print(json.dumps({'rc':r.returncode,'out':r.stdout,"
        "'rss':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
    )
    r = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, cwd=ROOT)
    dt = time.perf_counter() - t
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    if doc["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return dt, doc["rss"] / 1024.0, doc["out"].strip()


def prompt_ids(folder: Path, n: int) -> list[int]:
    from transformers import AutoTokenizer

    from slmctl.calib import load_text

    tok = AutoTokenizer.from_pretrained(str(folder))
    return tok(load_text("sample:shakespeare", purpose="eval")[: n * 8], add_special_tokens=False)["input_ids"][:n]


def bench_ort(model_file: Path, ids: list[int]) -> dict:
    from slmctl.eval.backend_onnx import OrtCausalLM

    lm = OrtCausalLM(model_file)
    x = np.asarray([ids])
    lm.run(x[:, :16])  # warm-up
    pre = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        logits, past = lm.run(x)
        pre.append(time.perf_counter() - t)
    tok = int(logits[0, -1].argmax())
    t = time.perf_counter()
    for _ in range(DECODE):
        logits, past = lm.run(np.asarray([[tok]]), past)
        tok = int(logits[0, -1].argmax())
    dec = DECODE / (time.perf_counter() - t)
    return {"prefill_ms": 1000 * min(pre), "decode_tps": dec}


def bench_torch(folder: Path, ids: list[int]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.inference_mode():
        m(input_ids=x[:, :16])
        pre = []
        for _ in range(REPEATS):
            t = time.perf_counter()
            out = m(input_ids=x, use_cache=True)
            pre.append(time.perf_counter() - t)
        cache, tok = out.cache, out.logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        for _ in range(DECODE):
            out = m(input_ids=tok, cache=cache, use_cache=True)
            cache, tok = out.cache, out.logits[:, -1:].argmax(-1)
        dec = DECODE / (time.perf_counter() - t)
    return {"prefill_ms": 1000 * min(pre), "decode_tps": dec}


def main() -> int:
    from slmctl.api import load_artifact

    _, hf = load_artifact(MODEL)
    ids = prompt_ids(hf, PREFILL)
    # BENCH_ONNX_REUSE=DIR reuses DIR/fp32, DIR/int8, DIR/int4 from an earlier run (build columns then empty)
    reuse = os.environ.get("BENCH_ONNX_REUSE")
    work = Path(reuse) if reuse else Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    rows = []

    def build(sub, cmd):
        if reuse and (work / sub / "model.onnx").is_file():
            return None, None, ""
        return timed_run(cmd)

    t_exp, rss_exp, _ = build("fp32", [*SLMCTL, "export", MODEL, "--format", "onnx", "-o", str(work / "fp32"), "-q"])
    verification = json.loads((work / "fp32" / "slmctl.json").read_text())["verification"]
    t8, rss8, _ = build("int8", [*SLMCTL, "quantize", str(work / "fp32"), "--type", "int8", "-o", str(work / "int8"), "-q"])
    t4, rss4, _ = build("int4", [*SLMCTL, "quantize", str(work / "fp32"), "--type", "int4", "-o", str(work / "int4"), "-q"])
    torch_r = bench_torch(hf, ids)
    rows.append(("PyTorch fp32 (transformers)", torch_r, None, None, None))
    for name, sub, t, rss in (("slmctl ONNX fp32", "fp32", t_exp, rss_exp), ("slmctl ONNX int8 (dynamic)", "int8", t8, rss8),
                              ("slmctl ONNX int4 (MatMulNBits, RTN)", "int4", t4, rss4)):
        r = bench_ort(work / sub / "model.onnx", ids)
        size = sum(f.stat().st_size for f in (work / sub).glob("model.onnx*")) / 2**20
        rows.append((name, r, t, rss, size))
    peer = Path("/work/peers/optimum/bin/optimum-cli")
    fp32 = rows[1][1]
    lines = ["## ONNX export (onnxruntime, CPU)\n",
             f"Model `{MODEL}`; prefill of 1x{PREFILL} tokens (best of {REPEATS}), greedy decode of {DECODE} tokens "
             "with the KV cache carried present -> past, batch 1, all in one run "
             f"(`python bench/bench_onnx.py`). Export verification: max abs logit diff "
             f"{verification['max_abs_diff_prompt']:.2g} (prompt), {verification['max_abs_diff_decode']:.2g} "
             f"(8 decode steps), greedy {verification['greedy_tokens']} tokens "
             f"{'identical' if verification['greedy_identical'] else 'DIFFERENT'}.\n",
             "| runtime | decode tok/s | prefill 1x512 ms | decode vs ONNX fp32 | build time s | build peak RSS MiB | size MiB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r, t, rss, size in rows:
        lines.append(f"| {name} | {r['decode_tps']:.1f} | {r['prefill_ms']:.0f} | {r['decode_tps'] / fp32['decode_tps']:.2f} | "
                     f"{'' if t is None else f'{t:.1f}'} | {'' if rss is None else f'{rss:.0f}'} | "
                     f"{'' if size is None else f'{size:.1f}'} |")
    if reuse:
        secs = json.loads((work / "fp32" / "slmctl.json").read_text()).get("export_seconds")
        lines.append(f"\nBuilds reused from {work} (BENCH_ONNX_REUSE); that export took {secs} s wall."
                     " Load average during the run: " + " ".join(f"{x:.1f}" for x in os.getloadavg()) + ".")
    if not peer.exists():
        lines.append("| optimum-cli export (transformers 4.57) | not measured | | | | | |")
        lines.append("\noptimum-cli was not installed in its own environment (/work/peers/optimum) for this run.")
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "onnx.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
