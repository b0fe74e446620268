"""quantize: RTN, GPTQ and AWQ weight-only integer quantisation to the GPTQ layout or compressed-tensors.

artifact in -> (calibration windows -> one decoder layer at a time) -> method -> packed safetensors out
(with provenance) -> quality report (perplexity before/after, KL, top-1, size, bits per weight) and
an optional gate. RTN needs no activations and streams tensor by tensor without building the model.
GGUF inputs with a GGUF quant type go to llama.cpp (slmctl.pipelines.gguf_quant.quantize_gguf);
ONNX inputs to onnxruntime (slmctl.pipelines.quantize_onnx.quantize_onnx).
"""

from __future__ import annotations

import functools
import json
import re
import time
from pathlib import Path
from typing import Any, Callable

from .. import provenance
from ..calib import calibration_windows  # noqa: F401  (was defined here; bench scripts import it from here)
from ..eval.compare import check_gates, quality_report
from ..errors import InputError, UnsupportedError, UsageError
from ..recipe import QuantizeRecipe

Log = Callable[[str], None]
METHODS = ("rtn", "gptq", "awq")


def _nolog(msg: str) -> None:
    pass


def default_output(ref: str, path: Path, method: str, cfg) -> Path:
    """MODEL-<method>-w4g128 beside a local input; in the current folder for sample:/hub references."""
    name = f"{method}-{cfg.tag()}"
    local = Path(ref).expanduser()
    if local.exists():
        base = local.resolve()
        stem = base.name[: -len(base.suffix)] if base.is_file() and base.suffix else base.name
        return base.parent / f"{stem}-{name}"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", ref.split(":")[-1].split("/")[-1]).strip("-") or "model"
    return Path.cwd() / f"{stem}-{name}"


def _quantize_gguf(art, out, *, qtype, allow_requantize, force, log):
    """A GGUF input with a GGUF type: llama.cpp's quantiser (it takes a file path; a sample: ref resolves to one)."""
    if not qtype:
        raise UsageError(f"{art.path} is a GGUF file: say which GGUF type to quantise to",
                         hint="e.g. slmctl quantize MODEL.gguf --type q4_k_m")
    from .gguf_quant import quantize_gguf

    if out is None:
        out = Path.cwd() / f"{art.path.stem}-{qtype.upper()}.gguf"
    return quantize_gguf(art.path, out, qtype, allow_requantize=allow_requantize, force=force, log=log)


def quantize(model: str, out: str | Path | None = None, recipe: QuantizeRecipe | None = None, *, force: bool = False,
             trust_remote_code: bool = False, log: Log = _nolog, progress=None, **options: Any) -> dict[str, Any]:
    """Quantise ``model``'s linear weights (or a GGUF / ONNX model to one of their types); returns {"output",
    "method", ..., "report": {...}, "gates": {...}}: the quality report (slmctl.eval.compare) and the gate on it.

    ``recipe`` says what to do (slmctl.recipe.QuantizeRecipe); keyword ``options`` are its fields, building
    one (``quantize(m, out, method="rtn", bits=8)``) or replacing the given recipe's."""
    asked = QuantizeRecipe.build(recipe, **options)
    fields = {k: v for k, v in asked.to_dict().items() if k != "max_ppl_increase"}
    with provenance.asking(asked):
        res = _quantize(model, out, **fields, force=force, trust_remote_code=trust_remote_code, log=log,
                        progress=progress)
    if res.get("report"):
        check_gates(res, res["report"], max_ppl_increase=asked.max_ppl_increase)
    return res


