"""Quantize an ONNX model with onnxruntime's own quantisers (not rewritten here).

- ``bits=8``: dynamic int8 (``onnxruntime.quantization.quantize_dynamic``): int8 weights, activations
  quantised on the fly; gated-MLP down projections stay in float (``keep_down_proj``), since their
  outlier inputs defeat per-tensor activation scales (+65 % perplexity on SmolLM2-135M without, +3.9 % with). https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html
- ``bits=4``: weight-only 4-bit ``MatMulNBits`` (``MatMulNBitsQuantizer``) with one of its algorithms:
  ``default`` (blockwise affine RTN, built in), ``rtn`` and ``k_quant`` (onnxruntime's bundled
  neural-compressor code), ``hqq`` (half-quadratic), ``gptq`` (needs calibration text).
  https://onnxruntime.ai/docs/api/python/api_summary.html (onnxruntime.quantization.matmul_nbits_quantizer)

The output is a folder like the input (model.onnx beside its tokenizer and config), so
``slmctl eval OUT`` works on it like on any other artifact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from .. import provenance
from ..errors import UnsupportedError, UsageError

ALGORITHMS = ("default", "rtn", "k_quant", "hqq", "gptq")


def _nolog(msg: str) -> None:
    pass


@contextlib.contextmanager
def _quiet_ort():
    """onnxruntime's quantisers log every node at INFO/WARNING on the root logger."""
    if os.environ.get("SLMCTL_DEBUG") == "1":
        yield
        return
    import importlib
    import warnings

    root_level = logging.getLogger().level
    for mod in ("onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer"):
        with contextlib.suppress(ImportError):
            # matmul_nbits_quantizer calls logging.basicConfig(level=INFO) on import: import first, then quieten
            importlib.import_module(mod)
    names = [n for n in logging.root.manager.loggerDict if n.startswith("onnxruntime")]
    saved = {n: logging.getLogger(n).level for n in names}
    saved[""] = root_level
    for n in saved:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        # the bundled neural-compressor code prints a progress bar on stdout, which carries only the result
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, lvl in saved.items():
            logging.getLogger(n).setLevel(lvl)


def gated_mlp_outputs(src: Path) -> list[str]:
    """MatMul nodes fed by the product of two activations: the down projection of a gated MLP
    (act(gate) * up). Their inputs carry the large outlier channels that per-tensor activation
    quantisation cannot represent, so dynamic int8 keeps them in float."""
    import onnx

    m = onnx.load(str(src), load_external_data=False)
    consts = {i.name for i in m.graph.initializer}
    consts |= {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in m.graph.node for o in n.output}
    out = []
    for n in m.graph.node:
        if n.op_type != "MatMul" or len(n.input) < 2 or n.input[1] not in consts:
            continue
        p = producer.get(n.input[0])
        if p is not None and p.op_type == "Mul" and not any(i in consts for i in p.input):
            out.append(n.name)
    return out


def _int8(src: Path, dst: Path, *, per_channel: bool, external: bool, keep_down_proj: bool = True) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = gated_mlp_outputs(src) if keep_down_proj else []
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     op_types_to_quantize=["MatMul", "Gemm"], use_external_data_format=external,
                     nodes_to_exclude=exclude, extra_options={"MatMulConstBOnly": True})
    return {"method": "quantize_dynamic", "weight_type": "QInt8", "per_channel": per_channel,
            "op_types": ["MatMul", "Gemm"], "kept_in_float": len(exclude)}


