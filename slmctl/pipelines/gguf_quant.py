"""HF folder -> quantised GGUF written by slmctl itself, on llama.cpp's own block grids and type mixture.

Methods:

* ``rtn``: ggml's reference quantisers (what llama-quantize writes without an importance matrix,
  byte for byte);
* ``imatrix``: ggml's importance-weighted scale search with slmctl's importance matrix (what
  llama-quantize writes with ``--imatrix``, byte for byte given the same matrix);
* ``gptq``: the importance-weighted scales, then the codes chosen column by column with GPTQ's
  error feedback (slmctl.methods.quantize.gguf_gptq), one decoder layer at a time, each layer
  calibrated on the outputs of the layers already quantised.

The tensor types follow llama.cpp's mixture for the file type (slmctl.methods.quantize.gguf_mixture),
so ``--type q4_k_m`` gives the same tensor types and file size as llama-quantize's Q4_K_M.
"""

from __future__ import annotations

import dataclasses
import time
from os import PathLike
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError, UsageError

Log = Callable[[str], None]
METHODS = ("gptq", "imatrix", "rtn")


def check_imatrix(im: dict[str, np.ndarray], planned, source: str) -> None:
    """An importance matrix must belong to this model: every entry names a tensor of it, with one value per column."""
    cols = {p.gguf: p.shape[-1] for p in planned if len(p.shape) >= 2}
    for name in sorted(im):
        if name not in cols:
            raise InputError(f"importance matrix {source}: {name!r} is not a tensor of this model",
                             hint="the matrix was computed for another model; recompute it with --data")
        if np.asarray(im[name]).size != cols[name]:
            raise InputError(f"importance matrix {source}: {name} has {np.asarray(im[name]).size} values, "
                             f"the model's tensor has {cols[name]} columns",
                             hint="the matrix was computed for another model; recompute it with --data")
    for p in planned:
        if p.gguf.startswith("blk.") and p.gtype not in ("f32", "f16", "bf16") and p.gguf not in im:
            raise InputError(f"importance matrix {source}: no entry for {p.gguf}",
                             hint="the matrix was computed for another model; recompute it with --data")


