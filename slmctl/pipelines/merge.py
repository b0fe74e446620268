"""The merge pipeline: plan every output tensor (all checks first), then stream them one at a time.

The plan follows mergekit's (https://github.com/arcee-ai/mergekit, plan.py): a ``models:`` config
becomes one slice over every layer of every model (the base appended when it is not listed);
embedding-side tensors come from the first slice's models, final norm / head from the last's;
layer ``i`` of an ``n``-layer slice sees gradients at ``t = i / (n - 1)``. Nothing is loaded until
every tensor has its inputs, shapes and parameters checked. Then each output tensor loads one
tensor per input model, is merged by the method, written to a shard and dropped, so memory stays
near (inputs + 1) x the largest tensor.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import provenance
from ..arch.names import DEPTH_KEYS, EMBEDDING_MARKS, TIED_HEAD, VOCAB_SUFFIXES, block_prefix, depth, split_block
from ..errors import InputError, UnsupportedError, UsageError
from ..recipe import MergeRecipe
from ..io import mergekit_config as mkc
from ..methods.merge.base import REQUIRED
from ..surgery.layers import pick_layer_lists

Log = Callable[[str], None]

SHAPE_KEYS = ("hidden_size", "n_embd", "num_attention_heads", "n_head", "num_key_value_heads", "head_dim",
              "intermediate_size", "n_inner")


def _nolog(msg: str) -> None:
    pass


# ------------------------------------------------------------------ opened inputs
@dataclass
class Model:
    key: str  # the reference as the config spells it
    path: Path
    art: Any
    tensors: dict  # name -> LazyTensor (LoRA-folded when the ref is path+adapter)
    config: dict
    num_layers: int
    prefix: str | None  # "model.layers", "transformer.h", ...
    layers: dict[int, list[str]] = field(default_factory=dict)  # idx -> names after "<prefix>.<idx>."
    other: list[str] = field(default_factory=list)  # tensors outside the layers, in file order
    folder: Path | None = None  # where its tokenizer files live
    inputs: list = field(default_factory=list)  # provenance records (futures of dicts until resolved)


def _index(m: Model) -> None:
    m.prefix = block_prefix(m.tensors, m.config)
    for name in m.tensors:
        s = split_block(name, m.prefix) if m.prefix is not None else None
        if s:
            m.layers.setdefault(s[1], []).append(s[2])
        else:
            m.other.append(name)
    n = depth(m.config)
    m.num_layers = n if n is not None else (max(m.layers) + 1 if m.layers else 0)


def _split_lora(ref: str) -> tuple[str, str | None]:
    """mergekit's ``model+lora`` syntax: split at the last '+' whose right side is an adapter folder."""
    if "+" in ref:
        left, right = ref.rsplit("+", 1)
        if right and (Path(right) / "adapter_config.json").is_file():
            return left, right
    return ref, None


def _lora_tensors(tensors: dict, adapter, where: str) -> dict:
    """Base tensors with the adapter folded in on load (checked here, before any load)."""
    from ..io.lazy import LazyTensor
    from ..methods.merge.lora import fold_lora

    out = dict(tensors)
    for name, tgt in adapter.targets.items():
        if name not in tensors:
            raise InputError(f"LoRA adapter {adapter.path} targets {name!r}, which {where} does not have",
                             hint="fold the adapter into the model it was trained on")
        w = tensors[name]
        din = tgt.a.shape[1]
        dout = tgt.b.shape[0]
        want = (din, dout) if tgt.transpose else (dout, din)
        if tuple(w.shape) != want:
            raise InputError(f"LoRA adapter {adapter.path}: {name} is {list(w.shape)} in {where}, but B @ A "
                             f"gives {list(want)}", hint="the adapter was trained on another model size")

        def load(w=w, tgt=tgt):
            return fold_lora(w.load(), tgt.a.load(), tgt.b.load(), tgt.scale, fan_in_fan_out=tgt.transpose)

        out[name] = LazyTensor(name, w.dtype, w.shape, w.nbytes, load, w.source)
    for name, lt in adapter.replacements.items():
        if name not in tensors:
            raise InputError(f"LoRA adapter {adapter.path} replaces {name!r}, which {where} does not have")
        if tuple(lt.shape) != tuple(tensors[name].shape):
            raise InputError(f"LoRA adapter {adapter.path}: {name} is {list(lt.shape)} but the model's is "
                             f"{list(tensors[name].shape)}")
        out[name] = lt
    return out


