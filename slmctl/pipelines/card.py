"""card(): a Hugging Face model card (README.md) for release artifacts, and check_card() to keep it true.

Every number in the card comes from a file it was given (``slmctl eval --json``, ``slmctl profile --json``)
or from the artifact itself (sizes, sha256, parameter counts, the provenance chain in slmctl.json, the
safetensors header or the GGUF metadata). The tables are generated from those files, so ``check_card``
regenerates them from the files as they are now and compares them cell by cell with the card's: a changed
file, a re-run eval or a hand-edited number is a mismatch (exit 3).

The YAML front matter follows the Hub's model card metadata (huggingface_hub's ``ModelCardData``):
https://huggingface.co/docs/hub/model-cards#model-card-metadata
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import provenance
from ..errors import InputError, UsageError
from ..io.modelfile import modelfile_path
from ..recipe import CardRecipe
from . import lineage

Log = Callable[[str], None]
MARK = "slmctl-card"
# the Hub knows four relations; pruning and distillation both make new weights from the base (the Hub's
# "finetune" bucket, which it also infers by default), so they map there and keep a tag of their own
RELATION_ORDER = ("merge", "adapter", "finetune", "quantized")
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet")
SECTIONS = {"artifacts": "Artifacts", "files": "Files", "quality": "Quality", "prefill": "Latency: prefill",
            "decode": "Latency: decode", "machines": "Latency: machines"}


def _nolog(msg: str) -> None:
    pass


@dataclass
class Item:
    """One release artifact: its path relative to the card, the opened artifact and its provenance."""

    ref: str
    path: Path
    rel: str
    art: Any
    prov: dict | None
    files: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------- helpers
def _rel(p: str | os.PathLike, root: Path) -> str:
    """A path relative to the card's folder when it lies inside it, else just its name (no machine paths)."""
    try:
        rp = Path(p).resolve()
        rel = os.path.relpath(rp, root.resolve())
    except (OSError, ValueError):
        return str(p)
    if rel == ".":
        return "."
    return Path(rel).as_posix() if not rel.startswith("..") else rp.name


