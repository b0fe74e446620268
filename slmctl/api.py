"""The public Python API. The CLI is a thin layer over these functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from . import provenance
from .errors import InputError, UnsupportedError, UsageError
from .registry import Registry

Log = Callable[[str], None]


def _nolog(msg: str) -> None:
    pass


def load_artifact(ref: str, *, allow_pickle: bool = False, log: Log = _nolog):
    """Resolve a model reference and open it: (artifact, local path)."""
    from .io.artifact import open_artifact
    from .io.resolve import resolve

    path = resolve(ref, log=log)
    return open_artifact(path, allow_pickle=allow_pickle), path


# ---------------------------------------------------------------- export
EXPORTERS: Registry[Callable[..., Path]] = Registry("export format")
DTYPES = ("auto", "float32", "float16", "bfloat16")
# formats whose exporter lives in its own module, imported on first use (it registers itself)
EXPORTER_MODULES = {"gguf": "slmctl.pipelines.export_gguf", "onnx": "slmctl.pipelines.export_onnx"}


def _exporter(fmt: str):
    if fmt not in EXPORTERS and fmt in EXPORTER_MODULES:
        import importlib

        importlib.import_module(EXPORTER_MODULES[fmt])
    return EXPORTERS.get(fmt)


def export(src: str, out: str | Path, fmt: str = "hf", *, dtype: str = "auto", max_shard_size: str | int | None = None,
           force: bool = False, allow_pickle: bool = False, log: Log = _nolog, progress=None, **options: Any) -> Path:
    """Convert a model to another format; returns the output path."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}", hint="valid: " + ", ".join(DTYPES))
    fn = _exporter(fmt)
    art, path = load_artifact(src, allow_pickle=allow_pickle, log=log)
    return fn(art, src, Path(out), dtype=dtype, max_shard_size=max_shard_size, force=force, log=log,
              progress=progress, **options)


def _torch_dtype(dtype: str):
    import torch

    return None if dtype == "auto" else getattr(torch, dtype)


def _stream_tensors(art, dtype: str, progress=None):
    """(name, tensor) pairs one at a time, cast to ``dtype`` (floating tensors only)."""
    target = _torch_dtype(dtype)
    names = list(art.tensors)
    it = progress(names, desc="tensors") if progress else names
    for name in it:
        t = art.tensors[name].load()
        if target is not None and t.is_floating_point():
            t = t.to(target)
        yield name, t


@EXPORTERS.register("hf")
def export_hf(art, ref: str, out: Path, *, dtype: str, max_shard_size, force: bool, log: Log, progress=None, **_):
    """An HF folder: config, tokenizer and sharded safetensors, with provenance."""
    from .io.convert import gguf_to_hf
    from .io.hf_folder import write_hf_folder
    from .io.safetensors import parse_size

    shard = parse_size(max_shard_size)
    if art.format == "gguf":
        log(f"importing {art.path.name} (GGUF) into an HF folder")
        return gguf_to_hf(art.path, out, force=force, ref=ref, max_shard_size=shard,
                          dtype=None if dtype == "auto" else dtype, log=log)
    if art.format == "onnx":
        raise UnsupportedError(f"{art.path}: ONNX -> HF is not supported", hint="export from the original HF model")
    if art.config is None:
        raise InputError(f"{art.path}: no config.json beside the weights, so an HF folder cannot be built",
                         hint="use --format safetensors, or put the model's config.json next to it")
    prov = provenance.build("export", {"format": "hf", "dtype": dtype, "max_shard_size": shard},
                            [provenance.input_record(ref, art.path, art)])
    cfg = dict(art.config)
    if dtype != "auto":
        cfg["dtype"] = dtype
        cfg.pop("torch_dtype", None)
    return write_hf_folder(out, src_dir=art.path if art.path.is_dir() else art.path.parent, config=cfg,
                           tensors=_stream_tensors(art, dtype, progress), prov=prov, force=force,
                           max_shard_size=shard)


