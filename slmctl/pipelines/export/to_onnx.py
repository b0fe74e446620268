"""Export to ONNX with torch.onnx.export (dynamo), verified against PyTorch with onnxruntime.

Causal LMs get the layout Optimum's ORTModelForCausalLM and onnxruntime-genai load:
inputs ``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.N.key|value``;
outputs ``logits``, ``present.N.key|value``; batch, sequence and past axes dynamic.
Encoders (BERT/MiniLM family) get ``input_ids``, ``attention_mask``, ``token_type_ids`` ->
``last_hidden_state`` (feature extraction) or ``logits`` (sequence classification).

Every export is run through onnxruntime and compared with PyTorch before it is renamed into place:
a mismatch is an error (exit 1), never a silent success.
Reference: https://pytorch.org/docs/stable/onnx_dynamo.html
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from pathlib import Path

from ... import provenance
from .onnx_graph import _longrope_in_graph, _name_dims, _onnx_attention_for, _optimize, _rsqrt_as_div
from .onnx_verify import (DECODE_STEPS, ExportMismatch, _prompt_ids, check, compare_decoder,  # noqa: F401
                          compare_encoder, reference_decoder, reference_encoder)
from .formats import EXPORTERS
from ...errors import InputError, UnsupportedError, UsageError

OPSET = 18
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet")


# ---------------------------------------------------------------- kinds
def model_kind(config: dict) -> str:
    """``decoder`` for causal LMs, ``encoder`` for BERT-like models."""
    archs = config.get("architectures") or []
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return "decoder"
    if config.get("model_type") in ENCODER_TYPES:
        return "encoder"
    if config.get("is_decoder") is False or config.get("is_encoder_decoder"):
        raise UnsupportedError(f"model_type {config.get('model_type')!r} ({', '.join(archs) or 'no architectures'}) "
                               "is not a causal LM or a BERT-like encoder")
    return "decoder"


@contextlib.contextmanager
def _quiet_torch_onnx():
    """torch.onnx prints registration warnings and a progress report; slmctl reports progress itself."""
    if os.environ.get("SLMCTL_DEBUG") == "1":
        yield
        return
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "torch._export")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                yield
    finally:
        for n, lvl in saved.items():
            logging.getLogger(n).setLevel(lvl)


# ---------------------------------------------------------------- decoder


def _decoder_wrapper(model, n_layers: int):
    """A module with flat tensor inputs/outputs around an HF causal LM and its DynamicCache."""
    import torch
    from transformers import DynamicCache

    class CausalLMWithPast(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, *past):
            # a full (non-sliding) layer per block: sliding-window models get their window from the mask,
            # so the graph stays one shape for every layer
            cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(n_layers)])
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=True)
            presents = []
            for layer in out.cache.layers:
                presents += [layer.keys, layer.values]
            return (out.logits, *presents)

    return CausalLMWithPast(model)


def _kv_shape(model) -> tuple[int, int]:
    """(kv heads, head size) as the model's own cache stores them."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.zeros((1, 2), dtype=torch.long), use_cache=True)
    k = out.cache.layers[0].keys
    return int(k.shape[1]), int(k.shape[3])


def export_decoder(model, path: Path, *, dtype, opset: int, external_data: bool, metadata: dict[str, str]) -> list[Path]:
    import torch
    from torch.export import Dim

    from ...io.onnx_writer import save_program

    n_layers = model.config.get_text_config().num_hidden_layers
    heads, head_dim = _kv_shape(model)
    model = model.to(dtype)
    wrap = _decoder_wrapper(model, n_layers).eval()
    # example sizes above 1 so torch.export does not specialise any dynamic axis
    b, s, p = 2, 3, 4
    ids = torch.zeros((b, s), dtype=torch.long)
    mask = torch.ones((b, p + s), dtype=torch.long)
    pos = torch.arange(p, p + s).unsqueeze(0).expand(b, s).contiguous()
    past = tuple(torch.zeros((b, heads, p, head_dim), dtype=dtype) for _ in range(2 * n_layers))
    batch, seq, past_len = Dim("batch"), Dim("sequence_length"), Dim("past_sequence_length")
    shapes = ({0: batch, 1: seq}, {0: batch, 1: Dim.AUTO}, {0: batch, 1: seq},
              tuple({0: batch, 2: past_len} for _ in range(2 * n_layers)))
    in_names = ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    out_names = ["logits"] + [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    with _quiet_torch_onnx(), torch.no_grad(), _onnx_attention_for(model), _longrope_in_graph(model):
        try:
            prog = torch.onnx.export(wrap, (ids, mask, pos, *past), dynamo=True, opset_version=opset,
                                     input_names=in_names, output_names=out_names, dynamic_shapes=shapes,
                                     optimize=False, verbose=False, report=False)
            _optimize(prog.model)
        except Exception as exc:  # torch.export raises many kinds
            raise UnsupportedError(f"torch.onnx.export failed for {type(model).__name__}: "
                                   f"{str(exc).strip().splitlines()[0][:300]}",
                                   hint="rerun with SLMCTL_DEBUG=1 for the exporter's report") from None
    _name_dims(prog, {"attention_mask": {1: "total_sequence_length"}})
    _rsqrt_as_div(prog.model)
    for k, v in metadata.items():
        prog.model.metadata_props[k] = v
    return save_program(prog, path, external_data=external_data)


# ---------------------------------------------------------------- encoder
def _encoder_wrapper(model, with_types: bool):
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kw = {"token_type_ids": token_type_ids} if with_types else {}
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, **kw)
            return out.logits if hasattr(out, "logits") else out.last_hidden_state

    return Encoder(model)