class _Hasher:
    """Input hashes for the provenance record, computed on one background thread while the tensors
    merge (file reads and hashlib release the GIL), so hashing 3 x 0.5 GB no longer adds to the wall
    time. One thread, so the hash cache file is written by one writer at a time."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="slmctl-hash")

    def record(self, ref: str, path: Path, art=None):
        return self._pool.submit(provenance.input_record, ref, path, art)

    def lora(self, ref: str, adapter):
        def rec():
            return {"ref": ref, "path": str(adapter.path), "format": "peft-lora",
                    "sha256": provenance.input_record(ref, adapter.files[0])["sha256"]}

        return self._pool.submit(rec)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _open(ref: str, *, allow_pickle: bool, log: Log, scratch: list[Path], hasher: _Hasher) -> Model:
    from ..io.resolve import load_artifact
    from ..io.peft_adapter import read_adapter

    base_ref, lora_ref = _split_lora(ref)
    art, path = load_artifact(base_ref, allow_pickle=allow_pickle, log=log)
    inputs = [hasher.record(base_ref, path, art)]  # futures, resolved before the output is closed
    if art.format == "gguf":
        # GGUF names and layouts (q/k permuted for RoPE) differ from HF's: import to an HF folder,
        # dequantised, through the same path as `slmctl export --format hf`
        from ..io.resolve import load_artifact as _la
        from ..io.convert import gguf_to_hf

        tmp = Path(tempfile.mkdtemp(prefix="slmctl-merge-"))
        scratch.append(tmp)
        log(f"importing {path.name} (GGUF) to HF tensors for the merge (dequantised)")
        gguf_to_hf(art.path, tmp / "model", force=False, ref=base_ref)
        art, path = _la(str(tmp / "model"), log=log)
    elif art.format == "onnx":
        raise UnsupportedError(f"{path}: ONNX models cannot be merged", hint="merge the HF (or GGUF) originals")
    if art.config is None:
        raise InputError(f"{path}: no config.json beside the weights, so its architecture is unknown",
                         hint="merge HF folders, or put the model's config.json next to the .safetensors file")
    tensors = art.tensors
    if lora_ref:
        adapter = read_adapter(lora_ref)
        tensors = _lora_tensors(tensors, adapter, str(path))
        inputs.append(hasher.lora(lora_ref, adapter))
    m = Model(ref, path, art, tensors, dict(art.config), 0, None,
              folder=path if path.is_dir() else path.parent, inputs=inputs)
    _index(m)
    return m


# ------------------------------------------------------------------ plan
@dataclass
class Planned:
    """One output tensor: its inputs ({model key: input tensor name}), resolved parameters, base."""

    name: str
    inputs: dict[str, str]
    options: dict[str, Any]
    params: dict[str, dict[str, Any]]
    base: str | None
    vocab: bool
    shape: tuple[int, ...]


@dataclass
class Plan:
    tensors: list[Planned]
    config: dict
    layer_sources: list[tuple[str, int]]  # per output layer: (model key, source layer)
    template: str


def _is_vocab(name: str) -> bool:
    return name.endswith(VOCAB_SUFFIXES)


def _input_name(m: Model, name: str) -> str | None:
    """``name`` in ``m``, or the tied embedding a missing lm_head stands for."""
    if name in m.tensors:
        return name
    for alias in TIED_HEAD.get(name, ()):
        if alias in m.tensors:
            return alias
    return None


def _check_compatible(models: dict[str, Model]) -> None:
    first = next(iter(models.values()))
    arch0 = first.art.architecture
    for m in models.values():
        if m.art.architecture != arch0:
            raise UnsupportedError(
                f"cannot merge {m.art.architecture} ({m.path}) with {arch0} ({first.path})",
                hint="merge models of one architecture (the same config.json 'architectures')")
        for k in SHAPE_KEYS:
            a, b = first.config.get(k), m.config.get(k)
            if a != b and not (k in ("num_attention_heads", "num_key_value_heads", "intermediate_size")
                               and "slmctl_per_layer" in (first.config.keys() | m.config.keys())):
                raise InputError(f"config key {k} differs: {a} in {first.path}, {b} in {m.path}",
                                 hint="merged models need the same sizes; prune or pick matching models")


def _vocab_of(folder: Path | None, where: str) -> dict[str, int]:
    tj = folder / "tokenizer.json" if folder else None
    if not tj or not tj.is_file():
        raise InputError(f"{where}: no tokenizer.json, so its vocabulary cannot be aligned",
                         hint="give a model with a fast tokenizer (tokenizer.json) as --tokenizer-source")
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tj)).get_vocab(with_added_tokens=True)


def build_plan(cfg: mkc.MergeConfig, models: dict[str, Model], method) -> Plan:
    """Every output tensor with its inputs and parameters; raises on any problem, loads nothing."""
    base = cfg.base_model
    if cfg.models is not None:
        sources = [mkc.Source(s.model, (0, models[s.model].num_layers), s.parameters) for s in cfg.models]
        if base and base not in [s.model for s in sources]:
            sources.append(mkc.Source(base, (0, models[base].num_layers), {}))
        slices = [mkc.OutSlice(sources)]
    else:
        slices = cfg.slices or []
    if not slices:
        raise UsageError("nothing to merge: no models or slices")

    # method contract per slice
    for i, sl in enumerate(slices):
        keys = [s.model for s in sl.sources]
        sbase = sl.base_model or base
        where = f"slice {i}" if cfg.slices else "the merge"
        if len(set(keys)) != len(keys):
            raise UsageError(f"{where} lists a model twice: {keys}",
                             hint="name each model once (merge weights, not repeated entries, set its share)")
        if method.base == "required":
            if not sbase:
                raise UsageError(f"{method.name} needs a base model",
                                 hint="pass --base MODEL (or base_model: in the config)")
            if sbase not in keys:
                raise UsageError(f"{where}: the base model {sbase} is not among its sources {keys}")
            n = len(keys) - 1
        else:
            n = len(keys)
        if n < method.min_models or (method.max_models is not None and n > method.max_models):
            want = (f"exactly {method.min_models}" if method.max_models == method.min_models
                    else f"at least {method.min_models}" if method.max_models is None
                    else f"{method.min_models} to {method.max_models}")
            extra = " besides the base" if method.base == "required" else ""
            hint = ("use --config with slices to stack layers from several models" if method.name == "passthrough"
                    else f"give {want} model(s){extra}")
            raise UsageError(f"{method.name} takes {want} model(s){extra} per slice; {where} has {n}", hint=hint)

    # vocabulary: the tokenizer source and, when set, each model's vocabulary
    target_vocab = None
    tok_key = None
    if cfg.tokenizer_source == "union":
        raise UnsupportedError("tokenizer_source: union is not supported", hint="use base or a model")
    if cfg.tokenizer_source is not None:
        tok_key = base if cfg.tokenizer_source == "base" else cfg.tokenizer_source
        if tok_key is None:
            raise UsageError("tokenizer_source: base needs a base model")
        if tok_key not in models:
            raise UsageError(f"tokenizer source {tok_key} is not one of the merged models",
                             hint=f"use one of: {', '.join(models)}")
        target_vocab = _vocab_of(models[tok_key].folder, tok_key)
        vocabs = {k: _vocab_of(m.folder, k) for k, m in models.items()}
    else:
        vocabs = {}

    template_key = base if base else slices[0].sources[0].model
    tmpl = models[template_key]
    planned: list[Planned] = []
    problems: list[str] = []

    def add(out_name: str, srcs: list[tuple[mkc.Source, int | None]], sl: mkc.OutSlice, t: float) -> None:
        inputs: dict[str, str] = {}
        for s, layer in srcs:
            m = models[s.model]
            want = out_name if layer is None else f"{m.prefix}.{layer}.{split_block(out_name, out_prefix)[2]}"
            got = _input_name(m, want)
            if got is None:
                problems.append(f"{m.path} has no tensor {want!r}")
                continue
            inputs[s.model] = got
        if len(inputs) != len(srcs):
            return
        sbase = sl.base_model or base
        vocab = _is_vocab(out_name)
        shapes = {k: tuple(models[k].tensors[v].shape) for k, v in inputs.items()}
        first_k = next(iter(shapes))
        for k, shp in shapes.items():
            if shp == shapes[first_k]:
                continue
            if vocab and len(shp) == len(shapes[first_k]) and shp[1:] == shapes[first_k][1:]:
                if target_vocab is None:
                    raise InputError(
                        f"vocabulary mismatch: {out_name} has {shapes[first_k][0]} rows in {models[first_k].path} "
                        f"but {shp[0]} in {models[k].path}",
                        hint="pass --tokenizer-source base (or a model) to align embedding rows by token, "
                             "as mergekit's tokenizer_source does")
                continue
            raise InputError(f"shape mismatch for {out_name}: {list(shapes[first_k])} in {models[first_k].path}, "
                             f"{list(shp)} in {models[k].path}",
                             hint="merged models must have the same architecture and sizes")
        shared = {}
        for name, default in method.options.items():
            shared[name] = mkc.resolve(name, [sl.parameters, cfg.parameters], tensor_name=out_name, t=t,
                                       default=None if default is REQUIRED else default,
                                       required=default is REQUIRED, where=f"{method.name} ({out_name})")
        params: dict[str, dict[str, Any]] = {}
        for s, _ in srcs:
            if method.base == "required" and s.model == sbase:
                continue
            pm = {}
            for name, default in method.tensor_params.items():
                req = default is REQUIRED
                pm[name] = mkc.resolve(name, [s.parameters, sl.parameters, cfg.parameters],
                                       tensor_name=inputs[s.model], t=t, default=None if req else default,
                                       required=req, where=f"{s.model}: {inputs[s.model]}")
            params[s.model] = pm
        out_shape = shapes[first_k]
        if vocab and target_vocab is not None:
            n = max(len(target_vocab), max(target_vocab.values(), default=-1) + 1)
            out_shape = (n, *out_shape[1:])
        planned.append(Planned(out_name, inputs, shared, params,
                               sbase if method.base == "required" else None, vocab, out_shape))

    # pre weights (embeddings) from the first slice's models, layers, then the rest from the last slice's
    first, last = slices[0], slices[-1]
    tmpl0 = models[first.sources[0].model]
    pre = [n for n in tmpl0.other if any(k in n for k in EMBEDDING_MARKS)]
    post_t = models[last.sources[0].model]
    post = [n for n in post_t.other if not any(k in n for k in EMBEDDING_MARKS)]
    # a head that some models have and the first lacks (tied) is still written, as mergekit does
    if "lm_head.weight" not in post and any("lm_head.weight" in models[s.model].tensors for s in last.sources):
        post.append("lm_head.weight")
    for name in pre:
        add(name, [(s, None) for s in first.sources], first, 0.0)
    layer_sources: list[tuple[str, int]] = []
    out_layer = 0
    out_prefix = tmpl.prefix or tmpl0.prefix
    for sl in slices:
        a0 = sl.sources[0]
        n = a0.layer_range[1] - a0.layer_range[0]
        for s in sl.sources:
            m = models[s.model]
            if s.layer_range[1] > m.num_layers:
                raise InputError(f"layer_range {list(s.layer_range)} runs past the {m.num_layers} layers of {m.path}",
                                 hint=f"use a range within [0, {m.num_layers}]")
        for idx in range(n):
            t = idx / (n - 1) if n > 1 else 1.0
            m0 = models[a0.model]
            src0 = a0.layer_range[0] + idx
            for rest in m0.layers.get(src0, []):
                srcs = [(s, s.layer_range[0] + idx) for s in sl.sources]
                add(f"{out_prefix}.{out_layer}.{rest}", srcs, sl, t)
            layer_sources.append((a0.model, src0))
            out_layer += 1
    for name in post:
        add(name, [(s, None) for s in last.sources], last, 0.0)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InputError("missing tensors: " + "; ".join(problems[:5]) + more,
                         hint="merged models must have the same tensors; check that they share an architecture")

    # output config: the template's, with the layer count and per-layer lists of the stacked layers
    out_cfg = copy.deepcopy(tmpl.config)
    out_cfg = pick_layer_lists(out_cfg, layer_sources, {k: m.config for k, m in models.items()}, n=tmpl.num_layers,
                               skip=("architectures",))  # unlike prune, token-id lists of the layer count's length too
    for k in DEPTH_KEYS:
        if k in out_cfg:
            out_cfg[k] = len(layer_sources)
    if target_vocab is not None:
        emb = next((p.shape[0] for p in planned if p.vocab), None)
        if emb is not None:
            out_cfg["vocab_size"] = emb
    if any(p.name == "lm_head.weight" for p in planned) and out_cfg.get("tie_word_embeddings"):
        out_cfg["tie_word_embeddings"] = False
    plan = Plan(planned, out_cfg, layer_sources, template_key)
    plan.vocabs = vocabs  # type: ignore[attr-defined]
    plan.target_vocab = target_vocab  # type: ignore[attr-defined]
    plan.tokenizer_key = tok_key or template_key  # type: ignore[attr-defined]
    return plan


# ------------------------------------------------------------------ flags -> config
def _floats(v: Any, what: str) -> list[float] | None:
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return [float(v)]
    if isinstance(v, str):
        try:
            return [float(x) for x in v.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"cannot read {what} {v!r}", hint=f"write {what} as numbers separated by commas") from None
    return [float(x) for x in v]


def config_from_flags(models: Sequence[str], *, method: str, base: str | None = None, weights=None, t=None,
                      density=None, lambda_=None, normalize: bool | None = None, rescale: bool | None = None,
                      gamma=None, epsilon=None, tokenizer_source: str | None = None, dtype: str | None = None,
                      out_dtype: str | None = None) -> dict[str, Any]:
    """The mergekit config document equivalent to command-line flags."""
    from ..methods.merge import METHODS

    m = METHODS.get(method)
    models = list(models)
    if not models:
        raise UsageError("no models to merge", hint="slmctl merge A B --method slerp --t 0.5 -o OUT")
    if m.base != "none" and base is None:
        if method in ("slerp", "nearswap"):
            base = models[0]
        else:
            raise UsageError(f"{method} needs a base model", hint="pass --base BASE (the model the others were tuned from)")
    others = [x for x in models if not (m.base != "none" and x == base)]
    ws = _floats(weights, "--weights")
    ds = _floats(density, "--density")
    for vals, what in ((ws, "--weights"), (ds, "--density")):
        if vals is not None and len(vals) not in (1, len(others)):
            raise UsageError(f"{what} has {len(vals)} values for {len(others)} model(s) "
                             f"({', '.join(others)})", hint=f"give one value, or one per model{' besides the base' if m.base != 'none' else ''}")
    doc: dict[str, Any] = {"merge_method": method}
    if base is not None:
        doc["base_model"] = base
    entries = []
    for x in models:
        params: dict[str, Any] = {}
        if x in others:
            if "weight" in m.tensor_params:
                params["weight"] = (ws[others.index(x)] if ws and len(ws) > 1 else ws[0]) if ws else 1.0
            if ds and "density" in m.tensor_params:
                params["density"] = ds[others.index(x)] if len(ds) > 1 else ds[0]
            if gamma is not None and "gamma" in m.tensor_params:
                params["gamma"] = float(gamma)
            if epsilon is not None and "epsilon" in m.tensor_params:
                params["epsilon"] = float(epsilon)
        entries.append({"model": x, **({"parameters": params} if params else {})})
    doc["models"] = entries
    gp: dict[str, Any] = {}
    if t is not None:
        tv = _floats(t, "--t")
        gp["t"] = tv[0] if len(tv) == 1 else tv
    if "t" in m.options and "t" not in gp:
        raise UsageError(f"{method} needs --t", hint="--t 0.5 (0 = the base, 1 = the other model; a list like "
                                                     "0,0.5,1 is a gradient over the layers)")
    if lambda_ is not None:
        gp["lambda"] = float(lambda_)
    if normalize is not None:
        gp["normalize"] = bool(normalize)
    if rescale is not None:
        gp["rescale"] = bool(rescale)
    if gp:
        doc["parameters"] = gp
    if tokenizer_source:
        doc["tokenizer_source"] = tokenizer_source
    if dtype:
        doc["dtype"] = dtype
    if out_dtype:
        doc["out_dtype"] = out_dtype
    return doc


# ------------------------------------------------------------------ execution
def _seed_for(seed: int, name: str) -> int:
    h = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def merge_tensor(p: Planned, tensors: dict, method, *, dtype=None, seed: int = 0, vocabs=None, target_vocab=None):
    """Merge one planned output tensor from its loaded inputs ({model key: tensor}).

    Takes ownership of ``tensors``: entries are converted and removed as they are used."""
    import torch

    from ..methods.merge.vocab import permute_embeddings

    first = next(iter(tensors.values()))
    if not first.is_floating_point():  # integer buffers are copied, as mergekit does
        return (tensors[p.base] if p.base in tensors else first).clone()
    del first
    work = getattr(torch, dtype) if dtype else None
    if work is None:
        work = next(iter(tensors.values())).dtype
        for x in tensors.values():
            work = torch.promote_types(work, x.dtype)
    # convert in the caller's dict, so each input is freed as soon as the method has used it
    for k in list(tensors):
        tensors[k] = tensors[k].to(work)
    if p.vocab and target_vocab is not None:
        permuted = permute_embeddings(tensors, vocabs, target_vocab, base=p.base)
        tensors.clear()
        tensors.update(permuted)
        del permuted
    base_t = tensors.pop(p.base) if p.base is not None else None
    gen = torch.Generator().manual_seed(_seed_for(seed, p.name)) if method.random else None
    return method.apply(tensors, base_t, p.params, p.options, gen)


ROW_BLOCK_BYTES = 8 << 20  # float32 bytes of one block of rows of one input


def _row_blocks(p: Planned, lazies: dict, method, permuted: bool = False) -> list[tuple[int, int]] | None:
    """Row ranges to merge ``p`` by, or None to merge it whole: only for a ``rowwise`` method, a 2-D tensor
    bigger than one block whose inputs have its shape and can be read by rows (safetensors), and no vocabulary
    permutation (``permuted``: the models' vocabularies differ and this is an embedding or LM head)."""
    if not method.rowwise or permuted or len(p.shape) != 2:
        return None
    if any(t.row_loader is None or tuple(t.shape) != tuple(p.shape) for t in lazies.values()):
        return None
    rows, cols = p.shape
    step = max(1, ROW_BLOCK_BYTES // max(1, cols * 4))
    if step >= rows:
        return None
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


def merge(models: Sequence[str] = (), out: str | Path | None = None, recipe: MergeRecipe | None = None, *,
          config: str | Path | dict | None = None, lora: str | None = None, force: bool = False,
          allow_pickle: bool = False, log: Log = _nolog, progress=None, **options: Any) -> Path:
    """Merge models into an HF folder at ``out``: from flags, a mergekit config, or a LoRA fold.

    ``slmctl merge A B --method slerp --t 0.5 -o OUT``; ``--method ties --base BASE --density 0.5``;
    ``--config merge.yml`` (mergekit YAML); ``--lora ADAPTER BASE`` (fold a PEFT adapter).
    ``recipe`` holds the flags (slmctl.recipe.MergeRecipe); keyword ``options`` are its fields, building one
    (``merge([a, b], out, method="slerp", t="0.5")``) or replacing the given recipe's.
    """
    asked = MergeRecipe.build(recipe, **options)
    method, base, weights, t, density = asked.method, asked.base, asked.weights, asked.t, asked.density
    lambda_, normalize, rescale, gamma, epsilon = asked.lambda_, asked.normalize, asked.rescale, asked.gamma, asked.epsilon
    tokenizer_source, dtype, out_dtype, seed = asked.tokenizer_source, asked.dtype, asked.out_dtype, asked.seed
    max_shard_size = asked.max_shard_size
    from ..io.hf_folder import hf_folder
    from ..io.safetensors import parse_size
    from ..methods.merge import METHODS

    if out is None:
        raise UsageError("no output path", hint="pass -o OUT")
    out = Path(out)
    models = list(models)
    if lora is not None:
        if config is not None or len(models) != 1:
            raise UsageError("--lora ADAPTER takes exactly one base model and no --config",
                             hint="slmctl merge --lora ADAPTER BASE -o OUT")
        doc = {"merge_method": "passthrough", "models": [{"model": f"{models[0]}+{lora}"}]}
        if not (Path(lora) / "adapter_config.json").is_file():
            from ..io.peft_adapter import read_adapter

            read_adapter(lora)  # raises the precise error
        if dtype:
            doc["dtype"] = dtype
        if out_dtype:
            doc["out_dtype"] = out_dtype
    elif config is not None:
        if models or method:
            raise UsageError("--config takes the models and method from the file; drop the positional models "
                             "and --method")
        if isinstance(config, dict):
            doc = config
        else:
            cfg0 = mkc.load(config)
            doc = cfg0.raw
        if tokenizer_source:
            doc = {**doc, "tokenizer_source": tokenizer_source}
    else:
        doc = config_from_flags(models, method=method or "linear", base=base, weights=weights, t=t,
                                density=density, lambda_=lambda_, normalize=normalize, rescale=rescale, gamma=gamma,
                                epsilon=epsilon, tokenizer_source=tokenizer_source, dtype=dtype, out_dtype=out_dtype)
    cfg = mkc.from_dict(doc, where=str(config) if config is not None and not isinstance(config, dict) else "merge config")
    for k in cfg.ignored:
        log(f"warning: config key {k!r} is not used by slmctl merge")
    if cfg.chat_template:
        log("warning: chat_template is not applied; the tokenizer source's template is kept")
    meth = METHODS.get(cfg.merge_method)
    shard = parse_size(max_shard_size)

    scratch: list[Path] = []
    hasher = _Hasher()
    try:
        opened: dict[str, Model] = {}
        for ref in cfg.referenced_models():
            opened[ref] = _open(ref, allow_pickle=allow_pickle, log=log, scratch=scratch, hasher=hasher)
        if cfg.tokenizer_source not in (None, "base", "union") and cfg.tokenizer_source not in opened:
            opened[cfg.tokenizer_source] = _open(cfg.tokenizer_source, allow_pickle=allow_pickle, log=log,
                                                 scratch=scratch, hasher=hasher)
        _check_compatible(opened)
        plan = build_plan(cfg, opened, meth)
        log(f"merging {len(opened)} model(s) with {meth.name}: {len(plan.tensors)} tensors, "
            f"{len(plan.layer_sources)} layers")
        out_dt = cfg.out_dtype
        out_cfg = dict(plan.config)
        if out_dt or cfg.dtype:
            out_cfg["dtype"] = out_dt or cfg.dtype
            out_cfg.pop("torch_dtype", None)
        recipe = {"method": meth.name, "config": doc, "seed": seed, "max_shard_size": shard}
        tok = opened[plan.tokenizer_key]
        prov: dict[str, Any] = {}  # completed once the inputs' hashes (computed meanwhile) are in
        with hf_folder(out, src_dir=tok.folder, config=out_cfg, prov=prov, force=force, max_shard_size=shard,
                       expected=[p.name for p in plan.tensors]) as w:
            gen_cfg = opened[plan.template].folder / "generation_config.json" if opened[plan.template].folder else None
            if gen_cfg is not None and gen_cfg.is_file():
                shutil.copyfile(gen_cfg, w.folder / "generation_config.json")
            (w.folder / "mergekit_config.yml").write_text(mkc.to_yaml(doc))
            items = progress(plan.tensors, desc="merge") if progress else plan.tensors
            for p in items:
                lazies = {k: opened[k].tensors[v] for k, v in p.inputs.items()}
                blocks = _row_blocks(p, lazies, meth,
                                     permuted=p.vocab and getattr(plan, "target_vocab", None) is not None)

                def merged(rows=None, p=p, lazies=lazies):
                    loaded = {k: (t.load() if rows is None else t.rows(rows)) for k, t in lazies.items()}
                    res = merge_tensor(p, loaded, meth, dtype=cfg.dtype, seed=seed, vocabs=getattr(plan, "vocabs", None),
                                       target_vocab=getattr(plan, "target_vocab", None))
                    del loaded
                    if out_dt and res.is_floating_point():
                        import torch

                        res = res.to(getattr(torch, out_dt))
                    return res

                if blocks is None:
                    w.add(p.name, merged())
                else:  # a block of rows at a time: memory near one block, not the tensor (bit for bit the same)
                    w.add_chunks(p.name, tuple(p.shape), (merged(range(a, b)) for a, b in blocks))
            prov.update(provenance.build("merge", recipe, [rec.result() for m in opened.values() for rec in m.inputs],
                                         typed=asked))
    finally:
        hasher.close()
        for d in scratch:
            shutil.rmtree(d, ignore_errors=True)
    return out


def merge_verb(models: Sequence[str] = (), out: str | Path | None = None, recipe: MergeRecipe | None = None, *,
               config: str | Path | dict | None = None, lora: str | None = None, force: bool = False,
               allow_pickle: bool = False, log: Log = _nolog, progress=None, **options: Any) -> dict[str, Any]:
    """``slmctl merge``: merge() and, with ``eval_windows``, the quality report (slmctl.eval.compare) of the
    merged model against the base (``--base``, the config's base_model, the LoRA's base, else the first
    model) and its gates. Returns {"output", "method", "report"?, "gates"?}."""
    asked = MergeRecipe.build(recipe, **options)
    path = merge(models, out, asked, config=config, lora=lora, force=force, allow_pickle=allow_pickle, log=log,
                 progress=progress)
    method = "lora" if lora else (asked.method or ("config" if config is not None else "linear"))
    res: dict[str, Any] = {"output": str(path), "method": method}
    if asked.eval_windows:
        from ..calib import report_domains
        from ..eval.compare import check_gates, quality_report

        base = asked.base or (models[0] if models else None)
        if config is not None:
            cfg = mkc.from_dict(config, where="merge config") if isinstance(config, dict) else mkc.load(config)
            base = cfg.base_model or cfg.referenced_models()[0]
        log(f"quality report against {base}")
        res["report"] = quality_report(str(path), base, data=report_domains("sample:mix", asked.eval_data),
                                       ctx=asked.eval_ctx, windows=asked.eval_windows, log=log)
        check_gates(res, res["report"], **asked.gate_limits())
    return res