class GGUFQuant:
    """Chooses each tensor's type (llama.cpp's mixture) and produces its blocks with ``method``."""

    def __init__(self, art, ftype: str, method: str, *, importance: dict[str, np.ndarray] | None = None,
                 windows: list[list[int]] | None = None, lm=None, damp: float = 0.01, act_order: bool = True,
                 imatrix_source: str = "", tensor_type=(), types_from: str | PathLike | None = None,
                 log: Log = lambda m: None, progress=None):
        if method not in METHODS:
            raise UsageError(f"unknown GGUF quantisation method {method!r}", hint="valid: " + ", ".join(METHODS))
        self.art, self.ftype, self.method = art, ftype, method
        self.importance, self.windows, self.lm = importance, windows, lm
        self.damp, self.act_order = damp, act_order
        self.imatrix_source = imatrix_source
        self.rules = tensor_type
        self.types_from = types_from
        self.log, self.progress = log, progress
        self.mixture: dict[str, str] = {}
        self.stats: dict[str, Any] = {"seconds_layers": 0.0}

    # ------------------------------------------------------------ types
    def retype(self, planned, spec, cfg) -> None:
        from ..methods.quantize.gguf_mixture import model_info, override_types, reference_types, tensor_types

        q = [p for p in planned if p.gtype not in ("f32",)]
        types = tensor_types([(p.gguf, p.shape) for p in q], self.ftype, model_info(cfg, spec.gguf_arch),
                             has_imatrix=self.method != "rtn")
        if self.rules or self.types_from:
            ref = reference_types(self.types_from)[0] if self.types_from else None
            changed = override_types([(p.gguf, p.shape) for p in q], types, rules=self.rules, reference=ref,
                                     reference_name=str(self.types_from))
            counts: dict[str, int] = {}
            for _, got in changed.values():
                counts[got] = counts.get(got, 0) + 1
            what = " and ".join(w for w, on in (("--tensor-types-from", self.types_from), ("--tensor-type", self.rules))
                                if on)
            self.log(f"{len(changed)} tensor(s) typed by {what}: "
                     + (", ".join(f"{n} {t.upper()}" for t, n in sorted(counts.items())) or "no change"))
        falls: dict[tuple[str, str], list[str]] = {}
        for p in q:
            if p.gguf in types:
                t, was = types[p.gguf]
                p.gtype = t
                if was:
                    falls.setdefault((was, t), []).append(f"{p.gguf} ({p.shape[-1]} columns)")
        for (was, t), names in falls.items():
            self.log(f"{len(names)} tensor(s) have rows that do not fill {was.upper()}'s blocks, so they are "
                     f"{t.upper()}, as llama.cpp does: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}")
        if self.importance is not None:
            check_imatrix(self.importance, planned, self.imatrix_source)
        self.mixture = {p.gguf: p.gtype for p in planned}
        # decoder-layer weights GPTQ can take: stored as HF has them up to a row permutation
        self._by_hf = {p.hf: p for p in planned if p.bid is not None and p.hf and p.make is None
                       and not spec.transposed(p.hf) and spec.tensor_op(p.hf) is None}

    # ------------------------------------------------------------ data
    def tensors(self, planned, spec, cfg, load) -> Any:
        """Yield (planned tensor, its GGUF data) in file order."""
        from .export.gguf_build import _convert

        layered = self.method == "gptq"
        gen = self._layers(spec, cfg) if layered else None
        current: dict[str, np.ndarray] = {}
        bid = None
        for p in planned:
            if layered and p.bid is not None and p.bid != bid:
                bid = p.bid
                current = next(gen)
            if p.make is not None:
                yield p, p.make()
            elif p.hf in current:
                yield p, current[p.hf]
            elif p.gtype in _KINDS:
                a = _convert(load(p.hf), dataclasses.replace(p, gtype="f32"), spec, cfg)
                qw = None if self.importance is None else self.importance.get(p.gguf)
                yield p, _quantize(p.gtype, a, qw)
            else:
                yield p, _convert(load(p.hf), p, spec, cfg)
        if gen is not None:
            gen.close()

    def _layers(self, spec, cfg):
        """Per decoder layer: {HF tensor name: GGUF blocks} of its linears, GPTQ on the grid, true-sequential."""
        import torch

        from ..layerwise import iter_layers
        from ..methods.quantize.gguf_gptq import gptq_blocks, prepare
        from ..methods.quantize.gguf_kquants import pack
        from ..methods.quantize.gptq import HessianAccumulator

        lm = self.lm
        for step in iter_layers(lm, self.windows, capture=False, progress=self.progress):
            t0 = time.perf_counter()
            mapping = lm.layer_tensor_names(step.idx)
            out: dict[str, np.ndarray] = {}
            for grp in step.groups():
                todo = [n for n in grp if self._planned_type(mapping.get(f"{n}.weight")) in _KINDS]
                if not todo:
                    continue
                acc = HessianAccumulator(step.layer.get_submodule(todo[0]).in_features)
                step.recapture([todo[0]], on_input=lambda n, x: acc.add(x), stop_early=True,
                               replayable=len(grp) == 1 and todo == grp)
                H = acc.result()
                prepared = prepare(H, damp=self.damp, act_order=self.act_order)
                for n in todo:
                    lin = step.layer.get_submodule(n)
                    hf = mapping[f"{n}.weight"]
                    p = self._by_hf[hf]
                    W = lin.weight.data.float().numpy()
                    blk = gptq_blocks(p.gtype, W, prepared=prepared)
                    deq = blk.values().reshape(W.shape)
                    with torch.no_grad():
                        lin.weight.data = torch.from_numpy(deq).to(lin.weight.dtype)
                    # the HF layout's rows -> GGUF's (q/k row permutation): whole rows of blocks move
                    packed = pack(blk).reshape(W.shape[0], -1)
                    out[hf] = _convert_rows(packed, p, spec, cfg)
            self.stats["seconds_layers"] += time.perf_counter() - t0
            self.log(f"layer {step.idx + 1}/{lm.n_layers}: GPTQ on {self.ftype.upper()}'s grids in "
                     f"{time.perf_counter() - t0:.1f}s")
            yield out

    def _planned_type(self, hf: str | None) -> str | None:
        p = self._by_hf.get(hf) if hf else None
        return p.gtype if p is not None else None


_KINDS = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")