@EXPORTERS.register("safetensors")
def export_safetensors(art, ref: str, out: Path, *, dtype: str, max_shard_size, force: bool, log: Log,
                       progress=None, **_):
    """One .safetensors file with every tensor and the provenance in its header."""
    from .io.artifact import PROVENANCE_KEY
    from .io.atomic import atomic_path
    from .io.convert import write_provenance_file
    from .io.safetensors import ShardedWriter

    if max_shard_size:
        raise UsageError("--max-shard-size needs --format hf (a single .safetensors file is one shard)")
    if art.format == "gguf":
        raise UnsupportedError(f"{art.path}: GGUF -> a single .safetensors file is not supported",
                               hint="use --format hf, which dequantises and renames the tensors")
    prov = provenance.build("export", {"format": "safetensors", "dtype": dtype},
                            [provenance.input_record(ref, art.path, art)])
    with atomic_path(out, force=force) as tmp:
        w = ShardedWriter(tmp.parent, single_file=tmp, metadata={PROVENANCE_KEY: provenance.dumps(prov)})
        try:
            for name, t in _stream_tensors(art, dtype, progress):
                w.add(name, t)
        except BaseException:
            w.abort()
            raise
        w.close()
    write_provenance_file(out.with_name(out.name + ".slmctl.json"), prov)
    return out


# ---------------------------------------------------------------- inspect
def inspect(ref: str, *, allow_pickle: bool = False, verify: bool = False, check: bool = False,
            log: Log = _nolog) -> dict[str, Any]:
    """What a model artifact holds: format, architecture, parameters, dtypes, size, tokenizer, provenance.

    With ``verify``, every recorded input that still exists is hashed again and compared. With
    ``check``, the artifact's own runtime loads it, generates from a short prompt and its logits are
    compared with slmctl's reference (``info["check"]``, see slmctl.eval.check).
    """
    from collections import Counter

    art, path = load_artifact(ref, allow_pickle=allow_pickle, log=log)
    dtypes: Counter[str] = Counter()
    params = 0
    for t in art.tensors.values():
        dtypes[t.dtype] += t.numel
        params += t.numel
    info: dict[str, Any] = {
        "path": str(path),
        "format": art.format,
        "architecture": art.architecture,
        "model_type": art.model_type,
        "parameters": params,
        "tensors": len(art.tensors),
        "dtypes": dict(dtypes.most_common()),
        "size_bytes": art.size_on_disk(),
        "quantization": _quantization(art, dtypes),
        "tokenizer": _tokenizer_info(art, path),
        "config": _config_summary(art),
    }
    prov = art.provenance()
    info["provenance"] = [
        {"verb": s.get("verb"), "recipe": s.get("recipe"),
         "inputs": [{k: v for k, v in i.items() if k != "provenance"} for i in s.get("inputs", [])],
         "slmctl": s.get("versions", {}).get("slmctl")}
        for s in provenance.chain(prov)
    ]
    if verify:
        info["verify"] = provenance.verify(prov)
    if check:
        from .eval.check import check as run_check

        info["check"] = run_check(art, log=log)
    return info


def _quantization(art, dtypes) -> Any:
    if art.config and art.config.get("quantization_config"):
        return art.config["quantization_config"]
    if art.format == "gguf":
        ft = art.metadata.get("general.file_type")
        try:
            from gguf import LlamaFileType

            ft = LlamaFileType(ft).name.removeprefix("MOSTLY_") if ft is not None else None
        except (ValueError, ImportError):
            pass
        from collections import Counter

        counts = Counter(t.dtype for t in art.tensors.values())
        return {"file_type": ft, "tensor_types": dict(dtypes), "tensor_counts": dict(counts.most_common())}
    return None


def _tokenizer_info(art, path: Path) -> dict[str, Any] | None:
    import json

    if art.format == "gguf":
        m = art.metadata
        toks = m.get("tokenizer.ggml.tokens")
        if toks is None:
            return None
        return {"type": m.get("tokenizer.ggml.model"), "pre": m.get("tokenizer.ggml.pre"), "vocab_size": len(toks),
                "bos_token_id": m.get("tokenizer.ggml.bos_token_id"), "eos_token_id": m.get("tokenizer.ggml.eos_token_id"),
                "chat_template": "tokenizer.chat_template" in m}
    folder = path if path.is_dir() else path.parent
    tj = folder / "tokenizer.json"
    if tj.is_file():
        try:
            doc = json.loads(tj.read_text())
            model = doc.get("model", {})
            vocab = set(model.get("vocab", {}) or {})
            vocab |= {t.get("content") for t in doc.get("added_tokens", []) if isinstance(t, dict)}
            return {"type": model.get("type"), "vocab_size": len(vocab),
                    "file": "tokenizer.json"}
        except (OSError, ValueError, AttributeError):
            return {"file": "tokenizer.json", "error": "unreadable"}
    if (folder / "tokenizer.model").is_file():
        return {"type": "sentencepiece", "file": "tokenizer.model"}
    return None


