"""mergekit YAML merge configurations: read, check, and resolve parameters as mergekit does.

Accepted as mergekit (https://github.com/arcee-ai/mergekit) reads them: ``merge_method``,
``base_model``, exactly one of ``models`` or ``slices``, ``parameters``, ``dtype``, ``out_dtype``,
``tokenizer_source``, ``chat_template``. A parameter value is a scalar, a gradient (a list of
numbers interpolated over the layers of a slice) or a list of ``{filter, value}`` conditions
(the first whose filter is a substring of the tensor name wins; no filter or ``*`` matches all).
Model references may be ``path+lora_path`` (a PEFT adapter folded into the model first).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..errors import FormatError, InputError, UnsupportedError

TOP_KEYS = {"merge_method", "base_model", "models", "slices", "modules", "parameters", "dtype", "out_dtype",
            "tokenizer_source", "tokenizer", "chat_template", "name"}
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float": "float32", "float16": "float16",
               "fp16": "float16", "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float64": "float64"}


@dataclass
class Source:
    """One model feeding an output slice (``layer_range`` None = all its layers)."""

    model: str
    layer_range: tuple[int, int] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutSlice:
    sources: list[Source]
    parameters: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None


@dataclass
class MergeConfig:
    merge_method: str
    base_model: str | None = None
    models: list[Source] | None = None
    slices: list[OutSlice] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    chat_template: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)  # the document as given, kept in the recipe
    ignored: list[str] = field(default_factory=list)  # keys read but not acted on

    def referenced_models(self) -> list[str]:
        """Every model the config names, first appearance first, the base last if not already named."""
        seen: dict[str, None] = {}
        for s in self.models or []:
            seen.setdefault(s.model, None)
        for sl in self.slices or []:
            for s in sl.sources:
                seen.setdefault(s.model, None)
            if sl.base_model:
                seen.setdefault(sl.base_model, None)
        if self.base_model:
            seen.setdefault(self.base_model, None)
        return list(seen)


def load(path: str | os.PathLike) -> MergeConfig:
    """Read and check a mergekit YAML file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read merge config {path}: {exc.strerror}",
                         hint="pass the path of a mergekit YAML file to --config") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FormatError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})",
                          hint="check the indentation; see docs/merge.md for an example config") from None
    return from_dict(doc, where=str(path))


def _params(v: Any, where: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise FormatError(f"{where}: 'parameters' must be a mapping, got {type(v).__name__}")
    for name, setting in v.items():
        _check_setting(setting, f"{where}: parameter {name!r}")
    return dict(v)


def _check_setting(s: Any, where: str) -> None:
    if isinstance(s, (bool, int, float, str)):
        return
    if isinstance(s, dict):
        if "value" not in s or set(s) - {"value", "filter"}:
            raise FormatError(f"{where}: a conditional value needs 'value' (and optionally 'filter'), got {s!r}")
        _check_setting(s["value"], where)
        return
    if isinstance(s, list):
        if all(isinstance(e, (bool, int, float, str)) for e in s):
            return
        for e in s:
            if not isinstance(e, dict):
                raise FormatError(f"{where}: mixes conditions and plain values: {s!r}",
                                  hint="use a list of numbers (a gradient) or a list of {filter, value}")
            _check_setting(e, where)
        return
    raise FormatError(f"{where}: unexpected value {s!r}")


def _model_ref(v: Any, where: str) -> str:
    if isinstance(v, dict) and "model" in v:  # mergekit's long form {model: {path: ..., lora: ...}}
        m = v["model"]
        if isinstance(m, dict):
            p = m.get("path")
            lora = m.get("lora")
            if lora and isinstance(lora, dict):
                lora = lora.get("path")
            if not isinstance(p, str):
                raise FormatError(f"{where}: model entry without a path: {v!r}")
            return f"{p}+{lora}" if lora else p
        v = m
    if not isinstance(v, str) or not v:
        raise FormatError(f"{where}: model must be a path or hub id, got {v!r}")
    return v


def _layer_range(v: Any, where: str) -> tuple[int, int]:
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in v) or not 0 <= v[0] <= v[1]):
        raise FormatError(f"{where}: layer_range must be [start, end) with 0 <= start <= end, got {v!r}")
    return int(v[0]), int(v[1])