def _quantize(kind: str, a: np.ndarray, qw) -> np.ndarray:
    """ggml's quantiser for a converted float32 tensor, a few rows at a time (temporaries stay small)."""
    from ..methods.quantize.gguf_kquants import quantize

    rows = a.reshape(-1, a.shape[-1])
    step = max(1, (1 << 18) // rows.shape[1])
    parts = [quantize(kind, rows[i:i + step], qw) for i in range(0, len(rows), step)]
    return np.concatenate(parts, axis=0).reshape(*a.shape[:-1], -1)


def _convert_rows(packed: np.ndarray, p, spec, cfg) -> np.ndarray:
    """The row reordering _convert applies to an HF weight (q/k permutation for llama.cpp's RoPE), on packed rows."""
    from ..arch import head_dim, permute_qk

    if spec.transposed(p.hf):
        raise InputError(f"{p.hf}: a transposed (Conv1D) weight cannot take GPTQ blocks", hint="use --method imatrix")
    if spec.permuted(p.hf):
        packed = permute_qk(packed, packed.shape[0] // head_dim(cfg))
    return np.ascontiguousarray(packed)


def normalise_ftype(t: str) -> str:
    from ..methods.quantize.gguf_mixture import FTYPES

    k = (t or "").lower()
    if k not in FTYPES:
        import difflib

        close = difflib.get_close_matches(k, list(FTYPES), n=1)
        raise UsageError(f"unknown GGUF type {t!r}", hint=(f"did you mean {close[0]!r}? " if close else "")
                         + "valid: " + ", ".join(FTYPES))
    return k


def layerwise_imatrix(lm, windows, progress=None) -> dict[str, np.ndarray]:
    """llama.cpp's importance matrix in one layer-by-layer pass: {GGUF name: mean squared input per column}.

    The layer engine's importance matrix (slmctl.pipelines.importance.imatrix_sums, the decoder layers'
    linears): hooks see the inputs of the forward that carries the hidden states to the next layer, no
    extra forward; q/k/v and gate/up share their input, so they get the same mean squares.
    """
    from .importance import imatrix_sums

    return {k: (s / n).numpy().astype(np.float32)
            for k, (s, n) in imatrix_sums(lm, windows, head=False, progress=progress).items() if n}


def to_gguf(art, ref: str, out, ftype: str, *, method: str | None, data=None, field: str = "text", samples: int = 32,
            seq_len: int = 512, seed: int = 0, imatrix=None, damp: float = 0.01, act_order: bool = True,
            force: bool = False, vocab_pre: str | None = None, trust_remote_code: bool = False, log: Log = lambda m: None,
            progress=None, verb: str = "quantize", tensor_type=(), types_from=None) -> dict[str, Any]:
    """Quantise an HF model to a GGUF file of llama.cpp file type ``ftype`` with ``method``; returns a summary.

    ``tensor_type``: ``PATTERN=TYPE`` rules over llama.cpp's mixture (the first regex found in a tensor's name
    decides its type); ``types_from``: a GGUF file of the same model whose tensor types are taken (then the rules).
    """

    from .. import provenance
    from ..io.atomic import atomic_path
    from ..io.convert import write_provenance_file
    from .export.gguf_build import write_gguf

    from ..methods.quantize.gguf_mixture import parse_tensor_types

    t = normalise_ftype(ftype)
    out = Path(out)
    rules = parse_tensor_types(tensor_type)
    if types_from is not None:
        _types_file(types_from)
    if method is None:
        method = "gptq" if data else ("imatrix" if imatrix else "rtn")
    if method not in METHODS:
        raise UsageError(f"unknown GGUF quantisation method {method!r}", hint="valid: " + ", ".join(METHODS))
    if method == "rtn" and (data or imatrix):
        raise UsageError("--method rtn uses no calibration: drop --data/--imatrix", hint="or use --method imatrix/gptq")
    if method == "gptq" and not data:
        raise UsageError("--method gptq needs calibration text (--data)", hint="e.g. --data sample:mix")
    if art.format not in ("hf", "safetensors") or art.config is None:
        raise InputError(f"{art.path}: slmctl quantises to GGUF from an HF folder", hint="or slmctl quantize MODEL.gguf --type T")
    if (art.config or {}).get("quantization_config"):
        raise InputError(f"{art.path}: the model is already quantised", hint="quantise the floating-point model")
    recipe: dict[str, Any] = {"format": "gguf", "outtype" if verb == "export" else "type": t, "method": method}
    inputs = [provenance.input_record(ref, art.path, art)]
    if tensor_type:
        recipe["tensor_type"] = [str(r) for r in tensor_type]
    if types_from is not None:
        recipe["tensor_types_from"] = str(types_from)
        inputs.append({**provenance.input_record(str(types_from), Path(types_from)), "role": "tensor types"})
    lm = windows = importance = None
    source = ""
    t0 = time.perf_counter()
    write_to = Path(imatrix) if imatrix and data and not Path(imatrix).is_file() else None
    if imatrix and write_to is None:
        from ..io.imatrix import read_imatrix

        importance, source = read_imatrix(Path(imatrix)), str(imatrix)
        recipe["imatrix"] = str(imatrix)
    if data and (method == "gptq" or importance is None):
        from ..layerwise import LayerwiseModel
        from ..calib import calibration_windows

        lm = LayerwiseModel(art, trust_remote_code=trust_remote_code, spill_dir=out.parent, log=log)
        windows, info = calibration_windows(lm.tokenizer(), data=data, field=field, samples=samples, seq_len=seq_len,
                                            seed=seed, log=log)
        inputs.append({"ref": info["data"], "role": "calibration", "sha256": info["sha256"], "windows": len(windows),
                       "seq_len": seq_len, "calibration": info})
        recipe.update({"data": info["data"], "samples": samples, "seq_len": seq_len, "seed": seed})
        log(f"calibration: {len(windows)} window(s) of {seq_len} tokens from {info['data']}")
        if method == "imatrix" or write_to is not None:
            t1 = time.perf_counter()
            computed = layerwise_imatrix(lm, windows, progress)
            log(f"importance matrix: {len(computed)} tensors in {time.perf_counter() - t1:.1f}s")
            if method == "imatrix":
                importance, source = computed, "computed"
            if write_to is not None:
                from ..io.imatrix import write_imatrix

                n = sum(len(w) for w in windows)
                write_imatrix(write_to, {k: (v * n, n) for k, v in computed.items()},
                              datasets=[str(info["data"])], chunk_size=seq_len, chunk_count=len(windows))
                log(f"importance matrix written to {write_to}")
    if method == "gptq":
        recipe.update({"damp": damp, "act_order": act_order})
    prov = provenance.build(verb, recipe, inputs)
    quant = GGUFQuant(art, t, method, importance=importance, windows=windows, lm=lm, damp=damp, act_order=act_order,
                      imatrix_source=source, tensor_type=rules, types_from=types_from, log=log, progress=progress)
    with atomic_path(out, force=force) as tmp:
        info = write_gguf(art, tmp, t, prov, vocab_pre=vocab_pre, log=log, progress=progress, quant=quant)
    write_provenance_file(out.with_name(out.name + ".slmctl.json"), prov)
    seconds = time.perf_counter() - t0
    log(f"GGUF {t.upper()} ({method}): {info['tensors']} tensors, {out.stat().st_size / 1e6:.1f} MB in {seconds:.1f}s")
    types: dict[str, int] = {}
    for g in quant.mixture.values():
        types[g] = types.get(g, 0) + 1
    return {"output": str(out), "format": "gguf", "type": t, "method": method, "seconds": round(seconds, 2),
            "bytes": out.stat().st_size, "tensor_types": types}


def quantize_verb(art, ref: str, path, out, *, qtype: str | None, method: str, data, field: str, samples: int,
                  seq_len: int, seed: int, damp: float, act_order: bool, report: bool, eval_data, eval_ctx: int,
                  eval_windows: int, force: bool, trust_remote_code: bool, log: Log, progress, tensor_type=(),
                  types_from=None) -> dict[str, Any]:
    """``slmctl quantize MODEL --format gguf --type T [--method gptq|imatrix|rtn]``: the file, then the quality report."""
    import re

    if not qtype and types_from is not None:  # the reference file's own file type
        qtype = reference_file_type(types_from)
        log(f"--type {qtype} (the file type of {types_from})")
    if not qtype:
        raise UsageError("--format gguf needs --type (a llama.cpp file type)", hint="e.g. --type q4_k_m")
    t = normalise_ftype(qtype)
    if method not in METHODS:
        raise UsageError(f"--method {method} does not apply to GGUF", hint="valid: " + ", ".join(METHODS))
    if out is None:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(path)).name).strip("-") or "model"
        out = Path(str(path)).parent / f"{stem}-{t.upper()}.gguf" if Path(ref).expanduser().exists() \
            else Path.cwd() / f"{stem}-{t.upper()}.gguf"
    res = to_gguf(art, ref, out, t, method=method, data=None if method == "rtn" else data, field=field,
                  samples=samples, seq_len=seq_len, seed=seed, damp=damp, act_order=act_order, force=force,
                  trust_remote_code=trust_remote_code, log=log, progress=progress, tensor_type=tensor_type,
                  types_from=types_from)
    if report:
        from ..calib import report_domains
        from ..eval.compare import quality_report

        stats = {"quantized_bytes": res["bytes"]}
        res["report"] = quality_report(res["output"], ref, data=report_domains(data, eval_data), calib=data,
                                       ctx=eval_ctx, windows=eval_windows, stats=stats, log=log, progress=progress)
    return res


