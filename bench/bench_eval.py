"""Eval throughput of each backend on the sample, on the same token windows.

Writes bench/results/eval.md. Artifacts: the HF fp32 folder (PyTorch), the shipped Q4_1 GGUF
(llama.cpp), and the f16 GGUF / ONNX exports when those exporters are available.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import write_results  # noqa: E402  (bench/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
WINDOWS = int(os.environ.get("BENCH_EVAL_WINDOWS", "8"))


def slm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmctl", *args], capture_output=True, text=True)


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    rows = [("HF fp32", "sample:smollm2-135m"), ("GGUF Q4_1 (shipped)", "sample:smollm2-135m-gguf")]
    for fmt, extra, label in (("gguf", ["--outtype", "f16"], "GGUF f16 (slmctl export)"),
                              ("onnx", [], "ONNX fp32 (slmctl export)")):
        out = tmp / f"m.{fmt}" if fmt == "gguf" else tmp / "onnx"
        r = slm("export", "sample:smollm2-135m", "--format", fmt, *extra, "-o", str(out))
        if r.returncode == 0:
            rows.append((label, str(out)))
        else:
            print(f"skip {label}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}",
                  file=sys.stderr)
    results = []
    for label, ref in rows:
        r = slm("eval", ref, "--windows", str(WINDOWS), "--ctx", "512", "--json")
        if r.returncode != 0:
            print(f"eval failed for {label}: {r.stderr}", file=sys.stderr)
            continue
        rep = json.loads(r.stdout)
        results.append((label, rep))
        print(f"{label}: ppl {rep['ppl']:.4f}, {rep['tokens_per_s']:.1f} tok/s", file=sys.stderr)
    base = results[0][1] if results else None
    lines = ["## eval: backend throughput and agreement", "",
             f"`slmctl eval` on the first {WINDOWS} windows of 512 tokens of the evaluation region "
             "(`sample:shakespeare`, the tragedies); throughput is model forward time only.", "",
             "| artifact | backend | perplexity | vs HF fp32 | tokens/s |", "|---|---|---:|---:|---:|"]
    for label, rep in results:
        rel = f"{(rep['ppl'] / base['ppl'] - 1) * 100:+.3f}%" if base else "-"
        lines.append(f"| {label} | {rep['backend']} | {rep['ppl']:.4f} | {rel} | {rep['tokens_per_s']:.1f} |")
    lines += ["", "Each artifact evaluated once, in its own process, one after another (no peer tool in this section)."]
    write_results("eval", {"windows": WINDOWS, "ctx": 512, "results": [{"artifact": label, **rep} for label, rep in results]},
                  "\n".join(lines), packages=("onnxruntime", "llama-cpp-python"))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
