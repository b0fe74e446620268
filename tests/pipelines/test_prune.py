"""prune: masks and N:M patterns are exact, structured outputs load and run, GQA stays consistent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from slmctl.errors import UsageError  # noqa: E402
from slmctl.methods.prune import UNSTRUCTURED  # noqa: E402
from slmctl.methods.prune.adaptive import allocate  # noqa: E402
from slmctl.methods.prune.depth import BoundaryCos, choose_layers  # noqa: E402
from slmctl.methods.prune.masks import check_nm, nm_mask, parse_pattern, unstructured_mask  # noqa: E402
from slmctl.methods.prune.width_importance import keep_heads  # noqa: E402
from slmctl.surgery.layers import drop_layers, renamed_config  # noqa: E402
from conftest import FAST, _prune, _state  # noqa: E402  (shared helpers)

LINEAR_KEYS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _linears(state: dict) -> dict:
    return {n: t for n, t in state.items() if n.endswith(".weight") and any(k in n for k in LINEAR_KEYS)}


def _runs(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = m(input_ids=torch.arange(1, 17).unsqueeze(0)).logits
    assert torch.isfinite(logits).all()
    return logits


# ---------------------------------------------------------------- masks (pure)
def test_unstructured_mask_is_exact_per_row_and_per_matrix():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(16, 40, generator=g)
    m = unstructured_mask(s, 0.25)
    assert (m.sum(1) == 10).all()
    kept_min = s.masked_fill(m, float("inf")).min(1).values
    pruned_max = s.masked_fill(~m, float("-inf")).max(1).values
    assert (pruned_max <= kept_min).all()  # the lowest scores of each row went
    mm = unstructured_mask(s, 0.3, per_row=False)
    assert int(mm.sum()) == round(16 * 40 * 0.3)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_prunes_exactly_m_minus_n_per_group(n, m):
    s = torch.rand(8, 32, generator=torch.Generator().manual_seed(1))
    mask = nm_mask(s, n, m)
    assert (mask.reshape(8, -1, m).sum(-1) == m - n).all()
    assert check_nm(s.masked_fill(mask, 0), n, m)
    assert not check_nm(s, n, m)


def test_pattern_parsing_and_errors():
    assert parse_pattern("2:4") == (2, 4)
    assert parse_pattern(None) is None
    for bad in ("4:2", "2-4", "0:4"):
        with pytest.raises(UsageError):
            parse_pattern(bad)
    with pytest.raises(UsageError, match="multiple of M"):
        nm_mask(torch.rand(2, 6), 2, 4)


def test_equal_scores_give_a_deterministic_mask():
    s = torch.ones(4, 8)
    a, b = unstructured_mask(s, 0.5), unstructured_mask(s.clone(), 0.5)
    assert torch.equal(a, b)
    assert torch.equal(a[0], torch.tensor([True] * 4 + [False] * 4))  # ties go by position


def test_wanda_without_activation_signal_equals_row_magnitude():
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(2))
    out = UNSTRUCTURED.get("wanda")(w, {"sq_norm": torch.ones(16)}, sparsity=0.5)
    ref = w.masked_fill(unstructured_mask(w.abs(), 0.5), 0)
    assert torch.equal(out, ref)


def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(32, 64, generator=g)
    # correlated inputs with uneven scales: the case the OBS update is for
    x = torch.randn(512, 64, generator=g) @ torch.randn(64, 64, generator=g) * torch.linspace(0.1, 3, 64)
    h = 2 * x.t() @ x / x.shape[0]
    errs = {}
    for name, stats in (("magnitude", None), ("wanda", {"sq_norm": (x ** 2).sum(0)}), ("sparsegpt", {"hessian": h})):
        p = UNSTRUCTURED.get(name)(w, stats, sparsity=0.5)
        assert abs(float((p == 0).float().mean()) - 0.5) < 0.02
        errs[name] = float(((x @ (w - p).t()) ** 2).mean())
    assert errs["sparsegpt"] < errs["wanda"] < errs["magnitude"]
    p24 = UNSTRUCTURED.get("sparsegpt")(w, {"hessian": h}, sparsity=0.5, pattern=(2, 4))
    assert check_nm(p24, 2, 4)


def test_allocate_holds_the_mean_and_orders_by_importance():
    scores = [0.1, 0.5, 0.2, 0.9, 0.4]
    r = allocate(scores, 0.5, lam=0.1)
    assert abs(sum(r) / len(r) - 0.5) < 1e-9
    assert max(r) - min(r) == pytest.approx(0.2)
    order = sorted(range(5), key=lambda i: scores[i])
    assert [r[i] for i in order] == sorted(r, reverse=True)  # more important -> pruned less
    assert allocate([1.0, 1.0], 0.3) == [0.3, 0.3]


# ---------------------------------------------------------------- depth / width helpers (pure)
def test_drop_layers_renumbers_and_cuts_per_layer_arrays():
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(4)] + ["model.embed_tokens.weight"]
    r = drop_layers(names, [1, 2], 4)
    assert r["model.layers.0.mlp.up_proj.weight"] == "model.layers.0.mlp.up_proj.weight"
    assert r["model.layers.1.mlp.up_proj.weight"] is None and r["model.layers.2.mlp.up_proj.weight"] is None
    assert r["model.layers.3.mlp.up_proj.weight"] == "model.layers.1.mlp.up_proj.weight"
    assert r["model.embed_tokens.weight"] == "model.embed_tokens.weight"
    cfg = {"num_hidden_layers": 4, "layer_types": ["a", "b", "c", "d"], "architectures": ["X"] * 4,
           "max_window_layers": 3, "slmctl_per_layer": {"intermediate_size": [1, 2, 3, 4]}}
    new = renamed_config(cfg, [1, 2])
    assert new["num_hidden_layers"] == 2 and new["layer_types"] == ["a", "d"]
    assert new["slmctl_per_layer"]["intermediate_size"] == [1, 4]
    assert new["architectures"] == ["X"] * 4 and new["max_window_layers"] == 1
    with pytest.raises(UsageError):
        drop_layers(names, [0, 1, 2, 3], 4)


def test_block_influence_and_angular_choose_the_quietest_layers():
    base = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(4))
    acts = [base]
    for delta in (1.0, 0.0, 0.05, 2.0):  # layer 1 is an identity, layer 2 nearly one
        acts.append(acts[-1] + delta * torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(5)))
    st = BoundaryCos(4, 2)
    for a in acts:
        st.push([a])
    bi = st.block_influence()
    assert abs(bi[1]) < 1e-6 and bi[2] < bi[0] and bi[2] < bi[3]
    assert choose_layers(4, 2, "bi", st) == [1, 2]
    assert choose_layers(4, 2, "angular", st) == [1, 2]
    assert choose_layers(4, 1, "last", None) == [3]


def test_keep_heads_is_gqa_consistent():
    score = torch.tensor([5.0, 1.0, 2.0, 9.0, 3.0, 4.0, 0.5, 8.0, 7.0])  # 9 heads, 3 kv groups of 3
    q, kv = keep_heads(score, 9, 3, 0.34)
    assert kv == [0, 1, 2] and q == [0, 2, 3, 5, 7, 8]  # the best 2 of each group, in order
    q, kv = keep_heads(torch.tensor([1.0, 5.0, 2.0, 4.0]), 4, 4, 0.5)  # MHA: whole groups go
    assert q == kv == [1, 3]


# ---------------------------------------------------------------- end to end on tiny models
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_unstructured_output_loads_with_exact_sparsity(tiny_llama, text_file, tmp_path, method):
    out = tmp_path / method
    rep = _prune(tiny_llama, out, text_file, method=method, sparsity=0.5)
    before, after = _state(tiny_llama), _state(out)
    assert set(before) == set(after)
    for name, w in _linears(after).items():
        zeros = (w == 0).sum(1)
        if method == "wanda":
            assert (zeros == w.shape[1] // 2).all(), name  # exact per output row
        elif method == "magnitude":
            assert int(zeros.sum()) == w.numel() // 2, name  # exact per matrix
        else:
            assert abs(int(zeros.sum()) - w.numel() // 2) <= w.shape[0], name
        if method != "sparsegpt":  # the kept weights are untouched (no update)
            keep = w != 0
            assert torch.equal(w[keep], before[name][keep])
    for name in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.equal(before[name], after[name])
    assert abs(rep["sparsity"] - 0.5) < 0.01
    assert rep["parameters_after"] == rep["parameters_before"]
    assert rep["quality"]["ppl_after"] > 0 and rep["quality"]["ppl_before"] > 0
    _runs(out)


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_output_has_the_pattern_in_every_group(tiny_llama, text_file, tmp_path, pattern):
    n, m = parse_pattern(pattern)
    out = tmp_path / "nm"
    rep = _prune(tiny_llama, out, text_file, method="wanda", pattern=pattern, eval_windows=0)
    for name, w in _linears(_state(out)).items():
        zeros = (w.reshape(w.shape[0], -1, m) == 0).sum(-1)
        assert (zeros >= m - n).all(), name  # every 4-block has at least 2 zeros for 2:4
    prov = json.loads((out / "slmctl.json").read_text())
    assert prov["verb"] == "prune" and prov["recipe"]["sparsity"]["kind"] == pattern
    assert rep["quality"] is None
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        inner = json.loads(f.metadata()["slmctl.provenance"])
    assert inner["recipe"]["sparsity"]["achieved"] == pytest.approx(1 - n / m)


def test_nm_on_gpt2_conv1d_runs_along_the_input_dimension(tiny_models, text_file, tmp_path):
    out = tmp_path / "gpt2"
    _prune(tiny_models["gpt2"], out, text_file, method="sparsegpt", pattern="2:4", eval_windows=0)
    st = _state(out)
    w = st["transformer.h.0.mlp.c_fc.weight"]  # Conv1D stores (in, out): groups run down the columns
    assert w.shape == (32, 64) and check_nm(w.t().contiguous(), 2, 4)
    assert torch.equal(st["transformer.wte.weight"], _state(tiny_models["gpt2"])["transformer.wte.weight"])
    _runs(out)


def _whole_model(src, text_file, layer_fn):
    """Reference for the layer engine: the whole model in memory, each decoder layer's inputs taken from
    full forwards (batches of 8 windows) after the layers before it were changed by ``layer_fn(i, layer)``,
    which registers its hooks and returns a function to call once the forwards are done."""
    from slmctl import api
    from slmctl.eval.backends import load_tokenizer
    from slmctl.pipelines.prune import calibration_ids, load_model

    art, path = api.load_artifact(str(src))
    model = load_model(art, path)
    ids = calibration_ids(load_tokenizer(art), data=str(text_file), field="text", samples=FAST["samples"],
                          seqlen=FAST["seqlen"], seed=0)
    layers = model.transformer.h if hasattr(model, "transformer") else model.model.layers
    for i, layer in enumerate(layers):
        done = layer_fn(i, layer)
        with torch.no_grad():
            for c in range(0, len(ids), 8):
                model(input_ids=ids[c:c + 8], use_cache=False)
        done()
    return model, art


@pytest.mark.parametrize("family", ["qwen2", "gpt2", "per_layer"])
def test_layer_engine_agrees_with_the_whole_model(tiny_models, text_file, tmp_path, family):
    """The one-layer-in-memory engine (slmctl.layerwise) and a whole-model reference give the same SparseGPT
    result (GPT-2: Conv1D weights and the causal mask its blocks get positionally; per-layer head/FFN sizes)."""
    from slmctl.layerwise import linear_weight, linears, set_linear_weight
    from slmctl.pipelines.prune import _finish_stats, _stats_adder

    if family == "per_layer":
        src = tmp_path / "per_layer"
        _prune(tiny_models["llama"], src, text_file, method="width", mlp_ratio=0.25, heads_ratio=0.25,
               adaptive=True, adaptive_lambda=0.2, eval_windows=0)
        assert "slmctl_per_layer" in json.loads((src / "config.json").read_text())
    else:
        src = tiny_models[family]
    a = _prune(src, tmp_path / "stream", text_file, method="sparsegpt", eval_windows=0)

    def sparsegpt(i, layer):
        lin = linears(layer)
        stats = {nm: {} for nm in lin}
        add = _stats_adder("hessian", stats)
        hs = [m.register_forward_pre_hook(lambda mod, x, nm=nm: add(nm, x[0])) for nm, m in lin.items()]

        def done():
            for h in hs:
                h.remove()
            _finish_stats(stats)
            for nm, m in lin.items():
                set_linear_weight(m, UNSTRUCTURED.get("sparsegpt")(linear_weight(m), stats[nm], sparsity=0.5,
                                                                   pattern=None))
        return done

    model, _ = _whole_model(src, text_file, sparsegpt)
    sb = model.state_dict()
    sa = _state(tmp_path / "stream")
    assert set(sa) <= set(sb)
    zeros = sum(int((sb[k] == 0).sum()) for k in sa if any(k in n for n in _linear_names(model)))
    params = sum(sb[k].numel() for k in sa if any(k in n for n in _linear_names(model)))
    assert a["recipe"]["sparsity"]["achieved"] == pytest.approx(zeros / params)
    for k in sa:
        assert torch.equal(sa[k] == 0, sb[k] == 0), k  # same masks
        assert torch.allclose(sa[k], sb[k], atol=1e-5), k


def _linear_names(model) -> list[str]:
    from slmctl.layerwise import is_linear

    return [f"{n}.weight" for n, m in model.named_modules() if is_linear(m) and n != "lm_head"]


def test_width_engine_agrees_with_the_whole_model(tiny_models, text_file, tmp_path):
    from slmctl.methods.prune.width_importance import Importance, head_activations, keep_count, keep_heads, top_k
    from slmctl.surgery.width import shrink

    src = tiny_models["llama"]
    a = _prune(src, tmp_path / "stream", text_file, method="width", heads_ratio=0.5, mlp_ratio=0.5, eval_windows=0)
    cfg = json.loads((Path(src) / "config.json").read_text())
    H, KV, inter = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]
    imp_h, imp_m = {}, {}

    def importance(i, layer):
        imp_h[i], imp_m[i] = Importance(), Importance()
        hs = [layer.self_attn.o_proj.register_forward_pre_hook(lambda m, x: imp_h[i].add(head_activations(x[0], H))),
              layer.mlp.down_proj.register_forward_pre_hook(lambda m, x: imp_m[i].add(x[0]))]
        return lambda: [h.remove() for h in hs]

    _whole_model(src, text_file, importance)
    mult = 32 if inter % 32 == 0 and inter >= 128 else 1
    plan = {"heads": {i: keep_heads(imp_h[i].value(), H, KV, 0.5) for i in imp_h},
            "mlp": {i: top_k(imp_m[i].value(), keep_count(inter, 0.5, mult)) for i in imp_m}, "hidden": None}
    assert [r["heads_kept"] for r in a["layers"]] == [plan["heads"][i][0] for i in sorted(plan["heads"])]
    sa, sb = _state(tmp_path / "stream"), shrink(_state(Path(src)), cfg, plan)[0]
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and set(sa) == set(sb)


def test_same_seed_gives_identical_outputs(tiny_llama, text_file, tmp_path):
    a = _prune(tiny_llama, tmp_path / "a", text_file, method="sparsegpt", eval_windows=0)
    b = _prune(tiny_llama, tmp_path / "b", text_file, method="sparsegpt", eval_windows=0)
    assert a["recipe"] == b["recipe"]
    sa, sb = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_adaptive_keeps_the_average(tiny_llama, text_file, tmp_path):
    rep = _prune(tiny_llama, tmp_path / "ad", text_file, method="wanda", sparsity=0.5, adaptive=True,
                 adaptive_metric="bi", adaptive_lambda=0.1, eval_windows=0)
    targets = [r["target"] for r in rep["layers"]]
    assert targets != [0.5, 0.5] and sum(targets) / 2 == pytest.approx(0.5)
    for r, t in zip(rep["layers"], targets):  # exact up to rounding k = round(t * row length), rows of >= 32
        assert r["sparsity"] == pytest.approx(t, abs=1 / 64)
    with pytest.raises(UsageError, match="pattern"):
        _prune(tiny_llama, tmp_path / "x", text_file, method="wanda", pattern="2:4", adaptive=True)


@pytest.mark.parametrize("family", ["qwen2", "gemma2", "gpt2"])
def test_depth_drops_and_renumbers_layers(tiny_models, text_file, tmp_path, family):
    src = tiny_models[family]
    out = tmp_path / family
    rep = _prune(src, out, text_file, method="depth", layers=1, eval_windows=0)
    dropped = rep["recipe"]["layers_removed"]
    assert len(dropped) == 1
    kept = 1 - dropped[0]
    cfg = json.loads((out / "config.json").read_text())
    src_cfg = json.loads((src / "config.json").read_text())
    key = "n_layer" if family == "gpt2" else "num_hidden_layers"
    assert cfg[key] == src_cfg[key] - 1
    if "layer_types" in src_cfg:
        assert cfg["layer_types"] == [src_cfg["layer_types"][kept]]
    before, after = _state(src), _state(out)
    prefix = "transformer.h" if family == "gpt2" else "model.layers"
    assert not any(n.startswith(f"{prefix}.1.") for n in after)
    for n, t in after.items():  # layer 0 of the output is the kept layer, bit for bit
        old = n.replace(f"{prefix}.0.", f"{prefix}.{kept}.")
        assert torch.equal(t, before[old]), n
    _runs(out)


def test_depth_last_needs_no_calibration(tiny_llama, text_file, tmp_path):
    rep = _prune(tiny_llama, tmp_path / "last", text_file, method="depth", ratio=0.5, depth_metric="last",
                 eval_windows=0)
    assert rep["recipe"]["layers_removed"] == [1] and rep["recipe"]["calibration"] is None


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma2"])
def test_width_heads_and_mlp_give_a_smaller_dense_model(tiny_models, text_file, tmp_path, family):
    src = tiny_models[family]
    out = tmp_path / family
    rep = _prune(src, out, text_file, method="width", heads_ratio=0.5, mlp_ratio=0.25, eval_windows=0)
    cfg = json.loads((out / "config.json").read_text())
    src_cfg = json.loads((src / "config.json").read_text())
    hd = src_cfg.get("head_dim") or src_cfg["hidden_size"] // src_cfg["num_attention_heads"]
    assert cfg["num_attention_heads"] == 2 and cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0
    assert cfg["intermediate_size"] == 48 and cfg["head_dim"] == hd and "slmctl_per_layer" not in cfg
    before, after = _state(src), _state(out)
    for i in range(2):
        p = f"model.layers.{i}."
        assert after[p + "self_attn.q_proj.weight"].shape == (cfg["num_attention_heads"] * hd, 32)
        assert after[p + "self_attn.k_proj.weight"].shape == (cfg["num_key_value_heads"] * hd, 32)
        assert after[p + "self_attn.o_proj.weight"].shape == (32, cfg["num_attention_heads"] * hd)
        assert after[p + "mlp.down_proj.weight"].shape == (32, 48)
        # kept query heads are original heads, one per kv group (GQA consistent)
        q_keep = rep["layers"][i]["heads_kept"]
        assert len(q_keep) == 2 and q_keep[0] // 2 == 0 and q_keep[1] // 2 == 1
        orig = before[p + "self_attn.q_proj.weight"].reshape(4, hd, 32)
        assert torch.equal(after[p + "self_attn.q_proj.weight"].reshape(2, hd, 32), orig[q_keep])
    assert rep["parameters_after"] < rep["parameters_before"]
    assert (not any((t == 0).all() for t in after.values()))  # dense: no zeroed-out tensors
    _runs(out)


def test_width_hidden_channels(tiny_llama, text_file, tmp_path):
    out = tmp_path / "hidden"
    rep = _prune(tiny_llama, out, text_file, method="width", hidden_ratio=0.25)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hidden_size"] == 24 and cfg["head_dim"] == 8
    st = _state(out)
    assert st["model.embed_tokens.weight"].shape[1] == 24 and st["model.norm.weight"].shape == (24,)
    assert st["model.layers.1.mlp.down_proj.weight"].shape == (24, 64)
    assert rep["quality"]["ppl_after"] > 0
    _runs(out)


def test_width_adaptive_writes_per_layer_sizes_and_slmctl_loads_them(tiny_llama, text_file, tmp_path):
    from slmctl.api import load_artifact
    from slmctl.pipelines.prune import load_model

    out = tmp_path / "per_layer"
    rep = _prune(tiny_llama, out, text_file, method="width", mlp_ratio=0.25, adaptive=True, adaptive_lambda=0.2)
    cfg = json.loads((out / "config.json").read_text())
    sizes = cfg["slmctl_per_layer"]["intermediate_size"]
    assert len(sizes) == 2 and sizes[0] != sizes[1] and sum(sizes) / 2 == pytest.approx(48, abs=1)
    st = _state(out)
    for i in range(2):
        assert st[f"model.layers.{i}.mlp.down_proj.weight"].shape == (32, sizes[i])
    assert rep["quality"]["ppl_after"] > 0
    art, path = load_artifact(str(out))
    m = load_model(art, path)
    with torch.no_grad():
        assert torch.isfinite(m(input_ids=torch.arange(1, 9).unsqueeze(0)).logits).all()


def test_width_rejects_unsupported_family(tiny_models, text_file, tmp_path):
    from slmctl.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match="lfm2"):  # phi3's fused projections are supported since issue 22
        _prune(tiny_models["lfm2"], tmp_path / "x", text_file, method="width", mlp_ratio=0.25)
    with pytest.raises(UnsupportedError, match="hidden"):
        _prune(tiny_models["gemma2"], tmp_path / "y", text_file, method="width", hidden_ratio=0.25)


# ---------------------------------------------------------------- CLI
def test_cli_prints_only_the_path_and_gates(cli, tiny_llama, text_file, tmp_path):
    out = tmp_path / "cli"
    common = ["--data", str(text_file), "--samples", "4", "--seqlen", "32", "--eval-ctx", "32", "--eval-windows", "1"]
    code, stdout, stderr = cli("prune", str(tiny_llama), "-o", str(out), "--method", "wanda", *common)
    assert code == 0 and stdout.strip() == str(out)
    assert "perplexity" in stderr and "layer   0: sparsity 0.5000" in stderr
    code, stdout, stderr = cli("prune", str(tiny_llama), "-o", str(out), "--method", "wanda", *common)
    assert code == 1 and "already exists" in stderr and "--force" in stderr
    code, stdout, stderr = cli("prune", str(tiny_llama), "-o", str(out), "--force", "--json", "--method", "magnitude",
                               "--sparsity", "0.9", "--max-ppl-increase", "-100", *common)
    assert code == 3 and "gate failed" in stderr
    doc = json.loads(stdout)
    assert doc["gates"]["passed"] is False and doc["method"] == "magnitude" and (out / "config.json").is_file()
    code, _, stderr = cli("prune", str(tiny_llama), "-o", str(tmp_path / "z"), "--method", "wandaa")
    assert code == 2 and "did you mean 'wanda'" in stderr
    code, _, stderr = cli("prune", str(tiny_llama), "-o", str(tmp_path / "z"), "--method", "depth")
    assert code == 2 and "--layers" in stderr


# ---------------------------------------------------------------- the real sample (make test-slow)
@pytest.mark.slow
def test_real_sample_wanda_beats_magnitude(tmp_path):
    from slmctl import api

    kw = dict(samples=16, seqlen=256, eval_ctx=256, eval_windows=4)
    mag = api.prune("sample:smollm2-135m", tmp_path / "mag", method="magnitude", sparsity=0.5, **kw)
    wan = api.prune("sample:smollm2-135m", tmp_path / "wan", method="wanda", sparsity=0.5, **kw)
    assert wan["quality"]["ppl_after"] < mag["quality"]["ppl_after"]
    _runs(tmp_path / "wan")


@pytest.mark.slow
def test_real_sample_block_influence_beats_dropping_the_last_layers(tmp_path):
    from slmctl import api

    kw = dict(samples=8, seqlen=256, eval_ctx=256, eval_windows=4)
    bi = api.prune("sample:smollm2-135m", tmp_path / "bi", method="depth", ratio=0.25, depth_metric="bi", **kw)
    last = api.prune("sample:smollm2-135m", tmp_path / "last", method="depth", ratio=0.25, depth_metric="last", **kw)
    assert bi["recipe"]["layers_after"] == 22 == last["recipe"]["layers_after"]
    assert bi["quality"]["ppl_after"] < last["quality"]["ppl_after"]
    _runs(tmp_path / "bi")