def from_dict(doc: Any, where: str = "merge config") -> MergeConfig:
    """Check a parsed config document and build a MergeConfig."""
    if not isinstance(doc, dict):
        raise FormatError(f"{where}: expected a mapping at the top level",
                          hint="a mergekit config starts with merge_method: and models: or slices:")
    method = doc.get("merge_method")
    if not isinstance(method, str):
        raise FormatError(f"{where}: merge_method is missing", hint="add e.g. 'merge_method: slerp'")
    present = [k for k in ("models", "slices", "modules") if doc.get(k)]
    if len(present) != 1:
        raise FormatError(f"{where}: exactly one of 'models', 'slices' or 'modules' must be present"
                          f" (found {', '.join(present) or 'none'})")
    if present[0] == "modules":
        raise UnsupportedError(f"{where}: 'modules' (multi-module architectures) is not supported",
                               hint="use 'models' or 'slices'")
    if doc.get("tokenizer_source") and doc.get("tokenizer"):
        raise FormatError(f"{where}: cannot give both tokenizer_source and tokenizer")
    cfg = MergeConfig(merge_method=method, raw=dict(doc))
    cfg.ignored = sorted(k for k in doc if k not in TOP_KEYS)
    if doc.get("base_model") is not None:
        cfg.base_model = _model_ref(doc["base_model"], f"{where}: base_model")
    cfg.parameters = _params(doc.get("parameters"), f"{where}: parameters")
    for key in ("dtype", "out_dtype"):
        v = doc.get(key)
        if v is not None:
            if v not in DTYPE_NAMES:
                raise FormatError(f"{where}: unknown {key} {v!r}", hint="valid: float32, float16, bfloat16")
            setattr(cfg, key, DTYPE_NAMES[v])
    ts = doc.get("tokenizer_source")
    tok = doc.get("tokenizer")
    if isinstance(tok, dict):
        if tok.get("tokens"):
            raise UnsupportedError(f"{where}: tokenizer.tokens (per-token embedding sources) is not supported",
                                   hint="use tokenizer_source: base (or a model)")
        ts = tok.get("source")
    if ts is not None:
        cfg.tokenizer_source = _model_ref(ts, f"{where}: tokenizer_source") if ts not in ("base", "union") else ts
    cfg.chat_template = doc.get("chat_template")
    if present[0] == "models":
        if not isinstance(doc["models"], list):
            raise FormatError(f"{where}: 'models' must be a list")
        cfg.models = []
        for i, m in enumerate(doc["models"]):
            w = f"{where}: models[{i}]"
            if not isinstance(m, dict) or "model" not in m:
                raise FormatError(f"{w}: each entry needs 'model:'", hint="  - model: path/to/model")
            cfg.models.append(Source(_model_ref(m, w), None, _params(m.get("parameters"), w)))
    else:
        if not isinstance(doc["slices"], list):
            raise FormatError(f"{where}: 'slices' must be a list")
        cfg.slices = []
        for i, sl in enumerate(doc["slices"]):
            w = f"{where}: slices[{i}]"
            if not isinstance(sl, dict) or not isinstance(sl.get("sources"), list) or not sl["sources"]:
                raise FormatError(f"{w}: each slice needs a non-empty 'sources:' list")
            sources = []
            for j, s in enumerate(sl["sources"]):
                ws = f"{w}.sources[{j}]"
                if not isinstance(s, dict) or "model" not in s or "layer_range" not in s:
                    raise FormatError(f"{ws}: each source needs 'model:' and 'layer_range:'")
                sources.append(Source(_model_ref(s, ws), _layer_range(s["layer_range"], ws),
                                      _params(s.get("parameters"), ws)))
            lens = {s.layer_range[1] - s.layer_range[0] for s in sources}
            if len(lens) != 1:
                raise FormatError(f"{w}: all sources of a slice must span the same number of layers "
                                  f"(got {sorted(lens)})")
            base = _model_ref(sl["base_model"], f"{w}.base_model") if sl.get("base_model") else None
            cfg.slices.append(OutSlice(sources, _params(sl.get("parameters"), w), base))
    return cfg


# ------------------------------------------------------------------ parameter resolution
def evaluate_setting(tensor_name: str, setting: Any, t: float, validate: Callable[[Any], Any]) -> Any:
    """A setting's value for ``tensor_name`` at layer position ``t`` in [0, 1] (mergekit's rules)."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return validate(setting)
    if isinstance(setting, list):
        if not setting:
            return None
        if all(isinstance(e, (bool, int, float, str)) for e in setting):
            values = [validate(e) for e in setting]
            if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in values):
                return values[int(t * (len(values) - 1))]
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return validate((1 - frac) * values[i0] + frac * values[i1])
        for cond in setting:
            f = cond.get("filter")
            if f is None or f == "*" or (tensor_name and f in tensor_name):
                return evaluate_setting(tensor_name, cond["value"], t, validate)
        return None
    raise FormatError(f"unexpected parameter value {setting!r}")


def validator(default: Any, name: str) -> Callable[[Any], Any]:
    """The type check mergekit's ParameterSpec applies: bools stay bools, numbers become floats."""
    def as_bool(v):
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
        raise FormatError(f"parameter {name!r} must be true or false, got {v!r}")

    def as_float(v):
        if isinstance(v, bool):
            raise FormatError(f"parameter {name!r} must be a number, got {v!r}")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise FormatError(f"parameter {name!r} must be a number, got {v!r}") from None
        if not math.isfinite(x):
            raise FormatError(f"parameter {name!r} must be finite, got {v!r}")
        return x

    return as_bool if isinstance(default, bool) else as_float


def resolve(name: str, scopes: Iterable[Mapping[str, Any] | None], *, tensor_name: str, t: float,
            default: Any, required: bool, where: str = "") -> Any:
    """The first scope (highest precedence first) whose setting for ``name`` gives a value."""
    check = validator(default, name)
    for scope in scopes:
        if scope and name in scope:
            v = evaluate_setting(tensor_name, scope[name], t, check)
            if v is not None:
                return v
    if required:
        raise FormatError(f"missing parameter {name!r} for {where or tensor_name}",
                          hint=f"set it under the model's parameters (or the top-level parameters), "
                               f"e.g. '{name}: 0.5'")
    return None if default is None else check(default)


def to_yaml(doc: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)
