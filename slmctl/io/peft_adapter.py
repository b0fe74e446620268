"""PEFT LoRA adapters on disk: adapter_config.json + adapter_model.safetensors, read lazily.

The layout is PEFT's (https://github.com/huggingface/peft): tensors named
``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight`` (``lora_embedding_A`` / ``_B`` for
embeddings), optionally with the adapter name before ``.weight``; other tensors (modules_to_save,
biases) replace the base's tensor of the same name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError, InputError, UnsupportedError
from .lazy import LazyTensor

PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                  r"(?:\.(?P<adapter>[\w-]+))?(?:\.weight)?$")


@dataclass
class LoraTarget:
    """One adapted weight: fold ``weight + scale * B @ A`` (transposed when ``transpose``)."""

    weight: str  # the base tensor's name, e.g. model.layers.0.self_attn.q_proj.weight
    a: LazyTensor
    b: LazyTensor
    scale: float
    transpose: bool  # fan_in_fan_out weights and embeddings


@dataclass
class LoraAdapter:
    path: Path
    config: dict[str, Any]
    targets: dict[str, LoraTarget] = field(default_factory=dict)  # by base tensor name
    replacements: dict[str, LazyTensor] = field(default_factory=dict)  # base tensor name -> new tensor
    files: list[Path] = field(default_factory=list)


def _pattern_value(patterns: dict[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern: the first key matching the end of the module name."""
    for key, v in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return v
    return default


def read_adapter(path: str | Path) -> LoraAdapter:
    """Open a PEFT adapter folder (or its adapter_model.safetensors) without loading tensors."""
    from . import safetensors as st

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    cfg_path = folder / "adapter_config.json"
    weights = folder / "adapter_model.safetensors" if path.is_dir() else path
    if not cfg_path.is_file():
        raise InputError(f"{folder}: no adapter_config.json, so this is not a PEFT adapter",
                         hint="pass the folder that holds adapter_config.json and adapter_model.safetensors")
    if not weights.is_file():
        hint = ("convert adapter_model.bin to safetensors with a tool you trust"
                if (folder / "adapter_model.bin").is_file() else "save the adapter with safe_serialization=True")
        raise InputError(f"{folder}: no adapter_model.safetensors", hint=hint)
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise FormatError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise FormatError(f"{cfg_path}: not a JSON object")
    ptype = str(cfg.get("peft_type", "LORA")).upper()
    if ptype != "LORA":
        raise UnsupportedError(f"{cfg_path}: peft_type {ptype} is not LoRA", hint="only LoRA adapters can be folded")
    if cfg.get("use_dora"):
        raise UnsupportedError(f"{cfg_path}: DoRA adapters (use_dora) are not supported yet",
                               hint="fold it with PEFT's merge_and_unload, then merge the result")
    r0 = cfg.get("r", 8)
    alpha0 = cfg.get("lora_alpha", r0)
    rslora = bool(cfg.get("use_rslora", False))
    fifo = bool(cfg.get("fan_in_fan_out", False))
    tensors, _ = st.open_file(weights)
    parts: dict[str, dict[str, LazyTensor]] = {}
    ad = LoraAdapter(folder, cfg, files=[weights])
    for name, lt in tensors.items():
        key = name[len(PREFIX):] if name.startswith(PREFIX) else name
        m = _KEY.match(key)
        if not m:
            key = key.replace(".modules_to_save.default.", ".").replace(".original_module.", ".")
            ad.replacements[key] = lt
            continue
        parts.setdefault(m["module"], {})[m["kind"]] = lt
    for module, p in parts.items():
        emb = "lora_embedding_A" in p or "lora_embedding_B" in p
        a = p.get("lora_embedding_A" if emb else "lora_A")
        b = p.get("lora_embedding_B" if emb else "lora_B")
        if a is None or b is None:
            raise FormatError(f"{weights}: module {module!r} has only one of lora_A / lora_B",
                              hint="the adapter file is incomplete; save it again")
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            raise FormatError(f"{weights}: module {module!r}: lora_A {a.shape} and lora_B {b.shape} do not "
                              "multiply (A is [r, in], B is [out, r])")
        r = _pattern_value(cfg.get("rank_pattern"), module, r0)
        alpha = _pattern_value(cfg.get("alpha_pattern"), module, alpha0)
        if not r:
            raise FormatError(f"{cfg_path}: rank r is 0 for {module!r}")
        scale = alpha / (r ** 0.5) if rslora else alpha / r
        ad.targets[f"{module}.weight"] = LoraTarget(f"{module}.weight", a, b, float(scale), emb or fifo)
    if not ad.targets and not ad.replacements:
        raise FormatError(f"{weights}: no LoRA tensors found", hint="expected names like "
                          "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
    return ad