def _config_summary(art) -> dict[str, Any] | None:
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
            "vocab_size", "max_position_embeddings", "tie_word_embeddings", "n_embd", "n_layer", "n_head")
    if art.config:
        return {k: art.config[k] for k in keys if k in art.config}
    if art.format == "gguf":
        a = art.metadata.get("general.architecture", "")
        out = {}
        for k in ("embedding_length", "block_count", "attention.head_count", "attention.head_count_kv",
                  "feed_forward_length", "context_length"):
            v = art.metadata.get(f"{a}.{k}")
            if v is not None:
                out[k] = v.tolist() if hasattr(v, "tolist") else v
        return out
    return None


# ---------------------------------------------------------------- eval
def evaluate(model: str, *, data: str | list[str] = "sample:shakespeare", field: str = "text",
             reference: str | None = None, ctx: int = 512, windows: int | None = 40, backend: str | None = None,
             allow_pickle: bool = False, trust_remote_code: bool = False, log: Log = _nolog,
             progress=None) -> dict[str, Any]:
    """Perplexity of a model; with a reference, KL divergence, top-1 agreement and the perplexity ratio.

    ``data`` is one text domain: a source, or several (weighted) read as one mix (slmctl.calib);
    ``evaluate_domains`` measures several domains side by side.
    """
    from .calib import label
    from .eval.run import evaluate as _evaluate

    art, _ = load_artifact(model, allow_pickle=allow_pickle, log=log)
    ref = load_artifact(reference, allow_pickle=allow_pickle, log=log)[0] if reference else None
    rep = _evaluate(art, data=data, field=field, ctx=ctx, windows=windows, reference_art=ref, backend=backend,
                    trust_remote_code=trust_remote_code, progress=progress, log=log)
    rep["data"] = label(data)
    return rep


def evaluate_domains(model: str, domains: list, **kwargs: Any) -> dict[str, Any]:
    """``evaluate`` on each domain (a source, or a list read as one mix): {"model", "domains": [report, ...]}."""
    reps = [evaluate(model, data=d, **kwargs) for d in domains]
    return {"model": reps[0]["model"], "format": reps[0]["format"], "backend": reps[0]["backend"],
            "reference": reps[0].get("reference"), "domains": reps}


# ---------------------------------------------------------------- the other verbs
# Each verb's pipeline lives in slmctl/pipelines/<verb>.py; these are its public entry points.
def quantize(*args: Any, **kwargs: Any):
    """Quantize a model (RTN, GPTQ, AWQ to safetensors; GGUF and ONNX types). See slmctl.pipelines.quantize."""
    from .pipelines.quantize import quantize as _f

    return _f(*args, **kwargs)


def prune(*args: Any, **kwargs: Any):
    """Prune a model (unstructured, N:M, depth, width). See slmctl.pipelines.prune."""
    from .pipelines.prune import prune as _f

    return _f(*args, **kwargs)


def merge(*args: Any, **kwargs: Any):
    """Merge models (linear, SLERP, task arithmetic, TIES, DARE, passthrough). See slmctl.pipelines.merge."""
    from .pipelines.merge import merge as _f

    return _f(*args, **kwargs)


def distill(*args: Any, **kwargs: Any):
    """Distil a teacher into a student. See slmctl.pipelines.distill."""
    from .pipelines.distill import distill as _f

    return _f(*args, **kwargs)


def profile(*args: Any, **kwargs: Any):
    """Latency and memory on a hardware target; depth-width sweeps. See slmctl.pipelines.profile."""
    from .pipelines.profile import profile as _f

    return _f(*args, **kwargs)


def card(*args: Any, **kwargs: Any):
    """Write a Hugging Face model card for release artifacts. See slmctl.pipelines.card."""
    from .pipelines.card import card as _f

    return _f(*args, **kwargs)


def check_card(*args: Any, **kwargs: Any):
    """Compare a model card's hashes and figures with the files. See slmctl.pipelines.card."""
    from .pipelines.card import check_card as _f

    return _f(*args, **kwargs)