def _types_file(path) -> Path:
    """The --tensor-types-from file, checked before any work."""
    if not Path(path).is_file():
        raise InputError(f"--tensor-types-from {path}: no such file", hint="give a GGUF file of the same model")
    return Path(path)


def reference_file_type(path) -> str:
    """The llama.cpp file type (q4_k_m, ...) a GGUF file says it is (``general.file_type``)."""
    from ..io.gguf_types import file_types
    from ..methods.quantize.gguf_mixture import FTYPES, reference_types

    _, ft = reference_types(_types_file(path))
    names = {v: k for k, v in file_types().items() if k in FTYPES}
    if ft not in names:
        raise UsageError(f"{path} does not name a file type slmctl writes (general.file_type {ft})",
                         hint="pass --type")
    return names[ft]


def quantize_gguf(src_gguf: str | PathLike, out: str | PathLike, outtype: str, imatrix=None, *,
                  force: bool = False, log: Log = lambda m: None, nthread: int | None = None,
                  allow_requantize: bool = False) -> Path:
    """Quantise a GGUF file (f32/f16/bf16) with llama.cpp's own quantiser (``llama_model_quantize``): what
    ``slmctl quantize MODEL.gguf --type T`` and GGUF -> GGUF export run.

    A source that is already quantised needs ``allow_requantize`` (quality drops twice).
    ``imatrix``: a path to an importance matrix (GGUF imatrix or legacy .dat written by slmctl or
    llama-imatrix) or a dict {tensor name: per-column mean squared activation}.
    """
    from ..io.atomic import atomic_path
    from ..io.gguf_types import file_types
    from ..io.libllama import model_quantize
    from .export.gguf_build import LLAMA_TYPES

    src, out = Path(src_gguf), Path(out)
    t = outtype.lower()
    if t not in LLAMA_TYPES:
        raise UsageError(f"unknown GGUF type {outtype!r}", hint="valid: " + ", ".join(LLAMA_TYPES))
    if not src.is_file():
        raise InputError(f"{src} does not exist")
    if isinstance(imatrix, (str, PathLike)):
        from ..io.imatrix import read_imatrix

        imatrix = read_imatrix(Path(imatrix))
    from .. import provenance
    from ..io.artifact import open_artifact
    from ..io.convert import write_provenance_file

    src_art = open_artifact(src)
    quantized = sorted({lt.dtype for lt in src_art.tensors.values()} - {"F32", "F16", "BF16"})
    if quantized and not allow_requantize:  # llama.cpp would only answer with a failure code
        raise InputError(f"{src} is already quantised ({', '.join(quantized)}): requantising it to {t.upper()} "
                         "loses quality twice", hint="quantise the float model, or pass --allow-requantize")
    prov = provenance.build("quantize", {"format": "gguf", "type": t, "imatrix": imatrix is not None,
                                         "allow_requantize": allow_requantize},
                            [provenance.input_record(str(src_gguf), src, src_art)])
    with atomic_path(out, force=force) as tmp:
        log(f"quantising {src.name} to {t.upper()} with llama.cpp{' and an importance matrix' if imatrix else ''}")
        model_quantize(src, tmp, file_types()[t], t, imatrix, nthread, allow_requantize)
    # llama.cpp writes the file itself, so the record goes beside it (inspect reads OUT.slmctl.json)
    write_provenance_file(out.with_name(out.name + ".slmctl.json"), prov)
    return out
