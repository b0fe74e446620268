"""slmctl profile: latency figures, memory, bandwidth, tables/JSON/CSV/plots, and the onnxruntime target."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

FAST = ("--ctx", "8,16", "--batch", "1,2", "--repeats", "3", "--warmup", "1", "--decode-tokens", "3")


pytestmark = pytest.mark.usefixtures("no_plugins")  # conftest: no target plugin manager state leaks in


@pytest.fixture(scope="module")
def llama_profile(tiny_llama):
    from slmctl import api

    return api.profile(str(tiny_llama), target="torch", ctx=[8, 16], batch=[1, 2], repeats=3, warmup=1,
                       decode_tokens=3)


def test_profile_reports_every_measurement(llama_profile, tiny_llama):
    rep = llama_profile
    assert [r["ctx"] for r in rep["prefill"]] == [8, 16]
    assert [r["batch"] for r in rep["decode"]] == [1, 2]
    for r in rep["prefill"] + rep["decode"]:
        assert r["n"] == 3
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p95_ms"] <= r["max_ms"]
        assert r["p95_over_p50"] == pytest.approx(r["p95_ms"] / r["p50_ms"])
    for r in rep["prefill"]:
        assert r["tokens_per_s"] == pytest.approx(r["ctx"] * 1000 / r["p50_ms"])
    for r in rep["decode"]:
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * 1000 / r["p50_ms"])
        assert r["steps"] == 3 and r["ctx"] == 8
    assert [t["p50_ms"] for t in rep["ttft"]] == [r["p50_ms"] for r in rep["prefill"]]
    assert rep["kv_cache"] is True and rep["device"] in ("cpu", "cuda")


def test_profile_weights_and_efficiency(llama_profile, tiny_llama):
    from safetensors import safe_open

    rep = llama_profile
    with safe_open(str(tiny_llama / "model.safetensors"), "np") as f:
        n = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    # the tiny llama ties its embeddings: every parameter is read each decode step, fp32
    assert rep["parameters"] == n
    assert rep["weight_bytes"] == 4 * n
    eff, bw = rep["efficiency"], rep["bandwidth"]
    assert bw["gb_per_s"] > 0 and bw["kernel"]
    b1 = rep["decode"][0]
    assert eff["achieved_gb_per_s"] == pytest.approx(rep["weight_bytes"] * b1["tokens_per_s"] / 1e9)
    assert eff["fraction"] == pytest.approx(eff["achieved_gb_per_s"] / bw["gb_per_s"])
    assert eff["roofline_tokens_per_s"] == pytest.approx(bw["gb_per_s"] * 1e9 / rep["weight_bytes"])


def test_profile_memory_and_layers(llama_profile):
    rep = llama_profile
    m = rep["memory"]
    assert m["peak_rss_mb"] >= m["rss_after_load_mb"] > 0
    assert m["peak_over_baseline_mb"] == pytest.approx(m["peak_rss_mb"] - m["rss_before_load_mb"])
    lt = rep["layers"]
    names = [r["module"] for r in lt["prefill"]]
    assert names == ["embed", "layer.0", "layer.1", "final_norm", "lm_head", "other"]
    for phase in ("prefill", "decode"):
        assert sum(r["pct"] for r in lt[phase]) == pytest.approx(100.0, abs=0.5)
        assert all(r["ms"] >= 0 for r in lt[phase])
        assert lt[phase][1]["ms"] > 0


def test_profile_cli_table_json_csv(cli, tiny_models, tmp_path):
    model = str(tiny_models["gpt2"])  # a second family, without logits_to_keep quirks
    code, out, err = cli("profile", model, *FAST, "--no-bandwidth", "--json", "-o", str(tmp_path / "r.json"))
    assert code == 0, err
    rep = json.loads(out)
    assert json.loads((tmp_path / "r.json").read_text()) == rep
    assert rep["layers"]["prefill"][1]["module"] == "layer.0"
    code, out, err = cli("profile", model, *FAST, "--no-bandwidth", "--csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["phase"], r["ctx"], r["batch"]) for r in rows] == [
        ("prefill", "8", "1"), ("prefill", "16", "1"), ("decode", "8", "1"), ("decode", "8", "2")]
    assert all(float(r["p95_ms"]) >= float(r["p50_ms"]) > 0 for r in rows)
    code, out, err = cli("profile", model, *FAST, "--no-layers")
    assert code == 0, err
    assert "prefill / TTFT" in out and "p95 ms" in out and "decode efficiency at batch 1" in out
    assert "per module" not in out
    assert "prefill ctx 8" in err  # logs on stderr, not stdout
    assert "prefill ctx 8" not in out


def test_profile_plot(cli, tiny_llama, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    code, out, err = cli("profile", str(tiny_llama), "--ctx", "8", "--batch", "1,2", "--repeats", "1", "--warmup",
                         "0", "--decode-tokens", "1", "--no-bandwidth", "--plot", str(png), "--json")
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "p.svg").read_bytes()[:400]
    assert json.loads(out)["plots"] == [str(png), str(tmp_path / "p.svg")]
    code, _, err = cli("profile", str(tiny_llama), "--ctx", "8", "--batch", "1", "--repeats", "1", "--warmup", "0",
                       "--decode-tokens", "1", "--no-bandwidth", "--plot", str(png))
    assert code == 1 and "already exists" in err and "--force" in err


@pytest.mark.parametrize("args, msg", [
    (("--ctx", "120"), "at most 128 positions"),
    (("--ctx", "8,x"), "--ctx takes comma-separated integers"),
    (("--batch", "0"), "--batch takes positive integers"),
    (("--params", "1M"), "go with --sweep depth-width"),
    (("--json", "--csv"), "choose one"),
    (("--repeats", "0"), "--repeats and --decode-tokens must be at least 1"),
])
def test_profile_usage_errors(cli, tiny_llama, args, msg):
    code, out, err = cli("profile", str(tiny_llama), *args)
    assert code == 2, err
    assert msg in err and out == ""


def test_profile_needs_a_model(cli):
    code, _, err = cli("profile")
    assert code == 2 and "profile needs a MODEL" in err


def test_bandwidth_and_stats():
    from slmctl.profiling.latency import memory_bandwidth, stats_ms

    bw = memory_bandwidth(mib=16, repeats=2)
    assert bw["gb_per_s"] > 0 and bw["bytes_per_copy"] == 16 * 2**20
    s = stats_ms([0.001 * i for i in range(1, 21)])
    assert s["p50_ms"] == pytest.approx(10.5) and s["p95_ms"] == pytest.approx(19.05) and s["n"] == 20


# ---------------------------------------------------------------- onnxruntime on hand-built decoder graphs
def _tiny_onnx(folder, kv: bool, vocab=50, hidden=8, heads=2):
    """A small real decoder-shaped graph: embedding -> projection -> tied LM head; with kv=True it also
    takes past_key_values.0.key/value and returns present.0.key/value (the past grows by the new tokens)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    E = rng.standard_normal((vocab, hidden)).astype(np.float32)
    W = rng.standard_normal((hidden, hidden)).astype(np.float32)
    inits = [numpy_helper.from_array(E, "model.embed_tokens.weight"), numpy_helper.from_array(W, "w"),
             numpy_helper.from_array(E.T.copy(), "head_t"),
             numpy_helper.from_array(np.array([0, 0, heads, hidden // heads], np.int64), "kshape")]
    nodes = [helper.make_node("Gather", ["model.embed_tokens.weight", "input_ids"], ["x"]),
             helper.make_node("MatMul", ["x", "w"], ["h"])]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])]
    if kv:
        for part in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.0.{part}", TensorProto.FLOAT,
                                                        ["batch", heads, "past", hidden // heads]))
            outputs.append(helper.make_tensor_value_info(f"present.0.{part}", TensorProto.FLOAT,
                                                         ["batch", heads, "total", hidden // heads]))
        nodes += [helper.make_node("Reshape", ["h", "kshape"], ["k4"]),
                  helper.make_node("Transpose", ["k4"], ["k"], perm=[0, 2, 1, 3]),
                  helper.make_node("Concat", ["past_key_values.0.key", "k"], ["present.0.key"], axis=2),
                  helper.make_node("Concat", ["past_key_values.0.value", "k"], ["present.0.value"], axis=2),
                  helper.make_node("ReduceMean", ["present.0.key"], ["m"], axes=[1, 2, 3], keepdims=1),
                  helper.make_node("Reshape", ["m", "mshape"], ["m3"]),  # [batch, 1, 1]: broadcast to h
                  helper.make_node("Add", ["h", "m3"], ["h2"]),
                  helper.make_node("MatMul", ["h2", "head_t"], ["logits"])]
        inits.append(numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "mshape"))
    else:
        nodes.append(helper.make_node("MatMul", ["h", "head_t"], ["logits"]))
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
                                                    "num_attention_heads": heads, "num_key_value_heads": heads,
                                                    "max_position_embeddings": 64}))
    return folder


@pytest.mark.parametrize("kv", [True, False], ids=["kv-cache", "stateless"])
def test_onnxruntime_target(cli, tmp_path, kv):
    pytest.importorskip("onnxruntime")
    folder = _tiny_onnx(tmp_path / "onnx", kv)
    code, out, err = cli("profile", str(folder), "--target", "onnxruntime", *FAST, "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["target"] == "onnxruntime" and rep["format"] == "onnx" and rep["kv_cache"] is kv
    assert rep["parameters"] == 50 * 8 * 2 + 8 * 8 + 4 + (3 if kv else 0)
    assert [r["batch"] for r in rep["decode"]] == [1, 2]
    assert all(r["p50_ms"] > 0 for r in rep["decode"] + rep["prefill"])
    assert "layers" not in rep  # only torch sees inside the model
    assert rep["efficiency"]["fraction"] > 0
    assert any("re-runs the whole sequence" in n for n in rep["notes"]) is (not kv)


def test_onnxruntime_kv_state_grows(tmp_path):
    from slmctl import api
    from slmctl.targets import get_target

    art, _ = api.load_artifact(str(_tiny_onnx(tmp_path / "onnx", True)))
    s = get_target("onnxruntime").load(art)
    st = s.prefill(np.array([[1, 2, 3]] * 2))
    assert st["past"]["present.0.key"].shape == (2, 2, 3, 4)
    st = s.decode_step(s.decode_step(st))
    assert st["len"] == 5 and st["past"]["present.0.key"].shape == (2, 2, 5, 4)
    assert st["next"].shape == (2,) and st["next"].dtype == np.int64


def test_llamacpp_through_the_gguf_exporter(tiny_llama):
    """An HF model on the llamacpp target goes through `slmctl export --format gguf` (when that exists)."""
    from slmctl import api
    from slmctl.errors import SlmctlError
    from slmctl.pipelines.export import get_exporter
    from slmctl.targets import get_target

    tgt = get_target("llamacpp")
    art, _ = api.load_artifact(str(tiny_llama))
    try:
        get_exporter("gguf")
    except SlmctlError:
        with pytest.raises(SlmctlError, match="takes gguf; .* is hf and cannot be converted"):
            tgt.prepare(art, str(tiny_llama))
        return
    pytest.importorskip("llama_cpp")
    rep = api.profile(str(tiny_llama), target="llamacpp", ctx=[8], batch=[1, 2], repeats=2, warmup=1,
                      decode_tokens=2, bandwidth=False)
    assert rep["format"] == "gguf" and rep["source_format"] == "hf" and rep["kv_cache"] is True
    assert [d["batch"] for d in rep["decode"]] == [1] and rep["decode"][0]["p50_ms"] > 0
    assert "decode at batch 2 skipped: the target runs at most batch 1" in rep["notes"]
    assert rep["parameters"] == sum(t.numel for t in art.tensors.values())  # same weights, GGUF names


def test_llamacpp_keeps_off_the_amx_buffers_when_asked(monkeypatch):
    """llama.cpp's AMX matmul segfaults on this machine (ggml-org/llama.cpp#20824): the target can build its
    Llama without extra buffer types, restores llama-cpp-python afterwards, and SLMCTL_LLAMACPP_AMX=1 opts out."""
    pytest.importorskip("llama_cpp")
    import llama_cpp.llama_cpp as C

    from slmctl.targets import llamacpp as lc

    orig = C.llama_model_default_params
    assert orig().use_extra_bufts is True
    with lc._NoExtraBuffers():
        assert C.llama_model_default_params().use_extra_bufts is False
    assert C.llama_model_default_params is orig
    monkeypatch.setenv(lc.AMX_ENV, "1")
    assert lc.amx_disabled() is False
    monkeypatch.delenv(lc.AMX_ENV)
    info = C.llama_print_system_info()
    assert lc.amx_disabled() is ("AMX_INT8 = 1" in (info.decode() if isinstance(info, bytes) else info))
