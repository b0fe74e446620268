"""The OpenVINO plugin on its own: IR export matches transformers, and profiling runs on the IR."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("openvino")
os.environ.setdefault("SLMCTL_LOAD_PLUGINS", "")  # only what the tests register


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama (hidden 32, 2 layers) built from a config; no tokenizer is needed to profile."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny") / "llama"
    cfg = AutoConfig.for_model("llama", vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                               tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    return folder


@pytest.fixture
def registered():
    import slmctl_openvino
    from slmctl.targets import manager as m
    from slmctl.targets import register_plugin, unregister_plugin

    m.reset()
    name = register_plugin(slmctl_openvino, "openvino")
    yield name
    unregister_plugin(name)
    m.reset()


def test_export_ir_matches_transformers(tiny, tmp_path):
    import openvino as ov
    import torch
    from slmctl import api
    from slmctl_openvino import IR_NAME, OpenVINOTarget
    from transformers import AutoModelForCausalLM

    art, _ = api.load_artifact(str(tiny))
    out = OpenVINOTarget().export(art, tmp_path / "ir")
    assert (out / IR_NAME).is_file() and (out / "openvino_model.bin").is_file() and (out / "config.json").is_file()
    assert json.loads((out / "slmctl.json").read_text())["format"] == "openvino-ir"
    ids = np.array([[5, 9, 1, 33, 70, 2, 8]] * 2, dtype=np.int64)
    got = ov.Core().compile_model(str(out / IR_NAME), "CPU")(ids)[0]
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(str(tiny)).eval()(torch.tensor(ids)).logits.numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-2, rtol=1e-2)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.9


def test_profile_on_openvino(tiny, registered):
    from slmctl import api

    rep = api.profile(str(tiny), target="openvino", ctx=[8, 16], batch=[1, 2], repeats=2, warmup=1,
                      decode_tokens=2, bandwidth=True)
    assert rep["target"] == "openvino" and rep["device"] == "cpu" and rep["kv_cache"] is False
    assert [r["ctx"] for r in rep["prefill"]] == [8, 16] and [r["batch"] for r in rep["decode"]] == [1, 2]
    for r in rep["prefill"] + rep["decode"]:
        assert 0 < r["p50_ms"] <= r["p95_ms"]
    assert rep["weight_bytes"] > 0 and 0 < rep["efficiency"]["fraction"]
    assert any("re-runs the whole sequence" in n for n in rep["notes"])


def test_listed_with_formats(registered):
    from slmctl.targets import list_targets

    t, plugin = list_targets()["openvino"]
    assert plugin == "openvino"
    info = t.info()
    assert info["formats"] == ["hf", "onnx"] and info["exports"] == "openvino-ir" and "cpu" in info["devices"]