def export_encoder(model, path: Path, *, dtype, opset: int, external_data: bool, metadata: dict[str, str]) -> list[Path]:
    import torch
    from torch.export import Dim

    from ...io.onnx_writer import save_program

    with_types = getattr(model.config, "type_vocab_size", 0) > 0
    model = model.to(dtype)
    wrap = _encoder_wrapper(model, with_types).eval()
    b, s = 2, 5
    args = [torch.ones((b, s), dtype=torch.long), torch.ones((b, s), dtype=torch.long)]
    names = ["input_ids", "attention_mask"]
    batch, seq = Dim("batch"), Dim("sequence_length")
    shapes = [{0: batch, 1: seq}, {0: batch, 1: seq}]
    if with_types:
        args.append(torch.zeros((b, s), dtype=torch.long))
        names.append("token_type_ids")
        shapes.append({0: batch, 1: seq})
    out_name = "logits" if hasattr(model, "classifier") else "last_hidden_state"
    with _quiet_torch_onnx(), torch.no_grad():
        try:
            prog = torch.onnx.export(wrap, tuple(args), dynamo=True, opset_version=opset, input_names=names,
                                     output_names=[out_name], dynamic_shapes=tuple(shapes), optimize=False,
                                     verbose=False, report=False)
            _optimize(prog.model)
        except Exception as exc:
            raise UnsupportedError(f"torch.onnx.export failed for {type(model).__name__}: "
                                   f"{str(exc).strip().splitlines()[0][:300]}",
                                   hint="rerun with SLMCTL_DEBUG=1 for the exporter's report") from None
    for k, v in metadata.items():
        prog.model.metadata_props[k] = v
    return save_program(prog, path, external_data=external_data)


# ---------------------------------------------------------------- the exporter
def _refuse_recurrent(config: dict, folder: Path) -> None:
    """Hybrids carry convolution / state-space states between steps, which the past_key_values layout
    (and onnxruntime-genai's config) has no place for: say so before loading anything."""
    from ...arch import layer_kinds

    kinds = set(layer_kinds(config) or ()) - {"attention", "mlp"}
    if kinds:
        arch = (config.get("architectures") or [config.get("model_type")])[0]
        raise UnsupportedError(f"{folder}: {arch} ({' + '.join(sorted(kinds))} blocks beside attention) is not "
                               "supported for ONNX yet: its recurrent states do not fit the KV-cache layout "
                               "onnxruntime-genai and Optimum read",
                               hint="export it to GGUF instead (slmctl export MODEL --format gguf): llama.cpp runs it")


def _load_model(folder: Path, kind: str, config: dict):
    import transformers

    from ...hf import load_model

    if kind == "decoder":
        cls = transformers.AutoModelForCausalLM
    else:
        archs = config.get("architectures") or []
        cls = transformers.AutoModelForSequenceClassification if any(
            a.endswith("ForSequenceClassification") for a in archs) else transformers.AutoModel
    return load_model(folder, cls=cls, hint="export from an HF folder with config.json and safetensors weights")


def _param_bytes(model, itemsize: int) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel() * itemsize
    return n


