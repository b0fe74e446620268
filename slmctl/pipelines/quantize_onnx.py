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

#: gptq: slmctl's own (importance-searched block scales, GPTQ codes, calibrated); the others onnxruntime's
ALGORITHMS = ("gptq", "default", "rtn", "k_quant", "hqq", "ort_gptq")


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


def _calib_feeds(src: Path, calib: str | None, ctx: int, samples: int) -> list[dict]:
    """Calibration feeds: windows of the calibration text, each with an empty KV cache."""
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
    return feeds


def _calib_reader(src: Path, calib: str | None, ctx: int, samples: int):
    """onnxruntime's GPTQ's calibration data (a CalibrationDataReader over :func:`_calib_feeds`)."""
    feeds = _calib_feeds(src, calib, ctx, samples)

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
    elif algo == "ort_gptq":
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


def _weight_matmuls(model) -> list:
    """(node, weight initializer) of every MatMul whose second input is a 2-D float initializer."""
    import onnx

    init = {t.name: t for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in init:
            t = init[n.input[1]]
            if len(t.dims) == 2 and t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
                out.append((n, t))
    return out


def input_hessians(model, feeds: list[dict], names: list[str], log: Callable[[str], None] = _nolog) -> dict:
    """{tensor name: (2/n X^T X, n)} of the named activations over the calibration feeds, read from
    onnxruntime by adding them as graph outputs of the float model written to a temporary file (the float
    model's activations: one forward per window, not layer by layer)."""
    import tempfile

    import numpy as np
    import onnx
    import onnxruntime as ort

    from ..io.onnx_writer import save_model

    # the extra outputs go on the model itself while the probe is written (no second copy of the weights in memory)
    n_out = len(model.graph.output)
    have = {o.name for o in model.graph.output}
    for name in names:
        if name not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    acc: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="slmctl-hessians-") as d:
        path = Path(d) / "probe.onnx"
        try:
            save_model(model, path)
        finally:
            del model.graph.output[n_out:]
        log(f"reading {len(names)} MatMul inputs over {len(feeds)} calibration window(s) with onnxruntime")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the MatMul inputs named
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for f in feeds:
            outs = sess.run(names, f)
            for name, x in zip(names, outs):
                x = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
                h, n = acc.get(name, (0.0, 0))
                acc[name] = (h + x.T @ x, n + len(x))
    return {k: (2.0 * h / max(n, 1), n) for k, (h, n) in acc.items()}