def _calib_reader(src: Path, calib: str | None, ctx: int, samples: int):
    """GPTQ's calibration data: windows of the calibration text, fed with an empty KV cache."""
    import numpy as np

    from ..calib import DEFAULT_CALIB, draw_windows
    from ..eval.backend_onnx import OrtCausalLM
    from ..eval.backends import load_tokenizer
    from ..io.artifact import open_artifact

    art = open_artifact(src.parent)
    tok = load_tokenizer(art)
    wins, _ = draw_windows(tok, calib or DEFAULT_CALIB, n=samples, ctx=ctx, seed=0, purpose="calib")
    lm = OrtCausalLM(src)
    feeds = []
    for w in wins:
        f = {"input_ids": np.asarray([w], dtype=np.int64)}
        names = set(lm.inputs)
        if "attention_mask" in names:
            f["attention_mask"] = np.ones((1, len(w)), dtype=np.int64)
        if "position_ids" in names:
            f["position_ids"] = np.arange(len(w), dtype=np.int64)[None]
        f.update(lm.empty_past(1))
        feeds.append(f)
    del lm

    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

        def rewind(self):
            self.it = iter(feeds)

    return Reader()


def _int4(src: Path, dst: Path, *, algo: str, block_size: int, symmetric: bool, accuracy_level: int | None,
          external: bool, calib: str | None, calib_ctx: int, calib_samples: int) -> dict[str, Any]:
    from onnxruntime.quantization import matmul_nbits_quantizer as mnb

    if algo == "default":
        cfg = mnb.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric,
                                               accuracy_level=accuracy_level, bits=4)
    elif algo == "hqq":
        cfg = mnb.HQQWeightOnlyQuantConfig(block_size=block_size, bits=4)
    elif algo == "rtn":
        cfg = mnb.RTNWeightOnlyQuantConfig()
    elif algo == "k_quant":
        cfg = mnb.KQuantWeightOnlyQuantConfig()
    elif algo == "gptq":
        cfg = mnb.GPTQWeightOnlyQuantConfig(calibration_data_reader=_calib_reader(src, calib, calib_ctx, calib_samples),
                                            block_size=block_size)
    else:
        raise UsageError(f"unknown ONNX 4-bit algorithm {algo!r}", hint="valid: " + ", ".join(ALGORITHMS))
    q = mnb.MatMulNBitsQuantizer(str(src), bits=4, block_size=block_size, is_symmetric=symmetric,
                                 accuracy_level=accuracy_level, algo_config=cfg)
    q.process()
    model = q.model.model if hasattr(q.model, "model") else q.model
    from ..io.onnx_writer import save_model

    save_model(model, dst, external_data=external or None)
    return {"method": "MatMulNBitsQuantizer", "algorithm": algo, "block_size": block_size, "symmetric": symmetric,
            "accuracy_level": accuracy_level}


def _count_ops(path: Path) -> dict[str, int]:
    import collections

    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return dict(collections.Counter(n.op_type for n in m.graph.node if n.op_type in
                                    ("MatMul", "MatMulNBits", "MatMulInteger", "DynamicQuantizeLinear",
                                     "DynamicQuantizeMatMul", "Gemm", "GatherBlockQuantized")))


def parse_qtype(qtype: str | None, bits: int | None, algo: str) -> tuple[int, str]:
    """``--type`` for ONNX inputs: int8, int4, or a 4-bit algorithm name (default, rtn, k_quant, hqq, gptq)."""
    if qtype is None:
        return (bits or 4), algo
    q = qtype.lower().replace("-", "_")
    if q in ("int8", "qint8", "dynamic_int8"):
        return 8, algo
    if q in ("int4", "matmulnbits", "q4"):
        return 4, algo
    if q in ALGORITHMS:
        return 4, q
    if q.startswith("int4_") and q[5:] in ALGORITHMS:
        return 4, q[5:]
    raise UsageError(f"unknown ONNX quantisation type {qtype!r}",
                     hint="valid: int8, int4, or a 4-bit algorithm: " + ", ".join(ALGORITHMS))


def default_output(ref: str, path: Path, bits: int, algo: str) -> Path:
    """MODEL-int8 / MODEL-int4-<algo> beside a local input, else in the current folder."""
    tag = "int8" if bits == 8 else f"int4-{algo}"
    local = Path(ref).expanduser()
    if local.exists():
        base = local.resolve()
        if base.is_file():
            base = base.parent if base.suffix == ".onnx" and base.name == "model.onnx" else base.with_suffix("")
        return base.parent / f"{base.name}-{tag}"
    return Path.cwd() / f"{path.name.removesuffix('.onnx')}-{tag}"