@EXPORTERS.register("onnx")
def export_onnx(art, ref: str, out: Path, *, dtype: str, max_shard_size, force: bool, log, progress=None,
                opset: int = OPSET, external_data: bool | None = None, bits: int | None = None,
                method: str | None = None, data=None) -> Path:
    """An ONNX folder (model.onnx, tokenizer, config), run by onnxruntime and checked against PyTorch;
    with ``bits`` (4: MatMulNBits, 8: dynamic int8) that export quantised by pipelines/quantize_onnx."""
    if bits:
        from ..quantize_onnx import export_quantized

        return export_quantized(export_onnx, art, ref, out, bits=bits, method=method,
                                data=data, force=force, log=log, dtype=dtype,
                                max_shard_size=max_shard_size, progress=progress, opset=opset,
                                external_data=external_data)
    import torch

    from ...io.artifact import PROVENANCE_FILE, PROVENANCE_KEY, SIDE_FILES
    from ...io.atomic import atomic_path
    from ...io.convert import write_provenance_file
    from ...io.onnx_writer import EXTERNAL_DATA_THRESHOLD, copy_side_files

    if max_shard_size:
        raise UsageError("--max-shard-size does not apply to ONNX (weights past 2 GB go to one model.onnx.data)")
    if dtype == "bfloat16":
        raise UnsupportedError("bfloat16 ONNX models do not run on onnxruntime's CPU provider",
                               hint="use --dtype float32 (default) or float16")
    if opset < 18:
        raise UsageError(f"opset {opset} is too old", hint="use 18 or newer")
    if art.format == "onnx":
        raise UsageError(f"{art.path} is already ONNX", hint="quantize it with: slmctl quantize MODEL.onnx --bits 8")
    if art.format == "gguf":
        raise UnsupportedError(f"{art.path}: export a GGUF to ONNX through an HF folder",
                               hint="slmctl export MODEL.gguf --format hf -o DIR, then slmctl export DIR --format onnx")
    if art.config is None or art.format != "hf":
        raise InputError(f"{art.path}: ONNX export needs an HF folder (config.json with safetensors weights)",
                         hint="point at the model folder rather than a bare .safetensors file")
    folder = art.path
    kind = model_kind(art.config)
    _refuse_recurrent(art.config, folder)
    dt_name = "float32" if dtype == "auto" else dtype
    target = getattr(torch, dt_name)
    t0 = time.perf_counter()
    log(f"loading {folder.name} ({kind}) with transformers")
    model = _load_model(folder, kind, art.config)
    nbytes = _param_bytes(model, torch.tensor([], dtype=target).element_size())
    ext = external_data if external_data is not None else nbytes > EXTERNAL_DATA_THRESHOLD
    if kind == "decoder":
        vocab = model.config.get_text_config().vocab_size
        prompt = _prompt_ids(folder, vocab)
        ref_out = reference_decoder(model, prompt)
    else:
        ref_out = reference_encoder(model, folder)
    recipe = {"format": "onnx", "kind": kind, "dtype": dt_name, "opset": opset, "external_data": ext}
    prov = provenance.build("export", recipe, [provenance.input_record(ref, art.path, art)])
    meta = {PROVENANCE_KEY: provenance.dumps(prov), "slmctl.kind": kind}
    with atomic_path(out, force=force, is_dir=True) as tmp:
        log(f"exporting with torch.onnx.export (dynamo, opset {opset}, {dt_name}"
            f"{', external data' if ext else ''})")
        exporter = export_decoder if kind == "decoder" else export_encoder
        exporter(model, tmp / "model.onnx", dtype=target, opset=opset, external_data=ext, metadata=meta)
        del model
        t_export = time.perf_counter() - t0
        log(f"verifying with onnxruntime against PyTorch ({'prompt + greedy decode' if kind == 'decoder' else 'batch of 2'})")
        if kind == "decoder":
            rep = compare_decoder(tmp / "model.onnx", ref_out)
            check(rep, dt_name, out)
            log(f"max abs logit diff: prompt {rep['max_abs_diff_prompt']:.3g}, {DECODE_STEPS} decode steps "
                f"{rep['max_abs_diff_decode']:.3g}; top-1 agreement {rep['top1_agreement_pct']:.1f}%; "
                f"greedy {rep['greedy_tokens']} tokens {'identical' if rep['greedy_identical'] else 'DIFFER'}")
        else:
            rep = compare_encoder(tmp / "model.onnx", ref_out)
            check(rep, dt_name, out)
            log(f"max abs output diff {rep['max_abs_diff_all']:.3g}")
        copy_side_files(folder, tmp, [n for n in SIDE_FILES])
        if kind == "decoder":  # onnxruntime-genai opens the folder with it (tokenizer files are the side files)
            from ...io.genai_config import write_genai_config

            write_genai_config(tmp, folder, art.config, tmp / "model.onnx")
        prov_file = dict(prov)
        prov_file["verification"] = rep
        prov_file["export_seconds"] = round(t_export, 2)
        write_provenance_file(tmp / PROVENANCE_FILE, prov_file)
    return out
