"""One Markdown table (stdout) from the release's model card, BUILD/README.md, written by `slmctl card`.

The card's tables were generated from the eval and profile reports and checked against them
(`slmctl card --check`), so the summary shows exactly the figures the published card shows.
"""

from __future__ import annotations

import sys
from pathlib import Path

from slmctl.pipelines.card import parse_tables

LABELS = {"base": "original (HF fp32)", "distilled": "pruned + distilled (HF fp32)",
          "model-Q4_K_M.gguf": "GGUF Q4_K_M", "onnx-int4": "ONNX int4"}


def size(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main(build: str) -> None:
    b = Path(build)
    t = parse_tables((b / "README.md").read_text(encoding="utf-8"))
    sizes = {r[0]: int(r[5].replace(",", "")) for r in t.get("artifacts", [])}
    tps = {r[0]: r[6] for r in t.get("decode", []) if r[3] == "1"}
    print("| artifact | size (MB) | perplexity | vs original | KL mean | top-1 agreement | decode tok/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for q in t.get("quality", []):
        model = q[0]
        mb = (sizes[model] if model in sizes else size(b / model)) / 1e6  # the base is not a release artifact
        print(f"| {LABELS.get(model, model)} | {mb:.1f} | {q[5]} | {q[8]} | {q[9]} | {q[11]} | {tps.get(model, '-')} |")


if __name__ == "__main__":
    main(sys.argv[1])