def _int4_calibrated(src: Path, dst: Path, *, block_size: int, symmetric: bool, accuracy_level: int | None,
                     external: bool, calib: str | None, calib_ctx: int, calib_samples: int, damp: float = 0.01,
                     log: Callable[[str], None] = _nolog) -> dict[str, Any]:
    """slmctl's own 4-bit MatMulNBits: ggml's importance-weighted block scales (as for Q4_0/Q4_1) and GPTQ codes on
    them, from the Hessians of each MatMul's input over the calibration text (slmctl.methods.quantize.nbits)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from ..io.onnx_writer import save_model
    from ..methods.quantize.nbits import prepare_hessian, quantize_weight

    model = onnx.load(str(src))
    pairs = _weight_matmuls(model)
    inputs = list(dict.fromkeys(n.input[0] for n, _ in pairs))
    t0 = time.perf_counter()
    feeds = _calib_feeds(src, calib, calib_ctx, calib_samples)
    hess = input_hessians(model, feeds, inputs, log=log)
    log(f"Hessians of {len(inputs)} MatMul inputs from {len(feeds)} window(s) in {time.perf_counter() - t0:.1f} s")
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    prepared: dict[str, Any] = {}
    drop: set[str] = set()
    new_inits = []
    t1 = time.perf_counter()
    for node, t in pairs:
        B = numpy_helper.to_array(t)
        kdim, ndim = B.shape
        # a block wider than the row would be mostly padding: the smallest power of 2 >= K instead
        bs = min(block_size, max(16, 1 << (kdim - 1).bit_length()))
        kp = -(-kdim // bs) * bs
        a = node.input[0]
        if (a, kp) not in prepared:
            prepared[(a, kp)] = prepare_hessian(hess[a][0], kp, damp=damp)
        q = quantize_weight(B.T.astype(np.float32), block_size=bs, symmetric=symmetric, prepared=prepared[(a, kp)])
        base = t.name.replace("/", "_").replace(".", "_")
        sdt = np.float16 if B.dtype == np.float16 else np.float32
        names = [f"{base}_Q4", f"{base}_scales"]
        new_inits += [numpy_helper.from_array(q.packed, names[0]),
                      numpy_helper.from_array(q.scales.reshape(-1).astype(sdt), names[1])]
        if q.zero_points is not None:
            names.append(f"{base}_zp")
            new_inits.append(numpy_helper.from_array(q.zero_points.reshape(-1), names[2]))
        attrs = {"K": kdim, "N": ndim, "bits": 4, "block_size": bs}
        if accuracy_level is not None:
            attrs["accuracy_level"] = accuracy_level
        repl = onnx.helper.make_node("MatMulNBits", [a, *names], list(node.output), name=(node.name or base) + "_Q4",
                                     domain="com.microsoft", **attrs)
        node.CopyFrom(repl)
        uses[t.name] -= 1
        if uses[t.name] == 0:
            drop.add(t.name)
    kept = [t for t in model.graph.initializer if t.name not in drop]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + new_inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    log(f"{len(pairs)} MatMul weights to 4-bit (block {block_size}, {'symmetric' if symmetric else 'zero points'}) "
        f"with GPTQ in {time.perf_counter() - t1:.1f} s")
    save_model(model, dst, external_data=external or None)
    return {"method": "slmctl MatMulNBits (GPTQ on importance-searched block scales)", "algorithm": "gptq",
            "block_size": block_size, "symmetric": symmetric, "accuracy_level": accuracy_level,
            "calibration": {"data": calib or "sample:mix", "windows": len(feeds), "ctx": calib_ctx},
            "weights": len(pairs)}


def _count_ops(path: Path) -> dict[str, int]:
    import collections

    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return dict(collections.Counter(n.op_type for n in m.graph.node if n.op_type in
                                    ("MatMul", "MatMulNBits", "MatMulInteger", "DynamicQuantizeLinear",
                                     "DynamicQuantizeMatMul", "Gemm", "GatherBlockQuantized")))


def parse_qtype(qtype: str | None, bits: int | None, algo: str) -> tuple[int, str]:
    """``--type`` for ONNX inputs: int8, int4, or a 4-bit algorithm name (gptq: slmctl's own; default, rtn,
    k_quant, hqq, ort_gptq: onnxruntime's)."""
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
                  log: Callable[[str], None] = _nolog, qtype: str | None = None, algo: str = "gptq",
                  block_size: int = 32, symmetric: bool = True, accuracy_level: int | None = None,
                  per_channel: bool = False, keep_down_proj: bool = True, calib: str | None = None,
                  calib_ctx: int = 256, calib_samples: int = 16, damp: float = 0.01, **_: Any) -> Path:
    """Quantize an ONNX model: ``bits=8`` dynamic int8, ``bits=4`` weight-only MatMulNBits (``algo``: ``gptq``,
    slmctl's own calibrated 4-bit weights, or one of onnxruntime's quantisers).
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
        if algo in ("gptq", "ort_gptq"):
            recipe.update(calib=calib or "sample:mix", calib_ctx=calib_ctx, calib_samples=calib_samples)
        if algo == "gptq":
            recipe.update(damp=damp)
    else:
        recipe.update(per_channel=per_channel, keep_down_proj=keep_down_proj)
    prov = provenance.build("quantize", recipe, [provenance.input_record(src_ref, path, art)])
    t0 = time.perf_counter()
    who = "slmctl (calibrated)" if bits == 4 and algo == "gptq" else "onnxruntime"
    log(f"quantising {src.name} to {'int8 (dynamic)' if bits == 8 else f'4-bit MatMulNBits ({algo})'} with {who}")
    with atomic_path(out, force=force, is_dir=not single) as tmp:
        dst = tmp if single else tmp / "model.onnx"
        if single:
            dst = tmp.with_name(tmp.name + ".onnx")
        with _quiet_ort():
            try:
                if bits == 8:
                    details = _int8(src, dst, per_channel=per_channel, external=external,
                                    keep_down_proj=keep_down_proj)
                elif algo == "gptq":
                    details = _int4_calibrated(src, dst, block_size=block_size, symmetric=symmetric,
                                               accuracy_level=accuracy_level, external=external, calib=calib,
                                               calib_ctx=calib_ctx, calib_samples=calib_samples, damp=damp, log=log)
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
                       method: str = "gptq", block_size: int = 32, symmetric: bool = True,
                       data: str | list[str] | None = None, samples: int = 16, seq_len: int = 256, damp: float = 0.01,
                       report: bool = True, eval_data: str = "sample:shakespeare", eval_ctx: int = 512,
                       eval_windows: int = 16, force: bool = False, log: Callable[[str], None] = _nolog,
                       progress=None, **_: Any) -> dict[str, Any]:
    """``slmctl quantize MODEL.onnx``: quantise (4-bit: slmctl's calibrated GPTQ by default, or one of onnxruntime's
    quantisers named by --type), then the quality report every quantiser gives (perplexity of the input and the
    output on held-out text, KL, top-1 agreement, size, bits per weight)."""
    from ..eval.compare import quality_report

    t0 = time.perf_counter()
    nbits, algo = parse_qtype(qtype, bits, method if method in ALGORITHMS else "gptq")
    calib = data[0] if isinstance(data, (list, tuple)) and len(data) == 1 else data
    if isinstance(calib, (list, tuple)):
        raise UsageError("ONNX calibration takes one --data text", hint="give --data once")
    target = quantize_onnx(model, out, nbits, algo=algo, force=force, log=log, block_size=block_size,
                           symmetric=symmetric, calib=calib, calib_ctx=seq_len, calib_samples=samples, damp=damp)
    stats = weight_stats(target)
    result: dict[str, Any] = {"output": str(target), "format": "onnx", "type": qtype, "bits": nbits,
                              "method": "quantize_dynamic" if nbits == 8 else f"MatMulNBits/{algo}",
                              "seconds": round(time.perf_counter() - t0, 2), **stats}
    if report:
        result["report"] = quality_report(str(target), model, data=eval_data, ctx=eval_ctx, windows=eval_windows,
                                          stats=stats, log=log, progress=progress)
    return result


def export_quantized(exporter, art, ref: str, out: Path, *, bits: int, method: str | None = None,
                     data: str | list[str] | None = None, block_size: int = 32, symmetric: bool = True,
                     force: bool = False, log: Callable[[str], None] = _nolog, **options: Any) -> Path:
    """``slmctl export MODEL --format onnx --bits 4|8``: the float export (``exporter``, verified against PyTorch),
    then this module's quantisation of it (4-bit: slmctl's calibrated GPTQ by default, ``--data`` the calibration
    text) into ``out``; the float export is a temporary sibling of ``out``."""
    import shutil
    import tempfile

    from ..io.atomic import check_output

    if bits not in (4, 8):
        raise UsageError(f"ONNX export takes --bits 4 (MatMulNBits) or 8 (dynamic int8), not {bits}")
    _, algo = parse_qtype(None, bits, method or "gptq")
    if bits == 4 and algo not in ALGORITHMS:
        raise UsageError(f"--method {method} does not apply to ONNX int4", hint="valid: " + ", ".join(ALGORITHMS))
    check_output(Path(out), force)
    calib = data[0] if isinstance(data, (list, tuple)) and len(data) == 1 else data
    if isinstance(calib, (list, tuple)):
        raise UsageError("ONNX calibration takes one --data text", hint="give --data once")
    with tempfile.TemporaryDirectory(prefix=f".{Path(out).name}.float-", dir=Path(out).parent) as d:
        fp = exporter(art, ref, Path(d) / "float", force=True, log=log, **options)
        res = quantize_onnx(str(fp), out, bits, algo=algo, force=force, log=log, block_size=block_size,
                            symmetric=symmetric, calib=calib)
        shutil.rmtree(fp, ignore_errors=True)
    return res
