"""The real sample (SmolLM2-135M) through ONNX: export verified, eval within 0.1 %, int8/int4 quality. Slow."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample_onnx(tmp_path_factory):
    from slmctl import api

    out = tmp_path_factory.mktemp("sample-onnx") / "smollm2-onnx"
    api.export("sample:smollm2-135m", out, "onnx")
    return out


def test_sample_export_verified(sample_onnx):
    v = json.loads((sample_onnx / "slmctl.json").read_text())["verification"]
    assert v["max_abs_diff_prompt"] <= 1e-3 and v["max_abs_diff_decode"] <= 1e-3
    assert v["greedy_tokens"] == 32 and v["greedy_identical"]


def test_sample_eval_matches_pytorch(sample_onnx, cli):
    code, stdout, stderr = cli("eval", str(sample_onnx), "-r", "sample:smollm2-135m", "--ctx", "256", "--windows", "4",
                               "--json")
    assert code == 0, stderr
    rep = json.loads(stdout)
    assert rep["backend"] == "onnxruntime"
    assert abs(rep["ppl_increase_pct"]) < 0.1
    assert rep["top1_agreement_pct"] > 99.0


@pytest.mark.parametrize("qtype,max_increase", [("int8", 10.0), ("int4", 30.0)])
def test_sample_quantized_quality(sample_onnx, tmp_path, cli, qtype, max_increase):
    from slmctl.pipelines.quantize_onnx import quantize_onnx

    q = quantize_onnx(str(sample_onnx), tmp_path / qtype, qtype=qtype)
    code, stdout, stderr = cli("eval", str(q), "-r", str(sample_onnx), "--ctx", "256", "--windows", "4", "--json")
    assert code == 0, stderr
    rep = json.loads(stdout)
    assert 0 < rep["ppl_increase_pct"] < max_increase
    assert rep["top1_agreement_pct"] > 65.0
    size = lambda d: sum(f.stat().st_size for f in d.glob("model.onnx*"))
    # the tied LM head stays fp32 (and int8 keeps the down projections in float): measured 0.56 and 0.34
    assert size(q) < size(sample_onnx) * (0.6 if qtype == "int8" else 0.4)
