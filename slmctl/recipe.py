"""Typed, versioned recipes: what was asked of a verb.

One frozen dataclass per verb. The CLI builds one from its options, the pipeline takes it, and
provenance stores it in the output with its schema (``"<verb>/<version>"``), so ``from_provenance``
gives back the recipe an artifact was made with. Options that cannot work together are refused when
the recipe is built (``__post_init__``), before any model is opened: a ``UsageError`` (exit 2) that
names the option. Checks that need a registry (method and loss names) stay with the pipeline, which
owns the registries; this module imports nothing but ``errors``.

Bump a recipe's ``schema`` when a field changes meaning or is removed; adding a field with a default
keeps the version (older records read back with the default), unless the default changes what the verb
does: then bump it and name, in ``since``, the value that reproduces records older than the bump.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Sequence, Union

from .errors import UsageError

Data = Union[str, list, None]


def _report(default: Any) -> Any:
    """A field that shapes only the report and its gates, not the output: left out of the record kept in the
    artifact, so a run with other report options (or none) writes the same bytes."""
    return dataclasses.field(default=default, metadata={"report": True})


def flag(name: str) -> str:
    """The CLI spelling of a recipe field: ``eval_ctx`` -> ``--eval-ctx``."""
    return "--" + name.rstrip("_").replace("_", "-")


@dataclass(frozen=True)
class Recipe:
    """Base of every verb's recipe: conversion to and from plain JSON, building from keyword options."""

    verb: ClassVar[str] = ""
    schema: ClassVar[int] = 1
    # CLI spellings that differ from flag(field)
    flags: ClassVar[dict[str, str]] = {}
    # field -> (schema version that added it, the value records older than that version mean)
    since: ClassVar[dict[str, tuple[int, Any]]] = {}

    @classmethod
    def flag(cls, name: str) -> str:
        return cls.flags.get(name, flag(name))

    @classmethod
    def schema_id(cls) -> str:
        return f"{cls.verb}/{cls.schema}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def record(self) -> dict[str, Any]:
        """What provenance keeps in the artifact (as ``typed_recipe``): {"schema": "<verb>/<version>",
        "fields": {...}}, without the report's fields (``_report``); ``from_provenance`` reads them back as
        their defaults."""
        return {"schema": self.schema_id(), "fields": {f.name: v for f, v in self._items() if not f.metadata.get("report")}}

    def artifact_part(self):
        """This recipe with the report's fields at their defaults: what ``record`` keeps and gives back."""
        return dataclasses.replace(self, **{f.name: f.default for f, _ in self._items() if f.metadata.get("report")})

    def _items(self):
        d = self.to_dict()
        return [(f, d[f.name]) for f in dataclasses.fields(self)]

    @classmethod
    def from_dict(cls, doc: dict[str, Any], schema: str | None = None):
        """The recipe recorded as ``doc`` (with ``schema``, checked against this class's)."""
        if schema is not None:
            verb, _, ver = schema.partition("/")
            if verb != cls.verb or not ver.isdigit() or int(ver) > cls.schema:
                raise UsageError(f"a {schema} recipe cannot be read as {cls.schema_id()}",
                                 hint="use the slmctl version that wrote it")
            doc = {**{k: old for k, (v, old) in cls.since.items() if int(ver) < v}, **doc}
        return cls.build(None, **doc)

    @classmethod
    def build(cls, recipe=None, **options: Any):
        """``recipe`` with ``options`` replacing its fields (or a new recipe from ``options``); an option
        that is not a field of this verb is a usage error naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in options if k not in names)
        if unknown:
            raise UsageError(f"{cls.verb} takes no option {', '.join(cls.flag(k) for k in unknown)}",
                             hint="valid: " + ", ".join(sorted(cls.flag(n) for n in names)))
        if recipe is None:
            return cls(**options)
        if not isinstance(recipe, cls):
            raise UsageError(f"{cls.verb} takes a {cls.__name__}, not {type(recipe).__name__}")
        return dataclasses.replace(recipe, **options) if options else recipe

    def gate_limits(self) -> dict[str, Optional[float]]:
        """The quality gates this recipe sets (slmctl.eval.compare.gates keywords)."""
        return {g: getattr(self, g, None) for g in ("max_ppl_increase", "max_kld", "min_top1")}

    # ---- validation helpers: each names the option it refuses
    def _at_least(self, lo: float, *names: str) -> None:
        for n in names:
            v = getattr(self, n)
            if v is not None and v < lo:
                raise UsageError(f"{self.flag(n)} must be at least {lo}, got {v}")

    def _within(self, lo: float, hi: float, *names: str, hi_open: bool = False) -> None:
        for n in names:
            v = getattr(self, n)
            if v is not None and not (lo <= v < hi if hi_open else lo <= v <= hi):
                raise UsageError(f"{self.flag(n)} {v} must be in [{lo}, {hi}{')' if hi_open else ']'}")

    def _gate_needs(self, ok: bool, what: str, hint: str, *gates: str) -> None:
        given = [g for g in gates if getattr(self, g) is not None]
        if given and not ok:
            raise UsageError(f"{self.flag(given[0])} needs {what}", hint=hint)


UNSTRUCTURED = ("magnitude", "wanda", "sparsegpt")


@dataclass(frozen=True)
class PruneRecipe(Recipe):
    """slmctl prune: unstructured / N:M sparsity, depth or width; calibration; the report and its gate."""

    verb: ClassVar[str] = "prune"
    method: str = "magnitude"
    sparsity: float = 0.5
    pattern: Optional[str] = None
    adaptive: bool = False
    adaptive_metric: Optional[str] = None
    adaptive_lambda: float = 0.08
    layers: Optional[int] = None
    ratio: Optional[float] = None
    depth_metric: str = "bi"
    heads_ratio: float = 0.0
    mlp_ratio: float = 0.0
    hidden_ratio: float = 0.0
    data: Data = "sample:mix"
    field: str = "text"
    samples: int = 32
    seqlen: int = 256
    seed: int = 0
    eval_data: Data = _report(None)
    eval_ctx: int = _report(256)
    eval_windows: int = _report(8)
    max_ppl_increase: Optional[float] = _report(None)
    max_shard_size: Union[str, int, None] = None

    def __post_init__(self) -> None:
        m = self.method
        if m in ("depth", "width") and self.pattern:
            raise UsageError("--pattern applies to magnitude, wanda and sparsegpt")
        if self.pattern and self.adaptive:
            raise UsageError("--adaptive cannot be combined with an N:M --pattern (every layer has the same pattern)")
        if m in UNSTRUCTURED and not self.pattern and not 0.0 < self.sparsity < 1.0:
            raise UsageError(f"--sparsity {self.sparsity} must be between 0 and 1", hint="e.g. --sparsity 0.5")
        if m == "depth" and (self.layers is None) == (self.ratio is None):
            raise UsageError("depth pruning needs exactly one of --layers K or --ratio R")
        if m == "width":
            self._within(0.0, 1.0, "heads_ratio", "mlp_ratio", "hidden_ratio", hi_open=True)
            if not (self.heads_ratio or self.mlp_ratio or self.hidden_ratio):
                raise UsageError("width pruning needs --heads-ratio, --mlp-ratio and/or --hidden-ratio above 0")
        self._at_least(1, "samples", "eval_ctx")
        self._at_least(2, "seqlen")
        self._at_least(0, "eval_windows")
        self._gate_needs(self.eval_windows > 0, "the evaluation", "do not pass --eval-windows 0", "max_ppl_increase")


@dataclass(frozen=True)
class QuantizeRecipe(Recipe):
    """slmctl quantize: RTN / GPTQ / AWQ to a checkpoint layout, GGUF types or ONNX types; report and gate."""

    verb: ClassVar[str] = "quantize"
    schema: ClassVar[int] = 2
    since: ClassVar[dict[str, tuple[int, Any]]] = {"scale_search": (2, False)}
    flags: ClassVar[dict[str, str]] = {"fmt": "--format", "qtype": "--type", "sym": "--sym/--asym"}
    bits: int = 4
    method: str = "gptq"
    group_size: int = 128
    sym: bool = True
    fmt: str = "gptq"
    data: Data = "sample:mix"
    field: str = "text"
    samples: int = 64
    seq_len: int = 512
    seed: int = 0
    damp: float = 0.01
    act_order: bool = True
    static_groups: bool = True
    true_sequential: bool = True
    scale_search: bool = True
    qtype: Optional[str] = None
    tensor_type: Optional[list] = None
    tensor_types_from: Optional[str] = None
    allow_requantize: bool = False
    skip_incompatible: bool = False
    report: bool = _report(True)
    eval_data: Data = _report(None)
    eval_ctx: int = _report(512)
    eval_windows: int = _report(16)
    max_ppl_increase: Optional[float] = _report(None)

    def __post_init__(self) -> None:
        self._at_least(1, "samples", "seq_len", "eval_ctx", "eval_windows")
        if self.damp < 0:
            raise UsageError(f"--damp must not be negative, got {self.damp}")
        self._gate_needs(self.report, "the quality report", "drop --no-report", "max_ppl_increase")
        if (self.tensor_type or self.tensor_types_from) and self.fmt != "gguf":
            raise UsageError("--tensor-type/--tensor-types-from choose GGUF tensor types: they need --format gguf",
                             hint="e.g. slmctl quantize MODEL --format gguf --type q4_k_m --tensor-type attn_v=q6_k")


@dataclass(frozen=True)
class EvalRecipe(Recipe):
    """slmctl eval: the text domains (each --data one domain), windows, backend, reference and the gates."""

    verb: ClassVar[str] = "eval"
    data: Data = "sample:shakespeare"
    field: str = "text"
    reference: Optional[str] = None
    ctx: int = 512
    windows: Optional[int] = 40
    backend: Optional[str] = None
    max_ppl_increase: Optional[float] = None
    max_kld: Optional[float] = None
    min_top1: Optional[float] = None

    def __post_init__(self) -> None:
        self._at_least(1, "ctx", "windows")
        self._within(0.0, 100.0, "min_top1")
        self._gate_needs(self.reference is not None, "a reference model (quality gates compare against one)",
                         "add --reference REF", "max_ppl_increase", "max_kld", "min_top1")

    def domains(self) -> list:
        """Each --data is its own domain (a row of the report)."""
        return [self.data] if isinstance(self.data, str) else list(self.data or ["sample:shakespeare"])



# an export format's own options: given to its exporter only when set, and refused (pipelines.export) by
# an exporter whose signature does not take them, instead of being dropped
EXPORT_FORMAT_OPTIONS = ("outtype", "imatrix", "data", "method", "modelfile", "bits", "opset", "external_data")
EXPORT_API_ONLY = ("opset", "external_data")  # exporter keywords the CLI does not offer


@dataclass(frozen=True)
class ExportRecipe(Recipe):
    """slmctl export: the format, dtype, shard size and the format's own options."""

    verb: ClassVar[str] = "export"
    flags: ClassVar[dict[str, str]] = {"fmt": "--format"}
    fmt: str = "hf"
    dtype: str = "auto"
    max_shard_size: Union[str, int, None] = None
    outtype: Optional[str] = None
    imatrix: Optional[str] = None
    data: Data = None
    method: Optional[str] = None
    modelfile: bool = False
    bits: Optional[int] = None
    opset: Optional[int] = None
    external_data: Optional[bool] = None

    def options(self) -> dict[str, Any]:
        """The format's own options that were set (keyword arguments for its exporter)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {n: getattr(self, n) for n in EXPORT_FORMAT_OPTIONS if getattr(self, n) != defaults[n]}


@dataclass(frozen=True)
class MergeRecipe(Recipe):
    """slmctl merge from flags (a --config file is its own recipe: mergekit's YAML), and the optional quality
    report of the merged model against the base (off unless ``eval_windows``) with its gates."""

    verb: ClassVar[str] = "merge"
    flags: ClassVar[dict[str, str]] = {"lambda_": "--lambda"}
    # the inputs' roles, then the output; None: the method's (or the inputs') default
    method: Optional[str] = None
    base: Optional[str] = None
    weights: Optional[str] = None
    tokenizer_source: Optional[str] = None
    max_shard_size: Union[str, int, None] = None
    dtype: Optional[str] = None
    out_dtype: Optional[str] = None
    # the method's parameters (seed: of the random drops of dare_* and della)
    t: Optional[str] = None
    density: Optional[str] = None
    lambda_: Optional[float] = None
    seed: int = 0
    normalize: Optional[bool] = None
    rescale: Optional[bool] = None
    gamma: Optional[float] = None
    epsilon: Optional[float] = None
    eval_data: Data = _report(None)
    eval_ctx: int = _report(256)
    eval_windows: int = _report(0)
    max_ppl_increase: Optional[float] = _report(None)
    max_kld: Optional[float] = _report(None)
    min_top1: Optional[float] = _report(None)

    def __post_init__(self) -> None:
        self._within(0.0, 1.0, "gamma")
        self._within(0.0, 100.0, "min_top1")
        self._at_least(1, "eval_ctx")
        self._at_least(0, "eval_windows")
        self._gate_needs(self.eval_windows > 0, "the quality report", "add --eval-windows N (e.g. 8)",
                         "max_ppl_increase", "max_kld", "min_top1")


# distill's fields that change the trained weights: a resumed run must match them
DISTILL_TRAINING = ("steps", "seq_len", "batch_size", "grad_accum", "lr", "weight_decay", "warmup", "schedule",
                    "min_lr_ratio", "decay_frac", "loss", "beta", "temperature", "kd_weight", "ce_weight",
                    "hidden_loss", "hidden_weight", "topk", "select", "select_keep", "clip", "freeze_embeddings",
                    "seed", "heldout", "max_tokens", "data", "field")


@dataclass(frozen=True)
class DistillRecipe(Recipe):
    """slmctl distill: the training recipe (DISTILL_TRAINING), the final report and its gates (the distilled
    student against the teacher)."""

    verb: ClassVar[str] = "distill"
    steps: int = 200
    seq_len: int = 256
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: Optional[int] = None
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    decay_frac: float = 0.2
    loss: str = "fkl"
    beta: float = 0.5
    temperature: float = 1.0
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    hidden_loss: Optional[str] = None
    hidden_weight: float = 1.0
    topk: int = 64
    select: Optional[str] = None
    select_keep: float = 0.5
    clip: float = 1.0
    freeze_embeddings: bool = False
    seed: int = 0
    heldout: int = 8
    max_tokens: Optional[int] = None
    data: str = "sample:shakespeare"
    field: str = "text"
    eval_every: int = _report(0)
    report: bool = _report(True)
    eval_data: str = _report("sample:shakespeare")
    eval_ctx: Optional[int] = _report(None)
    eval_windows: int = _report(20)
    max_ppl_increase: Optional[float] = _report(None)
    max_kld: Optional[float] = _report(None)
    min_top1: Optional[float] = _report(None)

    def __post_init__(self) -> None:
        self._at_least(1, "steps", "batch_size", "grad_accum", "topk", "seq_len", "eval_ctx", "eval_windows")
        self._at_least(0, "warmup", "heldout", "eval_every")
        if self.lr <= 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if self.temperature <= 0:
            raise UsageError(f"--temperature must be positive, got {self.temperature}")
        if not 0 <= self.beta <= 1:
            raise UsageError(f"--beta must lie in [0, 1], got {self.beta}")
        if self.kd_weight < 0 or self.ce_weight < 0 or self.hidden_weight < 0:
            raise UsageError("loss weights must not be negative")
        if self.kd_weight == 0 and self.ce_weight == 0 and not self.hidden_loss:
            raise UsageError("every loss has weight 0", hint="set --kd-weight, --ce-weight or --hidden-loss")
        self._within(0.0, 100.0, "min_top1")
        self._gate_needs(self.report, "the final report (the distilled student against the teacher)",
                         "drop --no-report", "max_ppl_increase", "max_kld", "min_top1")

    def training(self) -> dict[str, Any]:
        """The fields that change the trained weights (a checkpoint records them; a resume must match)."""
        return {k: getattr(self, k) for k in DISTILL_TRAINING}


@dataclass(frozen=True)
class CardRecipe(Recipe):
    """slmctl card: the reports whose figures the card shows and the front matter's overrides. The card
    keeps it with the report paths relative to itself (it moves with the release)."""

    verb: ClassVar[str] = "card"
    flags: ClassVar[dict[str, str]] = {"evals": "--eval", "profiles": "--profile"}
    evals: Sequence[str] = ()
    profiles: Sequence[str] = ()
    base: Optional[str] = None
    license: Optional[str] = None
    name: Optional[str] = None

    def __post_init__(self) -> None:
        for n in ("evals", "profiles"):  # lists of paths, as the CLI and a JSON record give them
            object.__setattr__(self, n, [str(p) for p in getattr(self, n) or ()])


@dataclass(frozen=True)
class ProfileRecipe(Recipe):
    """slmctl profile: target, shapes and repeats (or a depth-width sweep)."""

    verb: ClassVar[str] = "profile"
    target: str = "torch"
    ctx: Sequence[int] = (128, 512)
    batch: Sequence[int] = (1, 4)
    repeats: int = 10
    warmup: int = 2
    decode_tokens: int = 16
    decode_ctx: Optional[int] = None
    device: Optional[str] = None
    layers: bool = True
    bandwidth: bool = True
    sweep: Optional[str] = None
    params: Union[str, int, None] = None
    base: Optional[str] = None
    depths: Optional[Sequence[int]] = None
    budget_ms: Optional[float] = None

    def __post_init__(self) -> None:
        for n in ("ctx", "batch", "depths"):  # lists, as the CLI and a JSON record give them
            v = getattr(self, n)
            if v is not None:
                object.__setattr__(self, n, list(v))
        if self.repeats < 1 or self.decode_tokens < 1 or self.warmup < 0:
            raise UsageError("--repeats and --decode-tokens must be at least 1, --warmup at least 0")
        self._at_least(1, "decode_ctx")
        if self.sweep is not None and self.sweep != "depth-width":
            raise UsageError(f"unknown sweep {self.sweep!r}", hint="valid: depth-width")


RECIPES: dict[str, type[Recipe]] = {r.verb: r for r in (PruneRecipe, QuantizeRecipe, EvalRecipe, ExportRecipe, CardRecipe,
                                                          MergeRecipe, DistillRecipe, ProfileRecipe)}


def from_provenance(prov: dict[str, Any] | None) -> Recipe | None:
    """The typed recipe a provenance record (provenance.build) holds, or None for records made before recipes."""
    doc = (prov or {}).get("typed_recipe")
    if not isinstance(doc, dict) or "schema" not in doc:
        return None
    verb = doc["schema"].partition("/")[0]
    if verb not in RECIPES:
        raise UsageError(f"unknown recipe schema {doc['schema']!r}", hint="valid verbs: " + ", ".join(RECIPES))
    return RECIPES[verb].from_dict(doc.get("fields") or {}, schema=doc["schema"])
