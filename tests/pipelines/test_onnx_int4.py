"""slmctl's own calibrated ONNX int4 (MatMulNBits from GPTQ on importance-searched block scales), issue 20."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest


def _nbits_model(q, k: int, n: int):
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(q.packed, "B"), numpy_helper.from_array(q.scales.reshape(-1), "S")]
    ins = ["A", "B", "S"]
    if q.zero_points is not None:
        inits.append(numpy_helper.from_array(q.zero_points.reshape(-1), "Z"))
        ins.append("Z")
    node = helper.make_node("MatMulNBits", ins, ["Y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=q.block_size)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("block,sym", [(32, True), (32, False), (64, True), (128, False)])
def test_nbits_layout_runs_in_onnxruntime_and_gptq_lowers_output_error(block, sym):
    """onnxruntime's MatMulNBits reads the packed codes, scales and zero points as slmctl dequantises them (K=96
    is not a multiple of 64/128: the last block is padded), and GPTQ's codes give a lower layer-output error
    than the same scales' nearest codes."""
    import onnxruntime as ort

    from slmctl.methods.quantize.gguf_gptq import output_error
    from slmctl.methods.quantize.nbits import quantize_weight

    rng = np.random.default_rng(0)
    n, k = 48, 96
    X = (rng.standard_normal((512, k)) * np.linspace(0.1, 3, k)).astype(np.float32)
    W = rng.standard_normal((n, k)).astype(np.float32)
    H = 2 * X.T.astype(np.float64) @ X / len(X)
    plain = quantize_weight(W, block_size=block, symmetric=sym, importance=np.diag(H) / 2)
    g = quantize_weight(W, block_size=block, symmetric=sym, H=H)
    assert (g.zero_points is None) == sym
    assert output_error(W, g.values(), H) < output_error(W, plain.values(), H)
    y = ort.InferenceSession(_nbits_model(g, k, n).SerializeToString()).run(None, {"A": X[:8]})[0]
    np.testing.assert_allclose(y, X[:8] @ g.values().T, rtol=1e-4, atol=1e-4)


def test_nbits_block32_symmetric_is_q4_0s_grid():
    """At block 32, symmetric, without GPTQ, the codes and scales are those of slmctl's importance-weighted Q4_0."""
    from slmctl.methods.quantize import gguf_kquants as K
    from slmctl.methods.quantize.nbits import quantize_weight

    rng = np.random.default_rng(1)
    W = rng.standard_normal((8, 64)).astype(np.float32)
    qw = rng.uniform(0.1, 2, 64).astype(np.float32)
    q = quantize_weight(W, block_size=32, symmetric=True, importance=qw)
    blk = K.search("q4_0", W, qw)
    np.testing.assert_array_equal(q.codes.reshape(-1), blk.codes.reshape(-1))
    # Q4_0 stores its scale in float16; MatMulNBits in the model's float type
    np.testing.assert_allclose(q.scales.reshape(-1), blk.d, rtol=1e-3)


@pytest.mark.parametrize("sym", [True, False])
def test_quantize_onnx_int4_calibrated(llama_onnx, tmp_path, text_file, cli, sym):
    """`slmctl quantize MODEL.onnx --bits 4` writes slmctl's calibrated MatMulNBits (zero points when --asym),
    onnxruntime runs it unchanged, and its KL to the float model is below onnxruntime's own RTN at the same block."""
    out, _ = llama_onnx
    q = tmp_path / "q4"
    code, stdout, stderr = cli("quantize", str(out), "--bits", "4", "-g", "32", "--sym" if sym else "--asym",
                               "--data", str(text_file), "--samples", "4", "--seq-len", "32", "-o", str(q),
                               "--eval-data", str(text_file), "--eval-ctx", "32", "--eval-windows", "2", "--json")
    assert code == 0, stderr
    res = json.loads(stdout)
    assert res["method"] == "MatMulNBits/gptq" and res["output"] == str(q)
    m = onnx.load(str(q / "model.onnx"))
    nodes = [x for x in m.graph.node if x.op_type == "MatMulNBits"]
    assert len(nodes) == 2 * 7
    assert all((len(x.input) == 4) != sym for x in nodes)  # zero points only when asymmetric
    assert {onnx.helper.get_attribute_value(a) for x in nodes for a in x.attribute if a.name == "block_size"} == {32}
    prov = json.loads({p.key: p.value for p in m.metadata_props}["slmctl.provenance"])
    assert prov["recipe"]["algorithm"] == "gptq" and prov["recipe"]["symmetric"] is sym
    code, so, se = cli("quantize", str(out), "--type", "default", "-g", "32", "--sym" if sym else "--asym", "-o",
                       str(tmp_path / "ort"), "--eval-data", str(text_file), "--eval-ctx", "32", "--eval-windows", "2",
                       "--json")
    assert code == 0, se
    # both reports evaluate the output in onnxruntime against the float ONNX input on the same windows
    mine, ort_rtn = res["report"], json.loads(so)["report"]
    assert np.isfinite(mine["ppl_after"]) and mine["kld_mean"] > 0
    assert mine["kld_mean"] < ort_rtn["kld_mean"], (mine, ort_rtn)


def test_export_onnx_bits4(tiny_llama, tmp_path, text_file, cli):
    """`slmctl export MODEL --format onnx --bits 4`: the verified float export, quantised by slmctl's calibrated
    MatMulNBits; onnxruntime runs it; --bits with another format is a usage error."""
    out = tmp_path / "q4"
    code, stdout, stderr = cli("export", str(tiny_llama), "--format", "onnx", "--bits", "4", "--data", str(text_file),
                               "-o", str(out))
    assert code == 0, stderr
    assert stdout.strip() == str(out)
    assert not [p for p in tmp_path.iterdir() if p.name != "q4"]  # the float export was temporary
    m = onnx.load(str(out / "model.onnx"))
    assert sum(x.op_type == "MatMulNBits" for x in m.graph.node) == 2 * 7
    prov = json.loads({p.key: p.value for p in m.metadata_props}["slmctl.provenance"])
    assert prov["recipe"]["algorithm"] == "gptq"
    code, stdout, stderr = cli("eval", str(out), "--data", str(text_file), "--ctx", "32", "--windows", "2", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["backend"] == "onnxruntime"
    code, _, stderr = cli("export", str(tiny_llama), "--format", "gguf", "--bits", "4", "-o", str(tmp_path / "x.gguf"))
    assert code == 2 and "--bits goes with --format onnx" in stderr