def _quantize(model: str, out: str | Path | None = None, *, bits: int = 4, method: str = "gptq",
              group_size: int = 128, sym: bool = True, fmt: str = "gptq", data: str | list[str] = "sample:mix",
              field: str = "text", samples: int = 64, seq_len: int = 512, seed: int = 0, damp: float = 0.01,
              act_order: bool = True, static_groups: bool = True, true_sequential: bool = True,
              scale_search: bool = True, qtype: str | None = None, tensor_type: list[str] | None = None,
              tensor_types_from: str | None = None, allow_requantize: bool = False, report: bool = True,
              eval_data: str | list | None = None, eval_ctx: int = 512, eval_windows: int = 16,
              force: bool = False, trust_remote_code: bool = False, skip_incompatible: bool = False,
              log: Log = _nolog, progress=None) -> dict[str, Any]:
    """quantize() with the recipe's fields as keywords."""
    from ..io.resolve import load_artifact
    from ..io.quantized_formats import FORMATS
    from ..methods.quantize.common import QuantConfig, load_methods

    art, path = load_artifact(model, log=log)
    if (tensor_type or tensor_types_from) and (art.format in ("gguf", "onnx") or fmt != "gguf"):
        raise UsageError("--tensor-type/--tensor-types-from apply to slmctl's own GGUF quantisation of an HF model",
                         hint="slmctl quantize HF_MODEL --format gguf --type T --tensor-type PATTERN=TYPE")
    if art.format == "gguf":
        target = _quantize_gguf(art, Path(out) if out else None, qtype=qtype, allow_requantize=allow_requantize,
                                force=force, log=log)
        return {"output": str(target), "format": art.format, "type": qtype}
    if art.format == "onnx":  # onnxruntime's quantisers, then the same quality report
        from .quantize_onnx import quantize_onnx_verb

        return quantize_onnx_verb(model, out, bits=bits, qtype=qtype, method=method, block_size=group_size,
                                  symmetric=sym, data=data, samples=samples, seq_len=seq_len, damp=damp, report=report,
                                  eval_data=eval_data or "sample:shakespeare",
                                  eval_ctx=eval_ctx, eval_windows=eval_windows, force=force, log=log,
                                  progress=progress)
    if fmt == "gguf":  # slmctl's own quantisers on llama.cpp's block grids and type mixture
        from .gguf_quant import quantize_verb

        return quantize_verb(art, model, path, out, qtype=qtype, method=method, data=data, field=field,
                             samples=samples, seq_len=seq_len, seed=seed, damp=damp, act_order=act_order,
                             report=report, eval_data=eval_data, eval_ctx=eval_ctx, eval_windows=eval_windows,
                             force=force, trust_remote_code=trust_remote_code, log=log, progress=progress,
                             tensor_type=tensor_type or (), types_from=tensor_types_from)
    if qtype:
        raise UsageError("--type names a GGUF/ONNX quant type; this model is an HF/safetensors model",
                         hint="use --bits/--group-size/--method, or export to GGUF with "
                              "slmctl export MODEL --format gguf --outtype q4_k_m")
    if art.format != "hf":
        raise UnsupportedError(f"{art.path}: quantise needs an HF folder (config.json, tokenizer, safetensors)",
                               hint="slmctl export MODEL --format hf -o DIR, then quantise DIR")
    if (art.config or {}).get("quantization_config"):
        raise UnsupportedError(f"{art.path}: the model is already quantised "
                               f"({art.config['quantization_config'].get('quant_method')})",
                               hint="quantise the original floating-point model")
    if art.config.get("model_type") in ("gpt2",):
        raise UnsupportedError(f"{art.path}: {art.config['model_type']} stores its linears as Conv1D, which the "
                               "GPTQ layout does not describe", hint="supported: llama, mistral, qwen2, qwen3, phi3, gemma2")
    if fmt not in FORMATS:
        raise UsageError(f"unknown quantised format {fmt!r}", hint="valid: " + ", ".join(FORMATS))
    methods = load_methods()
    methods.get(method)
    cfg = QuantConfig(bits=bits, group_size=group_size, sym=sym)
    from ..methods.quantize.gptq import GPTQConfig

    gcfg = GPTQConfig(damp=damp, act_order=act_order, static_groups=static_groups, true_sequential=true_sequential,
                      scale_search=scale_search)
    if fmt == "compressed-tensors" and not sym:
        # the layout is what llm-compressor writes and vLLM reads, but transformers (5.24, with
        # compressed-tensors 0.20.1) builds weight_zero_point unpacked on the meta device and then
        # rejects the packed tensor (size mismatch; vllm-project/llm-compressor#1618)
        raise UsageError("--asym with --format compressed-tensors: transformers cannot load asymmetric "
                         "pack-quantized checkpoints (compressed-tensors 0.20 leaves weight_zero_point "
                         "unpacked when it builds the model, then rejects the packed zero points)",
                         hint="use --format gptq (asymmetric zero points as gptq_v2, loaded by GPTQModel "
                              "and vLLM), or --sym for compressed-tensors")
    if fmt == "compressed-tensors" and method == "gptq" and act_order and not static_groups:
        raise UsageError("compressed-tensors keeps groups in column order: act-order needs static groups here",
                         hint="drop --no-static-groups, or use --format gptq")
    skip = runtime_check(art, fmt, cfg, skip=skip_incompatible, log=log)
    skip = sorted(set(skip) | set(_mixer_linears(art, log)))
    out = Path(out) if out else default_output(model, path, method, cfg)
    recipe: dict[str, Any] = {"method": method, "bits": bits, "group_size": group_size, "sym": sym, "format": fmt}
    if skip:
        recipe["unquantized"] = skip
    if method != "rtn":
        recipe.update({"data": data, "field": field, "samples": samples, "seq_len": seq_len, "seed": seed})
    if method == "gptq":
        recipe.update({"damp": damp, "act_order": act_order, "static_groups": static_groups,
                       "true_sequential": true_sequential, "scale_search": scale_search})
    log(f"quantising {path.name} with {method} to {bits}-bit, group size {group_size}, "
        f"{'symmetric' if sym else 'asymmetric'}, {fmt} layout")
    t0 = time.perf_counter()
    stats = _write(art, model, path, out, cfg, gcfg, method, fmt, recipe, data=data, field=field, samples=samples,
                   seq_len=seq_len, seed=seed, force=force, trust_remote_code=trust_remote_code, log=log,
                   progress=progress, skip=set(skip))
    if skip:
        stats["unquantized_linears"] = len(skip)
    seconds = time.perf_counter() - t0
    log(f"wrote {out} in {seconds:.1f}s")
    result: dict[str, Any] = {"output": str(out), "method": method, "format": fmt, "bits": bits,
                              "group_size": group_size, "sym": sym, "seconds": round(seconds, 2), **stats}
    if report:
        from ..calib import report_domains

        result["report"] = quality_report(str(out), model, data=report_domains(data, eval_data), calib=data,
                                          field=field, ctx=eval_ctx, windows=eval_windows,
                                          stats=stats, log=log, progress=progress)
    return result


