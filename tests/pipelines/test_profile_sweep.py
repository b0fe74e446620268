"""Depth-width sweeps: equal-parameter shapes, the Pareto front, the budget filter, the plot."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

SMOLLM2 = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
           "num_key_value_heads": 3, "head_dim": 64, "num_hidden_layers": 30, "vocab_size": 49152,
           "tie_word_embeddings": True, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5}


pytestmark = pytest.mark.usefixtures("no_plugins")  # conftest: no target plugin manager state leaks in


@pytest.mark.parametrize("text, n", [("135M", 135_000_000), ("30m", 30_000_000), ("1.5B", 1_500_000_000),
                                     ("500k", 500_000), (" 2e6 ", 2_000_000), (7, 7)])
def test_parse_count(text, n):
    from slmctl.profiling.sweep import parse_count

    assert parse_count(text) == n


def test_parse_count_rejects_junk():
    from slmctl.errors import UsageError
    from slmctl.profiling.sweep import parse_count

    with pytest.raises(UsageError, match="cannot read 'lots'"):
        parse_count("lots")


def test_candidates_match_the_budget_with_legal_heads():
    from slmctl.profiling.sweep import candidates, count_params

    budget = 135_000_000
    cands, notes = candidates(SMOLLM2, budget, (6, 12, 24, 48))
    assert [c["layers"] for c in cands] == [6, 12, 24, 48], notes
    for c in cands:
        assert abs(c["params"] - budget) <= 0.03 * budget
        assert c["params"] == count_params(c["config"])  # the reported count is the real one
        assert c["hidden"] == c["heads"] * 64 and c["head_dim"] == 64
        assert c["heads"] % c["kv_heads"] == 0
        assert c["intermediate"] % 16 == 0 and c["intermediate"] > 0
        assert c["config"]["num_hidden_layers"] == c["layers"]
    widths = [c["hidden"] for c in cands]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]  # deeper is thinner


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral", "gemma2"])
def test_candidates_across_families(tiny_models, family):
    from slmctl.profiling.sweep import candidates, count_params, load_base_config

    base, _ = load_base_config(str(tiny_models[family]))
    budget = 2 * count_params(base)
    cands, notes = candidates(base, budget, (2, 4))
    assert cands, notes
    for c in cands:
        assert abs(c["params"] - budget) <= 0.03 * budget


def test_sweep_needs_a_llama_style_base(tiny_models):
    from slmctl.errors import UnsupportedError
    from slmctl.profiling.sweep import candidates, load_base_config

    base, _ = load_base_config(str(tiny_models["gpt2"]))
    with pytest.raises(UnsupportedError, match="lacks hidden_size"):
        candidates(base, 100_000)


pts = st.lists(st.tuples(st.integers(1, 20), st.integers(1, 20)), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(pts)
def test_pareto_front_properties(points):
    from slmctl.profiling.sweep import pareto

    flags = pareto([(float(a), float(b)) for a, b in points])
    front = [p for p, f in zip(points, flags) if f]
    assert front  # a non-empty set always has a non-dominated point

    def dominates(p, q):
        return p[0] <= q[0] and p[1] <= q[1] and p != q

    for p in front:
        assert not any(dominates(q, p) for q in points)
    for p, f in zip(points, flags):
        if not f:
            assert any(dominates(q, p) for q in front)


def test_sweep_cli_end_to_end(cli, tiny_llama, tmp_path):
    png = tmp_path / "sweep.png"
    code, out, err = cli("profile", "--sweep", "depth-width", "--params", "60k", "--base", str(tiny_llama),
                         "--depths", "1,2,4", "--ctx", "8", "--batch", "1,4", "--repeats", "2", "--warmup", "0",
                         "--decode-tokens", "2", "--budget-ms", "1e9", "--json", "--plot", str(png),
                         "-o", str(tmp_path / "sweep.json"))
    assert code == 0, err
    rep = json.loads(out)
    assert rep["sweep"] == "depth-width" and rep["params_target"] == 60_000 and rep["target"] == "torch"
    assert [c["layers"] for c in rep["configs"]] == [1, 2, 4]
    for c in rep["configs"]:
        assert abs(c["params"] - 60_000) <= 1800
        assert set(c["decode"]) == {"1", "4"}
        assert c["decode"]["4"]["tokens_per_s"] == pytest.approx(4000 / c["decode"]["4"]["p50_ms"])
        assert c["meets_budget"] is True  # a budget of 1e9 ms is met by everything
    front = [f"{c['layers']}x{c['hidden']}" for c in rep["configs"] if c["pareto"]]
    assert front == rep["pareto_front"] and front
    # no front shape is beaten on both batch sizes
    for c in rep["configs"]:
        if c["pareto"]:
            for o in rep["configs"]:
                assert not (o["decode"]["1"]["p50_ms"] < c["decode"]["1"]["p50_ms"]
                            and o["decode"]["4"]["p50_ms"] < c["decode"]["4"]["p50_ms"])
    assert rep["effect"]["batch"] == 1 and rep["effect"]["deepest_over_shallowest"] == pytest.approx(
        rep["configs"][-1]["decode"]["1"]["p50_ms"] / rep["configs"][0]["decode"]["1"]["p50_ms"])
    assert png.read_bytes()[:4] == b"\x89PNG" and (tmp_path / "sweep.svg").is_file()
    assert json.loads((tmp_path / "sweep.json").read_text())["configs"] == rep["configs"]


def test_sweep_table_and_budget_filter(cli, tiny_llama, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text((tiny_llama / "config.json").read_text())
    code, out, err = cli("profile", "--sweep", "depth-width", "--budget", "60k", "--base", str(cfg), "--depths", "1,2",
                         "--ctx", "8", "--batch", "1", "--repeats", "1", "--warmup", "0", "--decode-tokens", "1",
                         "--budget-ms", "0.000001")
    assert code == 0, err
    assert "depth-width sweep at 60,000 parameters" in out
    assert "0 shape(s) meet the 1e-06 ms batch-1 decode budget" in out
    assert out.splitlines()[2].split()[:2] == ["layers", "hidden"]


def test_sweep_errors(cli, tiny_llama):
    code, _, err = cli("profile", "--sweep", "depth-width", "--params", "60k")
    assert code == 2 and "needs a base model or config" in err
    code, _, err = cli("profile", "--sweep", "width-only", "--params", "60k", "--base", str(tiny_llama))
    assert code == 2 and "unknown sweep 'width-only'" in err
    code, _, err = cli("profile", "--sweep", "depth-width", "--params", "10", "--base", str(tiny_llama))
    assert code == 2 and "no shape of 10 parameters" in err
    code, _, err = cli("profile", "--sweep", "depth-width", "--params", "60k", "--base", str(tiny_llama),
                       "--target", "onnxruntime", "--depths", "2", "--repeats", "1")
    assert code == 1 and "cannot build a model from a config" in err
