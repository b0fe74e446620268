"""`slmctl export --format gguf` of a quantised (GPTQ-layout / compressed-tensors) model.

The grid maps onto the nearest GGUF block type when it fits (every block of 32 inside one group),
keeping each group's scale and codes; otherwise the weights are dequantised and requantised. The
command says which. Checked tensor by tensor against slmctl's own dequantised weights, and run in
llama.cpp when it is installed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

CALIB = ("--samples", "4", "--seq-len", "32", "--no-report")


def _quantise(cli, src, out, text_file, *extra):
    code, _, err = cli("quantize", str(src), "-g", "32", "-o", str(out), "--data", str(text_file), *CALIB, *extra)
    assert code == 0, err
    return out


def _export(cli, src, out, *extra):
    code, stdout, err = cli("export", str(src), "--format", "gguf", "-o", str(out), *extra)
    assert code == 0, err
    assert stdout.strip() == str(out)
    return err


def _pairs(quantised, gguf):
    """(hf name, our dequantised weight in GGUF row order, GGUF tensor type, the GGUF tensor's values)."""
    from slmctl.arch import head_dim, permute_qk
    from slmctl.io.artifact import open_artifact
    from slmctl.io.quantized_formats import dequantized_tensors

    qa, ga = open_artifact(quantised), open_artifact(gguf)
    cfg = qa.config
    out = []
    for name, w in dequantized_tensors(qa):
        if ".layers." not in name or not name.endswith("proj.weight"):
            continue
        layer = int(name.split(".layers.")[1].split(".")[0])
        kind = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}[name.split(".")[-2]]
        w = w.numpy()
        if kind in ("attn_q", "attn_k"):
            w = permute_qk(w, w.shape[0] // head_dim(cfg))
        lt = ga.tensors[f"blk.{layer}.{kind}.weight"]
        out.append((name, w, lt.dtype, lt.load().float().numpy()))
    assert len(out) == 14
    return out


@pytest.mark.parametrize("fmt", ["gptq", "compressed-tensors"])
def test_symmetric_grid_maps_exactly_onto_q4_0(cli, tiny_llama, tmp_path, text_file, fmt):
    q = _quantise(cli, tiny_llama, tmp_path / "q", text_file, "--format", fmt)
    err = _export(cli, q, tmp_path / "m.gguf")
    assert "maps onto q4_0 exactly" in err and "no requantisation" in err
    for name, ours, gtype, theirs in _pairs(q, tmp_path / "m.gguf"):
        assert gtype == "Q4_0", name
        assert np.array_equal(ours, theirs), name
    from slmctl.io.artifact import open_artifact

    ga = open_artifact(tmp_path / "m.gguf")
    assert ga.tensors["token_embd.weight"].dtype == "F16"  # unquantised in the input: kept close to it
    # a bigger type that holds the same grid: still exact
    err = _export(cli, q, tmp_path / "m8.gguf", "--outtype", "q8_0")
    assert "maps onto q8_0 exactly" in err
    assert all(g == "Q8_0" and np.array_equal(o, t) for _, o, g, t in _pairs(q, tmp_path / "m8.gguf"))


def test_asymmetric_and_low_bit_grids(cli, tiny_llama, tmp_path, text_file):
    q = _quantise(cli, tiny_llama, tmp_path / "asym", text_file, "--asym", "--method", "rtn")
    err = _export(cli, q, tmp_path / "a.gguf")
    assert "maps onto q4_1" in err and "minimum rounded to float16" in err
    for name, ours, gtype, theirs in _pairs(q, tmp_path / "a.gguf"):
        assert gtype == "Q4_1"
        # only the block minimum m = -d * zero is rounded to float16
        assert np.abs(ours - theirs).max() <= 2.0 ** -11 * np.abs(ours).max() * 2, name
    q2 = _quantise(cli, tiny_llama, tmp_path / "w2", text_file, "--bits", "2", "--method", "rtn")
    assert "maps onto q4_0 exactly" in _export(cli, q2, tmp_path / "w2.gguf")
    assert all(g == "Q4_0" and np.array_equal(o, t) for _, o, g, t in _pairs(q2, tmp_path / "w2.gguf"))


def test_requantise_when_the_grid_does_not_fit(cli, tiny_llama, tmp_path, text_file):
    q = _quantise(cli, tiny_llama, tmp_path / "gptq", text_file)
    err = _export(cli, q, tmp_path / "f16.gguf", "--outtype", "f16")
    assert "dequantised and written as f16" in err
    for name, ours, gtype, theirs in _pairs(q, tmp_path / "f16.gguf"):
        assert gtype == "F16" and np.allclose(ours, theirs, rtol=1e-3, atol=1e-6)
    err = _export(cli, q, tmp_path / "q5.gguf", "--outtype", "q5_1")
    assert "maps onto q5_1 exactly" in err  # a symmetric 4-bit grid fits the affine 5-bit blocks too
    # act-order without static groups: g_idx permutes the groups, so blocks of 32 mix grids
    qa = _quantise(cli, tiny_llama, tmp_path / "actorder", text_file, "--no-static-groups")
    assert json.loads((qa / "config.json").read_text())["quantization_config"]["desc_act"] is True
    err = _export(cli, qa, tmp_path / "ao.gguf")
    assert "of 14 linears; the others (act-order groups" in err and "dequantised and requantised to q4_0" in err


@pytest.mark.slow  # llama.cpp runs the mapped file
def test_mapped_gguf_runs_in_llama_cpp_like_the_quantised_model(cli, tiny_llama, tmp_path, text_file):
    pytest.importorskip("llama_cpp")
    q = _quantise(cli, tiny_llama, tmp_path / "gptq", text_file)
    _export(cli, q, tmp_path / "m.gguf")
    res = {}
    for art in (q, tmp_path / "m.gguf"):
        code, stdout, err = cli("eval", str(art), "--data", str(text_file), "--ctx", "32", "--windows", "2", "--json")
        assert code == 0, err
        res[art] = json.loads(stdout)["ppl"]
    a, b = res.values()
    assert abs(a - b) / a < 0.02, res  # llama.cpp rounds activations to q8_0 for q4_0 matmuls


def test_kquant_requantises_through_llama_cpp(cli, tiny_llama, tmp_path, text_file):
    pytest.importorskip("llama_cpp")
    q = _quantise(cli, tiny_llama, tmp_path / "gptq", text_file)
    err = _export(cli, q, tmp_path / "k.gguf", "--outtype", "q4_k_m")
    assert "no exact q4_k_m form: dequantised, then requantised to q4_k_m" in err
    from slmctl.io.artifact import open_artifact

    assert open_artifact(tmp_path / "k.gguf").tensors["blk.0.ffn_down.weight"].dtype.startswith("Q")
    assert torch.isfinite(open_artifact(tmp_path / "k.gguf").tensors["blk.0.ffn_down.weight"].load()).all()