def _linear_prefixes(art, lm=None) -> list[str]:
    """Artifact tensor prefixes (name without .weight) of the 2-D weights inside decoder layers."""
    from ..arch.names import layer_index

    return [n[: -len(".weight")] for n, t in art.tensors.items()
            if n.endswith(".weight") and len(t.shape) == 2 and layer_index(n) is not None]


def _mixer_linears(art, log: Log = _nolog) -> list[str]:
    """Linears of convolution / state-space mixers (LFM2's short convs, Nemotron-H's Mamba-2): kept float."""
    from ..arch import layer_kinds, mixer_filter

    in_mixer = mixer_filter(art.config)
    out = [p for p in _linear_prefixes(art) if in_mixer(p)]
    if out:
        kinds = " and ".join(sorted(set(layer_kinds(art.config) or ()) - {"attention", "mlp"}))
        log(f"leaving {len(out)} linear(s) of the {kinds} mixers unquantised: their outputs feed a recurrence "
            "that GPTQ/AWQ's per-layer error model does not see; attention and MLP linears are quantised")
    return out


def runtime_check(art, fmt: str, cfg, *, skip: bool = False, log: Log = _nolog) -> list[str]:
    """Refuse (exit 2) a grid the format's runtime cannot load, before any work (see io.runtimes);
    with ``skip``, the linears to leave unquantised instead."""
    from ..io import runtimes

    if (art.config or {}).get("slmctl_per_layer"):
        raise UsageError(f"{art.path}: per-layer widths (slmctl_per_layer) cannot be quantised to --format "
                         f"{fmt}: {runtimes.RUNTIMES[fmt]} builds every layer from config.json's single "
                         "width, so it could not load the result",
                         hint="export it to GGUF (slmctl export MODEL --format gguf --outtype q4_0): "
                              "llama.cpp's deci architecture runs per-layer widths")
    linears = {p: tuple(art.tensors[p + ".weight"].shape) for p in _linear_prefixes(art)}
    return runtimes.refuse_or_skip(fmt, cfg.bits, cfg.group_size, linears, skip=skip, log=log)