def _ref_label(ref: Any, root: Path) -> str:
    """A reference as the card shows it: sample:/pip:/hub ids and plain words as they are; a path as its shortest
    tail that names a file beside the card (``/any/where/build/distilled`` -> ``distilled``), else its file name.
    It depends only on the card's folder, never on the working directory, so --check can run from anywhere."""
    s = str(ref)
    if re.match(r"^[a-z]+:", s) and not re.match(r"^[A-Za-z]:[\\/]", s):
        return s
    parts = Path(s).parts
    absolute = os.path.isabs(s)
    if not absolute and len(parts) < 2:
        return s
    for i in range(len(parts) - 1, 0 if absolute else -1, -1):  # shortest tail first
        tail = Path(*parts[i:])
        if (root / tail).exists():
            return tail.as_posix()
    return parts[-1]


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(head: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["l"] * len(head)
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def _split_row(line: str) -> list[str]:
    body = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", body)]


def _f(v: Any, fmt: str) -> str:
    if v is None:
        return "-"
    try:
        return format(float(v), fmt)
    except (TypeError, ValueError):
        return str(v)


def _read_json(path: Path, what: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{what} {path} is not readable JSON ({str(exc)[:120]})",
                         hint="give the file written by slmctl eval --json / slmctl profile --json") from None
    if not isinstance(doc, dict):
        raise InputError(f"{what} {path} is not a JSON object")
    return doc


def _artifact_files(path: Path) -> list[Path]:
    """The files a release publishes for an artifact: a folder's files, or a file with its sidecars."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(path).parts))
    out = [path]
    for side in (path.with_name(path.name + ".slmctl.json"), modelfile_path(path)):
        if side.is_file():
            out.append(side)
    return out


def _open_items(refs: list[str], root: Path, log: Log) -> list[Item]:
    from ..io.artifact import open_artifact
    from ..io.resolve import resolve

    if not refs:
        raise UsageError("card needs at least one ARTIFACT", hint="e.g. slmctl card build/model.gguf -o README.md")
    items = []
    for ref in refs:
        path = resolve(ref, log=log)
        art = open_artifact(path)
        items.append(Item(ref, path, _rel(path, root), art, art.provenance(), _artifact_files(path)))
    return items


# ---------------------------------------------------------------- front matter
def _quantized_step(s: dict) -> bool:
    r = s.get("recipe") or {}
    if s.get("verb") == "quantize":
        return True
    if s.get("verb") == "export":
        t = str(r.get("outtype") or "")
        return bool(t) and t not in ("f32", "f16", "bf16")
    return False


def _steps(items: list[Item]) -> list[dict]:
    return lineage.steps([it.prov for it in items])


def relation(items: list[Item], roots: list[dict]) -> str | None:
    """The Hub's base_model_relation from the provenance: merge > adapter > finetune > quantized; None for a
    plain format conversion (the Hub has no relation for that)."""
    steps = _steps(items)
    verbs = {s.get("verb") for s in steps}
    found = set()
    if "merge" in verbs or len(roots) > 1:
        found.add("merge")
    if any(it.path.is_dir() and (it.path / "adapter_config.json").is_file() for it in items):
        found.add("adapter")
    if verbs & {"distill", "prune"}:
        found.add("finetune")
    if any(_quantized_step(s) for s in steps) or any(_artifact_quantized(it) for it in items):
        found.add("quantized")
    for r in RELATION_ORDER:
        if r in found:
            return r
    return None


def _artifact_quantized(it: Item) -> bool:
    a = it.art
    if a.format == "gguf":
        return any(t.dtype not in ("F32", "F16", "BF16") for t in a.tensors.values())
    return bool((a.config or {}).get("quantization_config"))


def _datasets(steps: list[dict]) -> list[str]:
    """Hub dataset ids named as calibration or training text (files and sample: texts are not Hub datasets)."""
    out: list[str] = []

    def add(v: Any) -> None:
        if lineage.is_hub_id(v) and v not in out:
            out.append(v)

    for s in steps:
        r = s.get("recipe") or {}
        for k in ("data", "calib"):
            add(r.get(k))
        for k in ("calibration", "imatrix"):
            if isinstance(r.get(k), dict):
                add(r[k].get("data"))
        for inp in s.get("inputs", []):
            if inp.get("role") == "calibration":
                add(inp.get("ref"))
    return out


def _texts(steps: list[dict]) -> list[str]:
    """Every calibration/training text named in the chain, whatever it is (for the card's text)."""
    out: list[str] = []
    for s in steps:
        r = s.get("recipe") or {}
        vals = [r.get("data"), r.get("calib")]
        vals += [r[k].get("data") for k in ("calibration", "imatrix") if isinstance(r.get(k), dict)]
        vals += [i.get("ref") for i in s.get("inputs", []) if i.get("role") == "calibration"]
        for v in vals:
            if isinstance(v, str) and v not in out:
                out.append(v)
    return out


def _kind(items: list[Item]) -> str:
    for it in items:
        mt = it.art.model_type or ""
        if mt in ENCODER_TYPES:
            return "feature-extraction"
    return "text-generation"


def _library(items: list[Item]) -> str:
    fmts = {it.art.format for it in items}
    if fmts & {"hf", "safetensors"}:
        return "transformers"
    if "onnx" in fmts and any((it.path / "genai_config.json").is_file() for it in items if it.path.is_dir()):
        return "onnxruntime-genai"
    if "onnx" in fmts:
        return "onnx"
    return "gguf"


def front_matter(items: list[Item], root: Path, *, base: str | None, license: str | None, name: str | None,
                 log: Log) -> tuple[dict, dict]:
    """(Hub metadata, what the card says about the base) from the artifacts' provenance."""
    provs = [it.prov for it in items]
    roots = lineage.roots(provs)
    meta = lineage.bases(provs)
    bases = list(meta["hub_ids"])
    if base:
        bases = [base]
    if not bases:
        log("warning: no Hub id found for the base model; pass --base ORG/NAME to name it in the card")
    lic = license or meta.get("license")
    steps = _steps(items)
    rel = relation(items, roots) if bases else None
    tags = ["slmctl"]
    for s in steps:
        t = lineage.VERB_TAGS.get(s.get("verb"))
        if t and t not in tags:
            tags.append(t)
    for it in items:
        for t in (it.art.format if it.art.format in ("gguf", "onnx") else "safetensors", it.art.model_type):
            if t and t not in tags:
                tags.append(t)
    if any(_quantized_step(s) for s in steps) and "quantized" not in tags:
        tags.append("quantized")
    fm: dict[str, Any] = {}
    if bases:
        fm["base_model"] = bases[0] if len(bases) == 1 else bases
    if rel:
        fm["base_model_relation"] = rel
    fm["library_name"] = _library(items)
    fm["pipeline_tag"] = _kind(items)
    fm["tags"] = tags
    if lic:
        fm["license"] = lic
    ds = _datasets(steps)
    if ds:
        fm["datasets"] = ds
    if name:
        fm["model_name"] = name
    return fm, {"bases": bases, "name": meta.get("name"), "roots": roots}


def render_front_matter(fm: dict) -> str:
    """YAML front matter written through huggingface_hub's ModelCardData, so it follows the Hub's schema."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(**fm)
    return "---\n" + data.to_yaml() + "\n---\n"


# ---------------------------------------------------------------- the tables
def _params(art) -> int:
    return int(sum(t.numel for t in art.tensors.values()))


def _weights_type(art) -> str:
    from collections import Counter

    if art.format == "gguf":
        ft = art.metadata.get("general.file_type")
        try:
            from gguf import LlamaFileType

            if ft is not None:
                return LlamaFileType(int(ft)).name.removeprefix("MOSTLY_")
        except (ValueError, ImportError):
            pass
    q = (art.config or {}).get("quantization_config")
    if isinstance(q, dict):
        return str(q.get("quant_method") or q.get("format") or "quantized")
    c: Counter[str] = Counter()
    for t in art.tensors.values():
        c[str(t.dtype)] += t.numel
    return ", ".join(k for k, _ in c.most_common(2)) or "-"


def _size(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def artifact_rows(items: list[Item]) -> list[list[str]]:
    return [[it.rel, it.art.format, it.art.architecture or "-", f"{_params(it.art):,}", _weights_type(it.art),
             f"{_size(it.files):,}"] for it in items]


def file_rows(items: list[Item], root: Path) -> list[list[str]]:
    from ..io.hashing import file_sha256

    rows, seen = [], set()
    for it in items:
        for f in it.files:
            rel = _rel(f, root)
            if rel in seen:
                continue
            seen.add(rel)
            rows.append([rel, f"{f.stat().st_size:,}", file_sha256(f)])
    return rows


def _label(path: Any, root: Path) -> str:
    return _ref_label(path, root) if path else "-"


def quality_rows(evals: list[dict], root: Path) -> list[list[str]]:
    """One row per ``slmctl eval --json`` report: the text and windows it used, perplexity, KL and top-1."""
    rows = []
    for ev in evals:
        k = ev.get("kld") or {}
        rows.append([_label(ev.get("model"), root), str(ev.get("backend", "-")), _label(ev.get("data"), root),
                     f"{ev.get('windows', '-')} x {ev.get('ctx', '-')}", f"{int(ev.get('tokens', 0)):,}",
                     _f(ev.get("ppl"), ".4f"), _label(ev.get("reference"), root), _f(ev.get("reference_ppl"), ".4f"),
                     _f(ev.get("ppl_increase_pct"), "+.2f") + ("%" if "ppl_increase_pct" in ev else ""),
                     _f(k.get("mean"), ".5f"), _f(k.get("p99"), ".4f"),
                     _f(ev.get("top1_agreement_pct"), ".2f") + ("%" if "top1_agreement_pct" in ev else "")])
    return rows


QUALITY_HEAD = ["model", "backend", "text", "windows x ctx", "tokens scored", "perplexity", "reference",
                "reference perplexity", "perplexity change", "KL mean", "KL p99", "top-1 agreement"]


def _prof_label(p: dict, root: Path) -> str:
    return _label(p.get("path") or p.get("model"), root)


def prefill_rows(profiles: list[dict], root: Path) -> list[list[str]]:
    rows = []
    for p in profiles:
        for r in p.get("prefill") or []:
            rows.append([_prof_label(p, root), str(p.get("target", "-")), str(p.get("device", "-")), str(r.get("ctx")),
                         _f(r.get("p50_ms"), ".2f"), _f(r.get("p95_ms"), ".2f"), _f(r.get("tokens_per_s"), ".1f")])
    return rows


def decode_rows(profiles: list[dict], root: Path) -> list[list[str]]:
    rows = []
    for p in profiles:
        for r in p.get("decode") or []:
            rows.append([_prof_label(p, root), str(p.get("target", "-")), str(r.get("ctx")), str(r.get("batch")),
                         _f(r.get("p50_ms"), ".2f"), _f(r.get("p95_ms"), ".2f"), _f(r.get("tokens_per_s"), ".1f")])
    return rows


def machine_rows(profiles: list[dict], root: Path) -> list[list[str]]:
    rows = []
    for p in profiles:
        m = p.get("machine") or {}
        s = p.get("settings") or {}
        mem = p.get("memory") or {}
        rows.append([_prof_label(p, root), str(m.get("cpu", "-")), str(m.get("cpus", "-")),
                     str(m.get("torch_threads", "-")), _f(m.get("load_avg_1m"), ".2f"),
                     f"{s.get('repeats', '-')} after {s.get('warmup', '-')}", _f(mem.get("peak_rss_mb"), ".0f")])
    return rows


HEADS = {
    "artifacts": (["artifact", "format", "architecture", "parameters", "weights", "bytes"], "lllrlr"),
    "files": (["file", "bytes", "sha256"], "lrl"),
    "quality": (QUALITY_HEAD, "llllrrlrrrrr"),
    "prefill": (["model", "target", "device", "prompt tokens", "p50 ms", "p95 ms", "tokens/s"], "lllrrrr"),
    "decode": (["model", "target", "context", "batch", "p50 ms/token", "p95 ms/token", "tokens/s"], "llrrrrr"),
    "machines": (["model", "CPU", "cores", "torch threads", "load avg (1 min)", "timed runs", "peak RSS MiB"],
                 "llrrrlr"),
}


def tables(items: list[Item], evals: list[dict], profiles: list[dict], root: Path) -> dict[str, list[list[str]]]:
    """Every table of the card, as rows of strings: what the card shows and what --check compares."""
    return {"artifacts": artifact_rows(items), "files": file_rows(items, root),
            "quality": quality_rows(evals, root), "prefill": prefill_rows(profiles, root),
            "decode": decode_rows(profiles, root), "machines": machine_rows(profiles, root)}


def _md_table(key: str, rows: list[list[str]]) -> list[str]:
    head, align = HEADS[key]
    return _table(head, rows, list(align))


# ---------------------------------------------------------------- the card
def _recipe_text(recipe: dict | None, root: Path) -> str:
    parts = []
    for k, v in (recipe or {}).items():
        if v is None or v is False or v == {} or v == []:
            continue
        if isinstance(v, dict):
            v = ", ".join(f"{kk}={_ref_label(vv, root) if isinstance(vv, str) else json.dumps(vv)}"
                          for kk, vv in v.items() if vv is not None)
            parts.append(f"{k}: {{{v}}}")
        elif isinstance(v, str):
            parts.append(f"{k}={_ref_label(v, root)}")
        elif isinstance(v, list) and len(v) > 8:  # per-layer scores and the like: in slmctl.json, not the card
            parts.append(f"{k}=[{len(v)} values]")
        else:
            parts.append(f"{k}={json.dumps(v)}")
    return "; ".join(parts) or "-"


def steps_rows(items: list[Item], root: Path) -> list[list[str]]:
    out_of = {provenance.dumps(it.prov): it.rel for it in items if it.prov}
    rows = []
    for i, s in enumerate(_steps(items), 1):
        ins = []
        for inp in s.get("inputs", []):
            role = f"{inp['role']}: " if inp.get("role") else ""
            sha = str(inp.get("sha256") or "")[:12]
            ins.append(f"{role}{_ref_label(inp.get('ref'), root)}" + (f" (sha256 {sha}…)" if sha else ""))
        rows.append([str(i), str(s.get("verb", "?")), _recipe_text(s.get("recipe"), root), "; ".join(ins) or "-",
                     out_of.get(provenance.dumps(s), ""), str((s.get("versions") or {}).get("slmctl", "-"))])
    return rows


def _chat_note(items: list[Item]) -> bool:
    for it in items:
        folder = it.path if it.path.is_dir() else it.path.parent
        if (folder / "chat_template.jinja").is_file():
            return True
        tc = folder / "tokenizer_config.json"
        if tc.is_file() and "chat_template" in tc.read_text(encoding="utf-8", errors="replace"):
            return True
        if it.art.format == "gguf" and "tokenizer.chat_template" in it.art.metadata:
            return True
    return False


def how_to_run(items: list[Item]) -> list[str]:
    lines: list[str] = []
    for it in items:
        fmt, rel = it.art.format, it.rel
        if fmt == "gguf":
            lines += [f"### `{rel}` (llama.cpp, Ollama)", "", "```sh",
                      f'llama-cli -m {rel} -p "Once upon a time" -n 64',
                      f"llama-server -m {rel} --port 8080", "```", ""]
            mf = modelfile_path(it.path)
            if mf.is_file():
                name = re.sub(r"[^a-z0-9._-]+", "-", it.path.stem.lower())
                lines += ["Ollama, with the Modelfile beside the GGUF (chat template and stop tokens from the "
                          "tokenizer):", "", "```sh", f"ollama create {name} -f {Path(rel).with_name(mf.name).as_posix()}",
                          f"ollama run {name}", "```", ""]
        elif fmt == "onnx":
            folder = rel if it.path.is_dir() else Path(rel).parent.as_posix()
            lines += [f"### `{rel}` (onnxruntime-genai, onnxruntime)", ""]
            if it.path.is_dir() and (it.path / "genai_config.json").is_file():
                lines += ["```python", "import onnxruntime_genai as og", "",
                          f'model = og.Model("{folder}")', "tokenizer = og.Tokenizer(model)",
                          "params = og.GeneratorParams(model)", 'params.set_search_options(max_length=128)',
                          "generator = og.Generator(model, params)",
                          'generator.append_tokens(tokenizer.encode("Once upon a time"))',
                          "while not generator.is_done():", "    generator.generate_next_token()",
                          "print(tokenizer.decode(generator.get_sequence(0)))", "```", ""]
            else:
                lines += [f"`{folder}` has no genai_config.json; export it again with slmctl to run it in "
                          "onnxruntime-genai. onnxruntime runs model.onnx directly (inputs input_ids, "
                          "attention_mask, position_ids, past_key_values.N.key/value).", ""]
        elif fmt in ("hf", "safetensors"):
            folder = rel if it.path.is_dir() else Path(rel).parent.as_posix()
            lines += [f"### `{rel}` (transformers)", "", "```python",
                      "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                      f'tok = AutoTokenizer.from_pretrained("{folder}")',
                      f'model = AutoModelForCausalLM.from_pretrained("{folder}")',
                      'ids = tok("Once upon a time", return_tensors="pt")',
                      "print(tok.decode(model.generate(**ids, max_new_tokens=64, do_sample=False)[0]))", "```", ""]
    return lines


def render(items: list[Item], evals: list[dict], profiles: list[dict], root: Path, fm: dict, about: dict,
           eval_paths: list[Path], profile_paths: list[Path], *, name: str | None,
           recipe: dict[str, Any] | None = None) -> str:
    t = tables(items, evals, profiles, root)
    bases = about["bases"]
    title = name or (f"{bases[0].split('/')[-1]}, {', '.join(lineage.VERB_TAGS.get(s.get('verb'), s.get('verb')) for s in _steps(items) if s.get('verb') in lineage.VERB_TAGS) or 'converted'}"
                     if bases else "Model release")
    out = [render_front_matter(fm), f"# {title}", ""]
    desc = f"Release artifacts built with slmctl from [{bases[0]}](https://huggingface.co/{bases[0]})" if bases else \
        "Release artifacts built with slmctl"
    out += [desc + (f" (license: {fm['license']})." if fm.get("license") else "."),
            "Every figure below was read from the files listed with it; `slmctl card --check README.md "
            + " ".join(it.rel for it in items) + "` verifies them.", ""]
    out += ["## What was done", "", "Each step as its provenance records it (oldest first):", ""]
    out += _table(["#", "step", "recipe", "inputs", "output", "slmctl"], steps_rows(items, root), list("llllll"))
    texts = _texts(_steps(items))
    if texts:
        out += ["", "Calibration and training text: " + ", ".join(f"`{_ref_label(x, root)}`" for x in texts) + "."]
    out += ["", f"## {SECTIONS['artifacts']}", ""] + _md_table("artifacts", t["artifacts"])
    out += ["", f"## {SECTIONS['files']}", ""] + _md_table("files", t["files"])
    if evals:
        out += ["", f"## {SECTIONS['quality']}", "",
                "From `slmctl eval --json`: perplexity on the text's evaluation windows; KL divergence "
                "(reference || model) and top-1 agreement against the reference on the same tokens.", ""]
        out += _md_table("quality", t["quality"])
    if profiles:
        out += ["", f"## {SECTIONS['prefill']}", "", "From `slmctl profile --json` (time to first token, batch 1).",
                ""] + _md_table("prefill", t["prefill"])
        out += ["", f"## {SECTIONS['decode']}", ""] + _md_table("decode", t["decode"])
        out += ["", f"## {SECTIONS['machines']}", ""] + _md_table("machines", t["machines"])
    run = how_to_run(items)
    if run:
        out += ["", "## How to run", ""] + run
        if _chat_note(items):
            out += ["The tokenizer carries a chat template; chat front-ends apply it.", ""]
    doc = {"version": 1, "artifacts": [it.rel for it in items],
           "evals": [_rel(p, root) for p in eval_paths], "profiles": [_rel(p, root) for p in profile_paths]}
    if recipe:
        doc["recipe"] = recipe
    out += ["", f"<!-- {MARK} {json.dumps(doc, sort_keys=True)} -->", ""]
    return "\n".join(out).replace("\n\n\n", "\n\n")


# ---------------------------------------------------------------- entry points
def _load_reports(paths: list[Path], what: str, required: tuple[str, ...]) -> list[dict]:
    docs = []
    for p in paths:
        d = _read_json(Path(p), what)
        missing = [k for k in required if k not in d]
        if missing:
            raise InputError(f"{what} {p} lacks {', '.join(missing)}",
                             hint=f"give the JSON that slmctl {what.split()[0]} --json printed")
        docs.append(d)
    return docs


def card(artifacts: list[str], out: str | os.PathLike, recipe: CardRecipe | None = None, *, force: bool = False,
         log: Log = _nolog, **options: Any) -> Path:
    """Write a Hugging Face model card for ``artifacts`` at ``out`` from ``recipe`` (slmctl.recipe.CardRecipe:
    the eval and profile reports, base, license, name; keyword options build one); returns its path."""
    import dataclasses

    from ..io.atomic import atomic_path, check_output

    r = CardRecipe.build(recipe, **options)
    out = Path(out)
    check_output(out, force)
    root = out.parent
    items = _open_items(list(artifacts), root, log)
    eval_paths, prof_paths = [Path(p) for p in r.evals], [Path(p) for p in r.profiles]
    ev = _load_reports(eval_paths, "eval report", ("ppl", "model"))
    pr = _load_reports(prof_paths, "profile report", ("prefill", "decode"))
    fm, about = front_matter(items, root, base=r.base, license=r.license, name=r.name, log=log)
    kept = dataclasses.replace(r, evals=[_rel(p, root) for p in eval_paths], profiles=[_rel(p, root) for p in prof_paths])
    text = render(items, ev, pr, root, fm, about, eval_paths, prof_paths, name=r.name, recipe=kept.record())
    with atomic_path(out, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    log(f"card for {len(items)} artifact(s), {len(ev)} eval and {len(pr)} profile report(s)")
    return out


def parse_tables(text: str) -> dict[str, list[list[str]]]:
    """The card's tables by section key (the rows under each '## <title>' heading)."""
    titles = {v: k for k, v in SECTIONS.items()}
    found: dict[str, list[list[str]]] = {}
    key = None
    rows: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("## "):
            key = titles.get(line[3:].strip())
            rows = []
            if key:
                found[key] = rows
            continue
        if key and line.startswith("|"):
            rows.append(_split_row(line))
    # drop the header and separator rows
    return {k: v[2:] for k, v in found.items()}


def _card_doc(text: str) -> dict:
    m = re.search(r"<!-- " + MARK + r" (\{.*?\}) -->", text)
    if not m:
        return {}
    try:
        d = json.loads(m.group(1))
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def check_card(card_path: str | os.PathLike, artifacts: list[str], *, evals: list[str] | None = None,
               profiles: list[str] | None = None, log: Log = _nolog) -> dict[str, Any]:
    """Regenerate the card's tables from the files as they are now and compare them with the card's.

    ``evals``/``profiles`` default to the reports the card was made from (recorded in it, relative to it).
    Returns {'ok', 'problems': [...], 'checked': {section: rows}}; ``slmctl card --check`` raises GateFailed
    (exit 3) when not ok, after printing it.
    """
    card_path = Path(card_path)
    if not card_path.is_file():
        raise InputError(f"{card_path} does not exist", hint="write it first: slmctl card ARTIFACT... -o README.md")
    text = card_path.read_text(encoding="utf-8")
    root = card_path.parent
    doc = _card_doc(text)
    if not doc:
        raise InputError(f"{card_path} was not written by slmctl card (no '{MARK}' record in it)",
                         hint="write it with: slmctl card ARTIFACT... -o README.md")
    ev_paths = [Path(p) for p in evals] if evals else [root / p for p in doc.get("evals", [])]
    pr_paths = [Path(p) for p in profiles] if profiles else [root / p for p in doc.get("profiles", [])]
    items = _open_items(list(artifacts) or [str(root / a) for a in doc.get("artifacts", [])], root, log)
    want = tables(items, _load_reports(ev_paths, "eval report", ("ppl", "model")),
                  _load_reports(pr_paths, "profile report", ("prefill", "decode")), root)
    have = parse_tables(text)
    problems = []
    for key, rows in want.items():
        got = have.get(key, [])
        if not rows and not got:
            continue
        head = HEADS[key][0]
        got_by = {r[0] + "\0" + "\0".join(r[1:_id_cols(key)]): r for r in got}
        want_by = {r[0] + "\0" + "\0".join(r[1:_id_cols(key)]): r for r in rows}
        for k, r in want_by.items():
            g = got_by.get(k)
            label = " / ".join(x for x in k.split("\0") if x)
            if g is None:
                problems.append(f"{SECTIONS[key]}: {label} is not in the card")
                continue
            for h, a, b in zip(head, g, r):
                if a != b:
                    problems.append(f"{SECTIONS[key]}: {label}: {h} is {a} in the card, {b} in the files")
        for k in got_by.keys() - want_by.keys():
            problems.append(f"{SECTIONS[key]}: {' / '.join(x for x in k.split(chr(0)) if x)} is in the card but "
                            "not in the files given")
    rep = {"card": str(card_path), "ok": not problems, "problems": problems,
           "checked": {k: len(v) for k, v in want.items()}}
    return rep


def _id_cols(key: str) -> int:
    """How many leading columns identify a row of a table (the rest are values)."""
    return {"prefill": 4, "decode": 4, "quality": 4}.get(key, 1)
