"""quantize: grid maths, packing layouts, GPTQ/AWQ properties, layer-by-layer runner, CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slmctl.io.quantized_formats import (ct_unpack, dequantized_tensors, gptq_unpack, pack_rows, unpack_rows)
from slmctl.methods.quantize.common import QuantConfig, choose_qparams, dequantize, quantize_affine, rtn
from slmctl.methods.quantize.gptq import GPTQConfig, HessianAccumulator, gptq_quantize_weight

TINY_ARGS = ("--samples", "4", "--seq-len", "32", "--eval-ctx", "32", "--eval-windows", "2")


@pytest.fixture(scope="module")
def calib_args(text_file):
    return ("--data", str(text_file), "--eval-data", str(text_file), *TINY_ARGS)


# ---------------------------------------------------------------- packing
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_round_trip_is_exact(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (7, 96), generator=g)
    packed = pack_rows(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (7, 96 * bits // 32)
    assert torch.equal(unpack_rows(packed, bits, 96), codes)


def test_pack_4bit_matches_gptq_word_layout():
    # the GPTQ layout: code 8*r + j of a column sits in bits 4j..4j+3 of int32 word r
    codes = torch.randint(0, 16, (3, 16), generator=torch.Generator().manual_seed(0))
    packed = pack_rows(codes, 4)
    for row in range(3):
        for r in range(2):
            word = sum(int(codes[row, 8 * r + j]) << (4 * j) for j in range(8))
            assert int(packed[row, r]) & 0xFFFFFFFF == word


@pytest.mark.slow  # importing compressed-tensors alone takes ~50 s on the shared machine
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_matches_compressed_tensors(bits):
    ct = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    half = 1 << (bits - 1)
    codes = torch.randint(0, 1 << bits, (5, 64), generator=torch.Generator().manual_seed(1))
    theirs = ct.pack_to_int32((codes - half).to(torch.int8), bits)
    assert torch.equal(pack_rows(codes, bits), theirs)


# ---------------------------------------------------------------- grid maths
@pytest.mark.parametrize("bits,group,sym", [(4, 32, True), (4, 32, False), (3, 64, True), (8, -1, False), (2, 16, True)])
def test_rtn_error_bound_and_code_range(bits, group, sym):
    w = torch.randn(24, 128, generator=torch.Generator().manual_seed(bits)) * 0.05
    cfg = QuantConfig(bits=bits, group_size=group, sym=sym)
    res = rtn(w, cfg)
    assert res.q.min() >= 0 and res.q.max() <= cfg.maxq
    assert res.scale.shape == (cfg.n_groups(128), 24)
    assert torch.equal(res.scale.half().float(), res.scale)  # stored as fp16 without loss
    err = (w - res.dequantize()).abs()
    step = res.scale[res.g_idx.long()].T
    inside = (res.q > 0) & (res.q < cfg.maxq)
    assert (err[inside] <= step[inside] / 2 * (1 + 1e-5)).all()
    # at the ends of the grid only the float16 rounding of the scale can add to the half step
    assert (err <= step / 2 + cfg.maxq * step * 2.0 ** -11).all()


def test_quantize_affine_inverts_dequantize_on_grid_points():
    cfg = QuantConfig(bits=4, group_size=32, sym=False)
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(3))
    scale, zero, g_idx = choose_qparams(w, cfg)
    q = quantize_affine(w, scale, zero, g_idx, cfg)
    assert torch.equal(quantize_affine(dequantize(q, scale, zero, g_idx), scale, zero, g_idx, cfg), q)


def test_config_validation():
    from slmctl.errors import UsageError

    with pytest.raises(UsageError, match="--bits 5"):
        QuantConfig(bits=5)
    with pytest.raises(UsageError, match="--group-size 0"):
        QuantConfig(group_size=0)


# ---------------------------------------------------------------- GPTQ
@pytest.mark.parametrize("act_order,static", [(False, False), (True, True), (True, False)])
def test_gptq_with_identity_hessian_equals_rtn(act_order, static):
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    cfg = QuantConfig(bits=4, group_size=32, sym=True)
    got = gptq_quantize_weight(w, torch.eye(64), cfg, GPTQConfig(act_order=act_order, static_groups=static,
                                                                 scale_search=False))
    ref = rtn(w, cfg)
    assert torch.equal(got.q, ref.q)
    assert torch.equal(got.scale, ref.scale)
    assert torch.equal(got.dequantize(), ref.dequantize())


@pytest.mark.parametrize("static", [True, False])
def test_gptq_scale_search_with_identity_hessian_is_rounding_on_the_searched_grid(static):
    # no error feedback with H = I: each group's codes are round-to-nearest on its searched grid,
    # whose plain squared error is never above the min/max grid's
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=g)
    w[3, 5] = 9.0  # an outlier the search may clip
    cfg = QuantConfig(bits=4, group_size=32, sym=True)
    got = gptq_quantize_weight(w, torch.eye(64), cfg, GPTQConfig(static_groups=static))
    ref = rtn(w, cfg)
    err = lambda r: ((w - r.dequantize()) ** 2).reshape(16, 2, 32).sum(-1)  # noqa: E731
    assert (err(got) <= err(ref) + 1e-6).all()
    assert (err(got) < err(ref) - 1e-6).any()
    assert (got.scale <= ref.scale).all()
    assert torch.equal(got.q, quantize_affine(w, got.scale, got.zero, got.g_idx, cfg))


@pytest.mark.parametrize("sym", [True, False])
def test_searched_grid_has_the_least_weighted_error_among_its_candidates(sym):
    from slmctl.methods.quantize.common import minmax_qparams
    from slmctl.methods.quantize.gptq import SHRINKS, searched_qparams

    g = torch.Generator().manual_seed(1)
    w = torch.randn(24, 32, generator=g) * torch.rand(24, 1, generator=g)
    w[::5, 7] *= 6  # outliers in some rows
    h = torch.rand(32, generator=g) ** 4  # a few columns matter most
    cfg = QuantConfig(bits=4, group_size=32, sym=sym)

    def werr(s, z):
        q = torch.clamp(torch.round(w / s[:, None]) + z[:, None], 0, cfg.maxq)
        return ((w - s[:, None] * (q - z[:, None])) ** 2 * h).sum(1)

    s, z = searched_qparams(w, h, cfg)
    best = werr(s, z)
    for f in SHRINKS:
        assert (best <= werr(*minmax_qparams(w, cfg, shrink=f)) + 1e-7).all()
    assert (best < werr(*minmax_qparams(w, cfg)) - 1e-7).any()
    assert 1.0 in SHRINKS  # the plain grid is a candidate: never worse than it


def _correlated_inputs(n=512, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 8, generator=g)
    return base @ torch.randn(8, d, generator=g) + 0.1 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("act_order,static", [(False, False), (True, True), (True, False)])
def test_gptq_beats_rtn_on_output_error(act_order, static):
    X = _correlated_inputs()
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    acc = HessianAccumulator(64)
    for chunk in X.split(100):
        acc.add(chunk)
    assert torch.allclose(acc.result(), 2 * X.T @ X / X.shape[0], rtol=1e-4, atol=1e-4)
    cfg = QuantConfig(bits=3, group_size=32)
    g = gptq_quantize_weight(w, acc.result(), cfg, GPTQConfig(act_order=act_order, static_groups=static))
    plain = gptq_quantize_weight(w, acc.result(), cfg, GPTQConfig(act_order=act_order, static_groups=static,
                                                                   scale_search=False))
    r = rtn(w, cfg)
    out_err = lambda q: ((X @ (w - q.dequantize()).T) ** 2).mean()  # noqa: E731
    err_g, err_p, err_r = out_err(g), out_err(plain), out_err(r)
    assert err_g < 0.7 * err_r and err_p < 0.7 * err_r
    # g_idx maps every column to a group that exists; with act-order and dynamic groups it is permuted
    assert g.g_idx.max() < cfg.n_groups(64)
    if act_order and not static:
        assert not torch.equal(g.g_idx, torch.arange(64, dtype=torch.int32) // 32)


@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gptq_scale_search_lowers_the_output_error_on_full_rank_inputs_with_outlier_channels(static, seed):
    # inputs like a decoder layer's: full rank, a decaying spectrum, a few channels 20x the rest;
    # heavy-tailed weights. (On inputs of very low rank, where the error feedback can absorb almost any
    # rounding, clipping can cost more than it saves: hence --no-scale-search.)
    g = torch.Generator().manual_seed(seed)
    n, d = 1024, 128
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    X = torch.randn(n, d, generator=g) @ (basis * torch.logspace(0, -1.5, d)) @ basis.T
    X[:, torch.randint(0, d, (4,), generator=g)] *= 20
    w = 0.02 * torch.randn(64, d, generator=g) / torch.rand(64, d, generator=g).clamp(min=0.05) ** 0.25
    H = 2 * X.T @ X / n
    cfg = QuantConfig(bits=4, group_size=32, sym=True)
    out_err = lambda q: float(((X @ (w - q.dequantize()).T) ** 2).mean())  # noqa: E731
    searched = out_err(gptq_quantize_weight(w, H, cfg, GPTQConfig(static_groups=static)))
    plain = out_err(gptq_quantize_weight(w, H, cfg, GPTQConfig(static_groups=static, scale_search=False)))
    assert searched < 0.85 * plain


def test_gptq_is_deterministic():
    X = _correlated_inputs(seed=2)
    H = 2 * X.T @ X / X.shape[0]
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(5))
    cfg = QuantConfig(bits=4, group_size=32)
    a, b = gptq_quantize_weight(w, H, cfg), gptq_quantize_weight(w, H, cfg)
    assert torch.equal(a.q, b.q) and torch.equal(a.scale, b.scale)


def test_gptq_on_stacked_rows_equals_one_linear_at_a_time():
    # q/k/v (and gate/up) share one Hessian and are quantised as one stacked weight: rows are independent
    X = _correlated_inputs(seed=3)
    H = 2 * X.T @ X / X.shape[0]
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(16, 64, generator=g), torch.randn(8, 64, generator=g)
    cfg = QuantConfig(bits=4, group_size=32)
    both = gptq_quantize_weight(torch.cat([a, b]), H, cfg)
    for w, rows in ((a, slice(0, 16)), (b, slice(16, 24))):
        one = gptq_quantize_weight(w, H, cfg)
        assert torch.equal(one.q, both.q[rows]) and torch.equal(one.scale, both.scale[:, rows])


def test_awq_fake_quantize_matches_rtn_grid():
    from slmctl.methods.quantize.awq import fake_quantize

    w = torch.randn(24, 96, generator=torch.Generator().manual_seed(7))
    for cfg in (QuantConfig(4, 32, True), QuantConfig(3, 32, False), QuantConfig(4, 40, True), QuantConfig(4, -1)):
        assert torch.equal(fake_quantize(w, cfg), rtn(w, cfg).dequantize()), cfg


def test_true_sequential_gptq_runs_each_group_once(tiny_llama):
    # one forward per group that stops at that group (or at the end of the sub-block it closes, window 0 only),
    # plus one to find the groups: never a full re-run per linear
    import slmctl.layerwise as L
    from slmctl.io.artifact import open_artifact
    from slmctl.methods.quantize.gptq import quantize_gptq

    lm = L.LayerwiseModel(open_artifact(tiny_llama))
    wins = [[(i * 5 + j) % 300 for j in range(16)] for i in range(3)]
    calls = []
    orig = L.capture_layer_inputs

    def spy(*a, **k):
        calls.append((tuple(a[3] or ()), k.get("stop_early", a[5] if len(a) > 5 else False)))
        return orig(*a, **k)

    L.capture_layer_inputs = spy
    try:
        step = next(L.iter_layers(lm, wins, capture=False))
        res = quantize_gptq(step.layer, QuantConfig(4, 32), names=lm.linear_names(0), step=step)
    finally:
        L.capture_layer_inputs = orig
    assert sorted(res) == sorted(lm.linear_names(0))
    # o_proj and down_proj end their sub-blocks: their pass runs window 0 to the end of the sub-block (to check
    # that it can be replayed from their inputs), then the other windows stop at them as the rest do
    assert calls == [(("self_attn.q_proj",), True), (("self_attn.o_proj",), False), (("self_attn.o_proj",), True),
                     (("mlp.gate_proj",), True), (("mlp.down_proj",), False), (("mlp.down_proj",), True)]
    assert sorted(step.replays) == ["mlp", "self_attn"]


# ---------------------------------------------------------------- layer-by-layer runner
def test_layerwise_runner_matches_full_model_and_frees_layers(tiny_models):
    from transformers import AutoModelForCausalLM

    from slmctl.io.artifact import open_artifact
    from slmctl.layerwise import LayerwiseModel, iter_layers

    for fam in ("llama", "gemma2"):
        art = open_artifact(tiny_models[fam])
        lm = LayerwiseModel(art)
        wins = [[(i * 7 + j * 3) % 300 for j in range(20)] for i in range(3)]
        seen = []
        for step in iter_layers(lm, wins):
            assert not any(p.is_meta for p in step.layer.parameters())
            assert step.inputs["self_attn.q_proj"][0].shape == (1, 20, 32)
            assert step.groups()[0] == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
            seen.append(step.idx)
            last = step
        assert seen == [0, 1]
        assert all(p.is_meta for p in lm.layers[0].parameters())  # freed once done
        from slmctl.layerwise import run_layer

        final = run_layer(lm.load_layer(1), last.hidden, last.kwargs)
        full = AutoModelForCausalLM.from_pretrained(str(tiny_models[fam]), dtype=torch.float32).eval()
        with torch.no_grad():
            hs = full(torch.tensor([wins[2]]), output_hidden_states=True).hidden_states
        assert torch.allclose(full.model.norm(final[2]), hs[-1], atol=1e-5)


def test_awq_fold_keeps_the_layer_function(tiny_models):
    from slmctl.io.artifact import open_artifact
    from slmctl.layerwise import LayerwiseModel, run_layer
    from slmctl.methods.quantize.awq import _fold

    lm = LayerwiseModel(open_artifact(tiny_models["gemma2"]))
    h = lm.embed([[1, 5, 9, 40, 77, 100, 3, 8]])
    layer = lm.load_layer(0)
    ref = run_layer(layer, h, lm.layer_kwargs(0))[0]
    s = torch.rand(32, generator=torch.Generator().manual_seed(0)) + 0.5
    with torch.no_grad():
        for n in ("mlp.gate_proj", "mlp.up_proj"):
            layer.get_submodule(n).weight.data *= s
        _fold(layer, "pre_feedforward_layernorm", "norm", s)
        s2 = torch.rand(64, generator=torch.Generator().manual_seed(1)) + 0.5
        layer.get_submodule("mlp.down_proj").weight.data *= s2
        _fold(layer, "mlp.up_proj", "rows", s2)
    assert torch.allclose(run_layer(layer, h, lm.layer_kwargs(0))[0], ref, atol=1e-5)


# ---------------------------------------------------------------- end to end
def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_rtn_gptq_layout_round_trips(cli, tiny_llama, tmp_path, calib_args):
    out = tmp_path / "rtn"
    code, stdout, stderr = cli("quantize", str(tiny_llama), "--method", "rtn", "-g", "32", "-o", str(out), *calib_args)
    assert code == 0, stderr
    assert stdout.strip() == str(out)
    assert "perplexity" in stderr and "bits per weight" in stderr
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "gptq" and cfg["bits"] == 4 and cfg["group_size"] == 32 and cfg["sym"] is True
    w = _weights(out)
    src = _weights(tiny_llama)
    name = "model.layers.0.mlp.down_proj"
    assert w[f"{name}.qweight"].dtype == torch.int32 and w[f"{name}.qweight"].shape == (64 // 8, 32)
    assert w[f"{name}.qzeros"].shape == (2, 32 // 8) and w[f"{name}.scales"].dtype == torch.float16
    assert torch.equal(w[f"{name}.qzeros"], torch.full_like(w[f"{name}.qzeros"], 0x77777777))  # sym: zero 8, stored 7
    q, scale, zero, g_idx = gptq_unpack(w.get, name, 4)
    expect = rtn(src[f"{name}.weight"].float(), QuantConfig(4, 32, True))
    assert torch.equal(q.to(torch.int32), expect.q) and torch.equal(scale, expect.scale)
    assert torch.equal(zero.to(torch.int32), expect.zero)
    assert "model.embed_tokens.weight" in w and f"{name}.weight" not in w
    # provenance inside the artifact and beside it
    from slmctl.io.artifact import open_artifact

    art = open_artifact(out)
    assert art.provenance()["verb"] == "quantize"
    deq = dict(dequantized_tensors(art))
    assert torch.equal(deq[f"{name}.weight"], expect.dequantize())


def test_gptq_default_output_path_eval_and_determinism(cli, tiny_models, tmp_path, calib_args):
    import shutil

    src = tmp_path / "model"
    shutil.copytree(tiny_models["qwen2"], src)
    code, stdout, stderr = cli("quantize", str(src), *calib_args)
    assert code == 0, stderr
    out = Path(stdout.strip())
    assert out == tmp_path / "model-gptq-w4g128"
    assert "calibration: 4 window(s) of 32 tokens" in stderr
    code2, stdout2, _ = cli("quantize", str(src), "-o", str(tmp_path / "again"), *calib_args, "--no-report")
    assert code2 == 0
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "again" / "model.safetensors").read_bytes()
    # slmctl eval runs its own output (dequantised on load) and agrees with the report
    code, stdout, stderr = cli("eval", str(out), "--data", calib_args[1], "--ctx", "32", "--windows", "2", "--json")
    assert code == 0, stderr
    rep = json.loads(stdout)
    assert rep["backend"] == "torch" and rep["ppl"] > 1
    # existing output without --force
    code, _, stderr = cli("quantize", str(src), *calib_args)
    assert code == 1 and "already exists" in stderr and "--force" in stderr


def test_awq_compressed_tensors_json_report_and_gate(cli, tiny_models, tmp_path, calib_args):
    out = tmp_path / "awq"
    code, stdout, stderr = cli("quantize", str(tiny_models["llama"]), "--method", "awq", "-g", "32",
                               "--format", "compressed-tensors", "-o", str(out), "--json",
                               "--max-ppl-increase", "-100", *calib_args)
    assert code == 3, stderr
    assert "gate failed" in stderr
    doc = json.loads(stdout)
    assert doc["output"] == str(out) and doc["gates"]["passed"] is False
    r = doc["report"]
    assert r["ppl_before"] > 1 and r["ppl_after"] > 1 and 0 <= r["top1_agreement_pct"] <= 100
    assert 4 < r["bits_per_weight"] < 6 and r["size_after"] < r["size_before"]
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    w = _weights(out)
    name = "model.layers.1.mlp.up_proj"
    assert w[f"{name}.weight_packed"].shape == (64, 32 * 4 // 32)
    assert f"{name}.weight_zero_point" not in w
    q, scale, zero, g_idx = ct_unpack(w.get, name, 4, sym=True)
    assert q.min() >= 0 and q.max() <= 15 and (zero == 8).all()
    # asymmetric compressed-tensors is refused: transformers cannot load it
    code, _, stderr = cli("quantize", str(tiny_models["llama"]), "--asym", "--format", "compressed-tensors",
                          "-o", str(tmp_path / "asym"), *calib_args)
    assert code == 2 and "transformers cannot load" in stderr and "--format gptq" in stderr
    assert not (tmp_path / "asym").exists()


def test_compressed_tensors_asymmetric_zero_points_read_back():
    # what llm-compressor writes for asymmetric grids (packed along the output dimension) reads back exactly
    from slmctl.io.quantized_formats import ct_tensors

    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(4))
    res = rtn(w, QuantConfig(4, 32, sym=False))
    t = ct_tensors("m", res)
    assert t["m.weight_zero_point"].shape == (64 * 4 // 32, 2)
    q, scale, zero, g_idx = ct_unpack(t.get, "m", 4, sym=False)
    assert torch.equal(zero.to(torch.int32), res.zero) and torch.equal(q.to(torch.int32), res.q)


@pytest.mark.slow  # the real loader: transformers with compressed-tensors
@pytest.mark.parametrize("extra", [(), ("--method", "awq"), ("--bits", "8", "-g", "-1")],
                         ids=["gptq", "awq", "8bit-channel"])
def test_compressed_tensors_output_loads_in_transformers(cli, tiny_models, tmp_path, calib_args, extra):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    from slmctl.io.artifact import open_artifact
    from slmctl.io.quantized_formats import load_dequantized_model

    out = tmp_path / "ct"
    code, _, stderr = cli("quantize", str(tiny_models["qwen3"]), "-g", "32", "--format", "compressed-tensors",
                          "-o", str(out), "--no-report", *calib_args, *extra)
    assert code == 0, stderr
    theirs = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ours = load_dequantized_model(open_artifact(out))
    ids = torch.tensor([[5, 17, 99, 3, 250, 41, 7, 8, 120, 64]])
    with torch.no_grad():
        diff = (theirs(ids).logits - ours(ids).logits).abs().max().item()
    assert diff <= 1e-3


def test_errors_name_the_problem(cli, tiny_models, tmp_path, calib_args):
    code, _, stderr = cli("quantize", str(tiny_models["llama"]), "--bits", "5", "-o", str(tmp_path / "x"), *calib_args)
    assert code == 2 and "--bits 5" in stderr and "valid: 2, 3, 4, 8" in stderr
    code, _, stderr = cli("quantize", str(tiny_models["gpt2"]), "-o", str(tmp_path / "g"), *calib_args)
    assert code == 1 and "Conv1D" in stderr
    code, _, stderr = cli("quantize", str(tiny_models["llama"]), "--method", "gtpq", "-o", str(tmp_path / "y"), *calib_args)
    assert code == 2 and "did you mean 'gptq'" in stderr
    code, _, stderr = cli("quantize", str(tiny_models["llama"]), "--type", "q4_k_m", "-o", str(tmp_path / "z"), *calib_args)
    assert code == 2 and "--type" in stderr
    q = tmp_path / "q"
    assert cli("quantize", str(tiny_models["llama"]), "--method", "rtn", "-o", str(q), "--no-report", *calib_args)[0] == 0
    code, _, stderr = cli("quantize", str(q), "-o", str(tmp_path / "qq"), *calib_args)
    assert code == 1 and "already quantised" in stderr


def test_gptq_layout_asymmetric_zeros_never_underflow():
    # GPTQ v1 stores zero - 1 and loaders add 1 back with a carrying add: a zero of 0 would corrupt
    # its neighbour, so asymmetric grids for this layout keep zeros >= 1 (all-positive groups included)
    from slmctl.io.quantized_formats import gptq_tensors

    w = torch.rand(32, 64, generator=torch.Generator().manual_seed(0)) + 0.1  # all positive: min/max zero is 0
    assert rtn(w, QuantConfig(4, 32, sym=False)).zero.min() == 0
    res = rtn(w, QuantConfig(4, 32, sym=False, zero_min=1))
    assert res.zero.min() >= 1
    t = gptq_tensors("m", res)
    q, scale, zero, g_idx = gptq_unpack(t.get, "m", 4)
    assert torch.equal(zero.to(torch.int32), res.zero)
    # what a loader's v1 -> v2 conversion does (+0x11111111 on each packed word) equals the true zeros
    assert torch.equal(unpack_rows(t["m.qzeros"].to(torch.int64) + 0x11111111, 4, 32), res.zero.to(torch.int64))
    step = res.scale[res.g_idx.long()].T
    assert ((w - res.dequantize()).abs() <= step / 2 + 15 * step * 2.0 ** -11).all()


def test_profile_runs_a_quantised_output(cli, tiny_llama, tmp_path, calib_args):
    # `slmctl profile` loads slmctl's own quantised output (dequantised on load, as eval does)
    out = tmp_path / "rtn"
    assert cli("quantize", str(tiny_llama), "--method", "rtn", "-g", "32", "-o", str(out), "--no-report",
               *calib_args)[0] == 0
    code, stdout, stderr = cli("profile", str(out), "--ctx", "16", "--batch", "1", "--warmup", "0",
                               "--decode-tokens", "2", "--no-bandwidth", "--json")
    assert code == 0, stderr
    assert "dequantised to float32 on load" in stderr
    doc = json.loads(stdout)
    assert doc["prefill"][0]["p50_ms"] > 0