def _write(art, ref, path, out, cfg, gcfg, method, fmt, recipe, *, data, field, samples, seq_len, seed, force,
           trust_remote_code, log, progress, skip=frozenset()) -> dict[str, Any]:
    from ..io.hf_folder import hf_folder
    from ..io.quantized_formats import ct_config, ct_tensors, gptq_config, gptq_tensors
    from ..io.runtimes import ignore_entries

    # asymmetric GPTQ layout: gptq_v2 zero points (see io.quantized_formats), symmetric: v1
    pack = functools.partial(gptq_tensors, v2=not cfg.sym) if fmt == "gptq" else ct_tensors
    stats = {"quantized_linears": 0, "quantized_params": 0, "quantized_bytes": 0}
    rec, finish = provenance.input_record_later(ref, path, art)  # hashed while the model is quantised
    inputs = [rec]
    losses: list[float] = []
    windows = lm = None
    if method != "rtn":
        from ..layerwise import LayerwiseModel

        lm = LayerwiseModel(art, trust_remote_code=trust_remote_code, spill_dir=Path(out).parent, log=log)
        tok = lm.tokenizer()
        windows, info = calibration_windows(tok, data=data, field=field, samples=samples, seq_len=seq_len,
                                            seed=seed, log=log)
        inputs.append({"ref": info["data"], "role": "calibration", "sha256": info["sha256"], "windows": len(windows),
                       "seq_len": seq_len, "calibration": info})
        log(f"calibration: {len(windows)} window(s) of {seq_len} tokens from {info['data']}"
            + (" (chat rendered through the tokenizer's template)" if info["chat_template"] else ""))
    prov = provenance.build("quantize", recipe, inputs)
    qconf = (gptq_config(cfg, desc_act=gcfg.act_order and not gcfg.static_groups and method == "gptq",
                         static_groups=gcfg.static_groups, true_sequential=gcfg.true_sequential, damp=gcfg.damp,
                         method=method, v2=not cfg.sym)
             if fmt == "gptq" else ct_config(cfg, method=method,
                                              actorder="static" if method == "gptq" and gcfg.act_order else None))
    if skip:  # kept float: compressed-tensors `ignore` names, GPTQModel negative `dynamic` rules
        if fmt == "gptq":
            qconf["dynamic"] = {k: {} for k in ignore_entries(fmt, sorted(skip))}
        else:
            qconf["ignore"] = [*qconf["ignore"], *ignore_entries(fmt, sorted(skip))]
    qc_json = json.loads(json.dumps(qconf))

    def add_packed(w, prefix, res):
        for n, t in pack(prefix, res).items():
            w.add(n, t)
            if not n.endswith(".bias"):
                stats["quantized_bytes"] += t.numel() * t.element_size()
        stats["quantized_linears"] += 1
        stats["quantized_params"] += res.q.numel()
        if "loss" in res.info:
            losses.append(res.info["loss"])

    config = dict(art.config)
    config["quantization_config"] = qc_json
    with hf_folder(out, src_dir=art.path, config=config, prov=prov, force=force, finish=finish) as w:
        if method == "rtn":
            _rtn_stream(art, w, cfg, add_packed, progress, skip)
        else:
            _layerwise(art, lm, windows, w, cfg, gcfg, method, add_packed, log, progress, skip)
    if losses:
        stats["gptq_loss"] = sum(losses)
    if lm is not None:
        stats["device"] = lm.device_report()
    return stats


def _rtn_stream(art, w, cfg, add_packed, progress, skip=frozenset()) -> None:
    """RTN without building the model: one tensor in memory at a time (``skip``: prefixes kept float)."""
    from ..methods.quantize.common import rtn

    prefixes = set(_linear_prefixes(art)) - set(skip)
    names = list(art.tensors)
    for name in (progress(names, desc="tensors") if progress else names):
        prefix = name[: -len(".weight")] if name.endswith(".weight") else None
        if prefix in prefixes:
            bias = art.tensors.get(prefix + ".bias")
            add_packed(w, prefix, rtn(art.tensors[name].load().float(), cfg,
                                      bias.load() if bias is not None else None))
        elif name.endswith(".bias") and name[: -len(".bias")] in prefixes:
            continue  # written with its weight
        else:
            w.add(name, art.tensors[name].load())


def _layerwise(art, lm, windows, w, cfg, gcfg, method, add_packed, log, progress, skip=frozenset()) -> None:
    """GPTQ/AWQ one decoder layer at a time: the layer's tensors are written as soon as it is done."""
    from ..layerwise import iter_layers
    from ..methods.quantize.common import QUANTIZERS

    fn = QUANTIZERS.get(method)
    layer_names = set()
    for i in range(lm.n_layers):
        layer_names.update(lm.layer_tensor_names(i).values())
    for name in art.tensors:  # embeddings, final norm, LM head: as they are
        if name not in layer_names:
            w.add(name, art.tensors[name].load())
    for step in iter_layers(lm, windows, capture=False, progress=progress):
        names = lm.linear_names(step.idx)
        mapping = lm.layer_tensor_names(step.idx)
        # linears kept float: GPTQ leaves them out; AWQ still scales them with their group (the fold
        # into the norm changes their input too) but does not quantise them
        keep = {n for n in names if mapping[f"{n}.weight"][: -len(".weight")] in skip}
        t = time.perf_counter()
        results = fn(step.layer, cfg, names=[n for n in names if method == "awq" or n not in keep], step=step,
                     gptq=gcfg, log=log, keep_float=keep)
        done = set()
        for lin, res in results.items():
            src = mapping[f"{lin}.weight"]
            add_packed(w, src[: -len(".weight")], res)
            done.update({f"{lin}.weight", f"{lin}.bias"})
        sd = step.layer.state_dict()
        for pname, src in mapping.items():
            if pname not in done:
                t_src = art.tensors[src]
                w.add(src, sd[pname].to(_dtype(t_src.dtype)))
        log(f"layer {step.idx + 1}/{lm.n_layers}: {len(results)} linears in {time.perf_counter() - t:.1f}s")
        del results, sd  # the codes are written: not held while the next layer is quantised


def _dtype(st_dtype: str):
    import torch

    from ..io.safetensors import DTYPES

    return getattr(torch, DTYPES[st_dtype][1]) if st_dtype in DTYPES else torch.float32
