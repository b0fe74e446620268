"""Every speed or memory ratio quoted in the docs, README or CHANGELOG comes from the committed bench results.

A ratio is written ``0.45x`` (or ``x1.55``); it counts as measured when the same figure appears in a
fragment under bench/results/ (what `make bench` wrote), so a hand-copied or stale ratio fails here.
docs/benchmarks.md is itself rendered from those fragments and is not checked against them.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RATIO = re.compile(r"(?<![\w.])(\d+\.\d+)x(?!\w)|(?<![\w.])x(\d+\.\d+)(?![\d.])")


def quoted() -> list[tuple[str, int, str]]:
    files = [p for p in sorted((ROOT / "docs").glob("*.md")) if p.name != "benchmarks.md"]
    files += [ROOT / "README.md", ROOT / "CHANGELOG.md"]
    out = []
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if "`" in line and re.search(r"`[^`]*\d+\.\d+ ?x[^`]*`", line):
                line = re.sub(r"`[^`]*`", "", line)  # commands and code, not claims
            for m in RATIO.finditer(line):
                out.append((f"{f.relative_to(ROOT)}:{n}", m.start(), m.group(1) or m.group(2)))
    return out


def measured() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "bench" / "results").glob("*")) if p.is_file())


def test_every_quoted_ratio_is_in_the_bench_results():
    results = measured()
    missing = [f"{where}: {fig}x" for where, _, fig in quoted() if not re.search(rf"(?<![\d.]){re.escape(fig)}", results)]
    assert not missing, "ratios quoted without a bench result behind them:\n" + "\n".join(missing)


def test_no_path_of_this_machine_in_committed_text():
    """Commands in docs and results use relative paths or variables: a folder of the machine that ran them
    (the project folder, the home folder, the temporary folder) means nobody else can rerun them."""
    import os
    import tempfile

    needles = {str(ROOT) + "/", str(Path.home()) + "/", tempfile.gettempdir() + "/", "/work/"}
    needles.discard("/")
    allowed = ("/tmp/slmctl-heavy.lock",)  # the shared lock the bench scripts take, a fixed name by design
    files = [*sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "bench" / "results").glob("*")),
             ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "Makefile", *sorted((ROOT / "examples").rglob("*"))]
    hits = []
    for f in files:
        if not f.is_file() or f.suffix in (".png", ".gguf", ".onnx", ".safetensors"):
            continue
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            for a in allowed:
                line = line.replace(a, "")
            if any(x in line for x in needles):
                hits.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
    assert not hits, "machine paths in committed text:\n" + "\n".join(hits)
    assert os.sep == "/"
