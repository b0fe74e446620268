"""Join the release's eval and profile reports into one Markdown table (stdout)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = [("original (HF fp32)", "base", "base"), ("pruned + distilled (HF fp32)", "distilled", "distilled"),
        ("GGUF Q4_K_M + imatrix", "model-Q4_K_M.gguf", "gguf"), ("ONNX int4", "onnx-int4", "onnx")]


def size(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def decode_tps(prof: dict) -> float | None:
    """Batch-1 decode tokens/s from a `slmctl profile --json` report."""
    for key in ("decode", "results"):
        rows = prof.get(key)
        if isinstance(rows, list):
            for r in rows:
                if isinstance(r, dict) and r.get("batch", 1) == 1 and r.get("tokens_per_s"):
                    return float(r["tokens_per_s"])
    tps = prof.get("decode_tokens_per_s")
    return float(tps) if tps else None


def main(build: str) -> None:
    b = Path(build)
    print("| artifact | size (MB) | perplexity | vs original | KL mean | top-1 agreement | decode tok/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, path, tag in ROWS:
        ev = json.loads((b / f"eval-{tag}.json").read_text())
        prof = json.loads((b / f"profile-{tag}.json").read_text())
        tps = decode_tps(prof)
        print(f"| {label} | {size(b / path) / 1e6:.1f} | {ev['ppl']:.3f} | {ev['ppl_increase_pct']:+.2f}% | "
              f"{ev['kld']['mean']:.4f} | {ev['top1_agreement_pct']:.2f}% | {tps:.1f} |" if tps else
              f"| {label} | {size(b / path) / 1e6:.1f} | {ev['ppl']:.3f} | {ev['ppl_increase_pct']:+.2f}% | "
              f"{ev['kld']['mean']:.4f} | {ev['top1_agreement_pct']:.2f}% | - |")


if __name__ == "__main__":
    main(sys.argv[1])