def quantize_onnx(src_ref: str, out: str | Path | None = None, bits: int | None = None, *, force: bool = False,
                  log: Callable[[str], None] = _nolog, qtype: str | None = None, algo: str = "default",
                  block_size: int = 32, symmetric: bool = True, accuracy_level: int | None = None,
                  per_channel: bool = False, keep_down_proj: bool = True, calib: str | None = None,
                  calib_ctx: int = 256, calib_samples: int = 16, **_: Any) -> Path:
    """Quantize an ONNX model: ``bits=8`` dynamic int8, ``bits=4`` weight-only MatMulNBits (``algo``).
    Writes a folder (model.onnx plus the input's tokenizer/config) or, when ``out`` ends in .onnx, one file."""
    bits, algo = parse_qtype(qtype, bits, algo)
    from ..io.resolve import load_artifact
    from ..io.artifact import PROVENANCE_FILE, PROVENANCE_KEY, SIDE_FILES
    from ..io.atomic import atomic_path
    from ..io.convert import write_provenance_file
    from ..io.onnx import model_file
    from ..io.onnx_writer import EXTERNAL_DATA_THRESHOLD, check_external_data, copy_side_files

    if bits not in (4, 8):
        raise UsageError(f"ONNX quantisation takes --bits 8 (dynamic int8) or 4 (MatMulNBits), not {bits}")
    if bits == 4 and algo not in ALGORITHMS:
        raise UsageError(f"unknown ONNX 4-bit algorithm {algo!r}", hint="valid: " + ", ".join(ALGORITHMS))
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        raise UnsupportedError("ONNX quantisation needs onnxruntime", hint="pip install 'onnxruntime>=1.22,<1.33'") from None
    art, path = load_artifact(src_ref, log=log)
    if art.format != "onnx":
        raise UsageError(f"{path} is not an ONNX model (format {art.format})",
                         hint="export it first: slmctl export MODEL --format onnx -o DIR")
    src = model_file(path)
    check_external_data(src)
    size = sum(f.stat().st_size for f in src.parent.iterdir() if f.is_file() and f.name.startswith(src.name))
    external = size > EXTERNAL_DATA_THRESHOLD
    out = Path(out) if out is not None else default_output(src_ref, path, bits, algo)
    single = out.suffix == ".onnx"
    if single and external:
        raise UsageError(f"{src} passes 2 GB, so its quantised weights need a .data file beside them",
                         hint="give a folder as --output")
    recipe = {"format": "onnx", "bits": bits, "algorithm": "dynamic_int8" if bits == 8 else algo}
    if bits == 4:
        recipe.update(block_size=block_size, symmetric=symmetric, accuracy_level=accuracy_level)
        if algo == "gptq":
            recipe.update(calib=calib or "sample:mix", calib_ctx=calib_ctx, calib_samples=calib_samples)
    else:
        recipe.update(per_channel=per_channel, keep_down_proj=keep_down_proj)
    prov = provenance.build("quantize", recipe, [provenance.input_record(src_ref, path, art)])
    t0 = time.perf_counter()
    log(f"quantising {src.name} to {'int8 (dynamic)' if bits == 8 else f'4-bit MatMulNBits ({algo})'} with onnxruntime")
    with atomic_path(out, force=force, is_dir=not single) as tmp:
        dst = tmp if single else tmp / "model.onnx"
        if single:
            dst = tmp.with_name(tmp.name + ".onnx")
        with _quiet_ort():
            try:
                if bits == 8:
                    details = _int8(src, dst, per_channel=per_channel, external=external,
                                    keep_down_proj=keep_down_proj)
                else:
                    details = _int4(src, dst, algo=algo, block_size=block_size, symmetric=symmetric,
                                    accuracy_level=accuracy_level, external=external, calib=calib,
                                    calib_ctx=calib_ctx, calib_samples=calib_samples)
            except (ValueError, KeyError, AssertionError, RuntimeError) as exc:
                raise UnsupportedError(f"{src}: onnxruntime could not quantise the model "
                                       f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                                       hint="rerun with SLMCTL_DEBUG=1 for onnxruntime's log") from None
        _add_metadata(dst, {PROVENANCE_KEY: provenance.dumps(prov)})
        if single:
            os.replace(dst, tmp)
            dst = tmp
        ops = _count_ops(dst)
        log(f"quantised in {time.perf_counter() - t0:.1f} s: {ops}")
        if not single:
            # genai_config.json too: the graph keeps its input/output names, so onnxruntime-genai runs the result
            copy_side_files(src.parent, tmp, (*SIDE_FILES, "genai_config.json"))
            doc = dict(prov)
            doc["details"] = details
            doc["ops"] = ops
            write_provenance_file(tmp / PROVENANCE_FILE, doc)
    if single:
        doc = dict(prov)
        doc["details"] = details
        write_provenance_file(out.with_name(out.name + ".slmctl.json"), doc)
    return out


