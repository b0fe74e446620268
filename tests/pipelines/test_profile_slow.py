"""Profiles of the real SmolLM2-135M sample (make test-slow). Timings are never asserted, only their shape."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_plugins")]  # no plugin manager state leaks in


def _check(rep):
    for r in rep["prefill"] + rep["decode"]:
        assert 0 < r["p50_ms"] <= r["p95_ms"]
    eff = rep["efficiency"]
    assert eff is not None and eff["fraction"] > 0
    assert eff["tokens_per_s"] < 2 * eff["roofline_tokens_per_s"]  # nothing reads weights faster than memory allows


def test_sample_on_torch():
    from slmctl import api

    rep = api.profile("sample:smollm2-135m", target="torch", ctx=[32], batch=[1, 2], repeats=3, warmup=1,
                      decode_tokens=4)
    _check(rep)
    assert rep["parameters"] == 134_515_008
    assert rep["weight_bytes"] == 4 * rep["parameters"]  # fp32, tied embeddings: all read each step
    assert [r["module"] for r in rep["layers"]["decode"]][1:31] == [f"layer.{i}" for i in range(30)]


def test_sample_gguf_on_llamacpp():
    pytest.importorskip("llama_cpp")
    from slmctl import api

    rep = api.profile("sample:smollm2-135m-gguf", target="llamacpp", ctx=[32], batch=[1], repeats=3, warmup=1,
                      decode_tokens=4)
    _check(rep)
    assert rep["format"] == "gguf" and rep["kv_cache"] is True
    # Q4_1 weights: far fewer bytes per token than fp32
    assert rep["weight_bytes"] < rep["parameters"] * 4 / 3


def test_sweep_at_a_small_budget_from_the_sample():
    from slmctl import api

    rep = api.profile(sweep="depth-width", params="30M", base="sample:smollm2-135m", target="torch",
                      depths=[4, 16], batch=[1, 8], ctx=[16], repeats=2, warmup=1, decode_tokens=2)
    assert [c["layers"] for c in rep["configs"]] == [4, 16]
    for c in rep["configs"]:
        assert abs(c["params"] - 30_000_000) <= 900_000 and c["head_dim"] == 64
    assert any(c["pareto"] for c in rep["configs"]) and rep["effect"] is not None