def _add_metadata(path: Path, meta: dict[str, str]) -> None:
    """Put the provenance into metadata_props; only the graph file is rewritten (external data stays)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    props = {p.key: p for p in m.metadata_props}
    for k, v in meta.items():
        if k in props:
            props[k].value = v
        else:
            m.metadata_props.add(key=k, value=v)
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


def weight_stats(path: Path) -> dict[str, int]:
    """Quantised weight count and their bytes (packed weights, scales, zero points) in an onnxruntime-quantised
    graph, for the report's bits per weight: MatMulNBits (attributes K, N) and MatMulInteger (int8 weights)."""
    import numpy as np
    import onnx

    from ..io.onnx import model_file

    m = onnx.load(str(model_file(path)), load_external_data=False)
    init = {t.name: t for t in m.graph.initializer}

    def nbytes(name: str) -> int:
        t = init.get(name)
        if t is None:
            return 0
        return int(np.prod(t.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize

    params = qbytes = 0
    for n in m.graph.node:
        if n.op_type == "MatMulNBits":
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            params += int(a["K"]) * int(a["N"])
            qbytes += sum(nbytes(i) for i in n.input[1:4] if i)
        elif n.op_type == "MatMulInteger" and len(n.input) > 1 and n.input[1] in init:
            w = init[n.input[1]]
            params += int(np.prod(w.dims, dtype=np.int64))
            base = n.input[1].removesuffix("_quantized")
            qbytes += nbytes(n.input[1]) + nbytes(base + "_scale") + (nbytes(n.input[3]) if len(n.input) > 3 else 0)
    return {"quantized_params": params, "quantized_bytes": qbytes}


def quantize_onnx_verb(model: str, out: str | Path | None = None, *, bits: int | None = None, qtype: str | None = None,
                       report: bool = True, eval_data: str = "sample:shakespeare", eval_ctx: int = 512,
                       eval_windows: int = 16, force: bool = False, log: Callable[[str], None] = _nolog,
                       progress=None, **_: Any) -> dict[str, Any]:
    """``slmctl quantize MODEL.onnx``: quantise with onnxruntime, then the quality report every quantiser gives
    (perplexity of the input and the output on held-out text, KL, top-1 agreement, size, bits per weight)."""
    from .quantize import quality_report

    t0 = time.perf_counter()
    target = quantize_onnx(model, out, bits, qtype=qtype, force=force, log=log)
    nbits, algo = parse_qtype(qtype, bits, "default")
    stats = weight_stats(target)
    result: dict[str, Any] = {"output": str(target), "format": "onnx", "type": qtype, "bits": nbits,
                              "method": "quantize_dynamic" if nbits == 8 else f"MatMulNBits/{algo}",
                              "seconds": round(time.perf_counter() - t0, 2), **stats}
    if report:
        result["report"] = quality_report(str(target), model, data=eval_data, ctx=eval_ctx, windows=eval_windows,
                                          stats=stats, log=log, progress=progress)
    return result
