"""ONNX: export with KV cache verified by onnxruntime, the onnxruntime eval backend, ONNX quantisation,
and the external-data safety check. One tiny-llama export is shared; other families are slow tests."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gpt2")


def _torch_model(folder):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_export_layout_and_metadata(llama_onnx, tiny_llama):
    out, log = llama_onnx
    m = onnx.load(str(out / "model.onnx"))
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 18
    ins = {i.name: _dims(i) for i in m.graph.input}
    outs = {o.name: _dims(o) for o in m.graph.output}
    n = json.loads((tiny_llama / "config.json").read_text())["num_hidden_layers"]
    expect_in = ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
    assert [i.name for i in m.graph.input] == expect_in
    assert [o.name for o in m.graph.output] == ["logits"] + [f"present.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
    assert ins["input_ids"] == ["batch", "sequence_length"]
    assert ins["attention_mask"] == ["batch", "total_sequence_length"]
    assert ins["past_key_values.0.key"][0] == "batch" and ins["past_key_values.0.key"][2] == "past_sequence_length"
    assert isinstance(outs["logits"][1], str) and outs["logits"][2] == 320
    # provenance inside the model and beside it, with the verification figures
    meta = {p.key: p.value for p in m.metadata_props}
    prov = json.loads(meta["slmctl.provenance"])
    assert prov["verb"] == "export" and prov["recipe"]["format"] == "onnx" and prov["recipe"]["opset"] >= 18
    side = json.loads((out / "slmctl.json").read_text())
    v = side["verification"]
    assert v["max_abs_diff_prompt"] <= 1e-3 and v["max_abs_diff_decode"] <= 1e-3
    assert v["greedy_identical"] is True and v["greedy_tokens"] == 32
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / f).is_file(), f
    assert "greedy 32 tokens identical" in log
    # slmctl reads its own output
    from slmctl.api import inspect

    info = inspect(str(out))
    assert info["format"] == "onnx" and info["provenance"][-1]["verb"] == "export"


def test_tied_weights_stored_once(llama_onnx, tiny_llama):
    out, _ = llama_onnx
    model = _torch_model(tiny_llama)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the fixture ties them
    unique = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    m = onnx.load(str(out / "model.onnx"))
    stored = sum(int(np.prod(i.dims)) for i in m.graph.initializer)
    emb = model.model.embed_tokens.weight.numel()
    assert stored < unique + emb // 2, (stored, unique, emb)


def test_graph_reads_kv_cache_in_place_and_fuses_in_onnxruntime(llama_onnx, tmp_path):
    """Grouped-query attention (4 heads, 2 KV heads) reads each present.N.* without a copy (no Expand
    repeat, no Reshape/Transpose/Reshape for K^T), the file has only standard ops, and onnxruntime fuses
    RMSNorm into SimplifiedLayerNormalization and K^T into FusedMatMul(transB) when it loads it."""
    out, _ = llama_onnx
    m = onnx.load(str(out / "model.onnx"))
    assert {n.domain for n in m.graph.node} <= {""}
    ops = [n.op_type for n in m.graph.node]
    assert "Reciprocal" not in ops
    presents = {o.name for o in m.graph.output if o.name.startswith("present.")}
    readers = {n.op_type for n in m.graph.node for i in n.input if i in presents}
    assert readers <= {"MatMul", "Transpose"}, readers
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(out / "model.onnx"), so, providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp_path / "opt.onnx"))
    fused = [n for n in opt.graph.node if n.op_type == "FusedMatMul"
             and any(a.name == "transB" and a.i == 1 for a in n.attribute)]
    assert len(fused) == 2  # Q.K^T of both layers
    assert sum(n.op_type == "SimplifiedLayerNormalization" for n in opt.graph.node) == 5  # 2 per layer + final
    assert not any(n.op_type == "Expand" and set(n.input) & presents for n in opt.graph.node)


def test_kv_cache_prefill_and_decode_match_pytorch(llama_onnx, tiny_llama):
    """Prefill, then 8 decode steps fed present -> past, batch of 2: logits match transformers."""
    import torch

    from slmctl.eval.backend_onnx import OrtCausalLM

    out, _ = llama_onnx
    model = _torch_model(tiny_llama)
    lm = OrtCausalLM(out / "model.onnx")
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 320, (2, 9))
    logits, past = lm.run(ids)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), use_cache=True)
    assert np.abs(logits - ref.logits.numpy()).max() <= 1e-3
    cache = ref.cache
    seq = ids
    for _ in range(8):
        nxt = ref.logits[:, -1].argmax(-1, keepdim=True)
        seq = np.concatenate([seq, nxt.numpy()], 1)
        with torch.no_grad():
            ref = model(input_ids=nxt, cache=cache, use_cache=True)
        cache = ref.cache
        logits, past = lm.run(nxt.numpy(), past)
        assert past["past_key_values.0.key"].shape[2] == seq.shape[1]
        assert np.abs(logits - ref.logits.numpy()).max() <= 1e-3
    # the whole sequence in one go agrees with the cached path
    full, _ = lm.run(seq)
    assert np.abs(full[:, -1] - logits[:, -1]).max() <= 1e-3


def test_eval_onnx_matches_torch(llama_onnx, tiny_llama, text_file, cli):
    out, _ = llama_onnx
    code, stdout, stderr = cli("eval", str(out), "--data", str(text_file), "--ctx", "32", "--windows", "3",
                               "-r", str(tiny_llama), "--json")
    assert code == 0, stderr
    rep = json.loads(stdout)
    assert rep["backend"] == "onnxruntime" and rep["reference_backend"] == "torch"
    assert abs(rep["ppl_ratio"] - 1.0) < 1e-4
    assert rep["top1_agreement_pct"] == 100.0


@pytest.mark.slow
def test_backend_without_past_inputs(tmp_path, tiny_llama, text_file):
    """A graph without KV inputs (logits only) runs through the same backend."""
    import torch

    from slmctl.eval.backend_onnx import OrtCausalLM

    model = _torch_model(tiny_llama)

    class NoCache(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, use_cache=False).logits

    f = tmp_path / "m" / "model.onnx"
    f.parent.mkdir()
    ids = torch.zeros((1, 4), dtype=torch.long)
    from torch.export import Dim

    torch.onnx.export(NoCache(model).eval(), (ids,), str(f), dynamo=True, input_names=["input_ids"],
                      output_names=["logits"], dynamic_shapes=({1: Dim("s")},), opset_version=18)
    lm = OrtCausalLM(f)
    assert lm.past_specs == {}
    x = np.arange(10)[None] % 320
    logits, past = lm.run(x)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(x)).logits.numpy()
    assert past == {} and np.abs(logits - ref).max() <= 1e-4


def test_export_mismatch_fails_loudly(llama_onnx, tiny_models, tmp_path, cli, monkeypatch):
    """A graph that computes another model's logits (same shapes) is an error, and nothing is written."""
    import slmctl.pipelines.export.to_onnx as eo

    def wrong_graph(model, path, **kw):  # the tiny llama's graph for the tiny mistral
        shutil.copyfile(llama_onnx[0] / "model.onnx", path)
        return [path]

    monkeypatch.setattr(eo, "export_decoder", wrong_graph)
    out = tmp_path / "bad"
    code, stdout, stderr = cli("export", str(tiny_models["mistral"]), "--format", "onnx", "-o", str(out))
    assert code == 1
    assert "does not match PyTorch" in stderr and "max abs logit diff" in stderr
    assert stdout == "" and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]


@pytest.mark.slow
def test_export_wrong_rope_fails_loudly(tiny_models, tmp_path, cli, monkeypatch):
    """An export whose RoPE frequencies are off (the bug optimum-onnx shipped: base 10000 for 100000) is an error."""
    import slmctl.pipelines.export.to_onnx as eo

    real = eo.export_decoder

    def wrong_rope(model, path, **kw):
        rot = model.model.rotary_emb
        rot.inv_freq.copy_(rot.inv_freq ** 1.5)
        rot.original_inv_freq = rot.inv_freq.clone()
        return real(model, path, **kw)

    monkeypatch.setattr(eo, "export_decoder", wrong_rope)
    out = tmp_path / "bad"
    code, stdout, stderr = cli("export", str(tiny_models["qwen2"]), "--format", "onnx", "-o", str(out))
    assert code == 1
    assert "does not match PyTorch" in stderr and "max abs logit diff" in stderr
    assert stdout == "" and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]


def test_export_refuses_what_it_cannot_do(tiny_llama, tmp_path, cli):
    code, _, err = cli("export", str(tiny_llama), "--format", "onnx", "--dtype", "bfloat16", "-o", str(tmp_path / "a"))
    assert code == 1 and "bfloat16" in err and "hint:" in err
    code, _, err = cli("export", str(tiny_llama), "--format", "onnx", "--max-shard-size", "1MB", "-o", str(tmp_path / "b"))
    assert code == 2 and "max-shard-size" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_existing_output_needs_force(llama_onnx, tiny_llama, cli):
    out, _ = llama_onnx
    code, _, err = cli("export", str(tiny_llama), "--format", "onnx", "-o", str(out))
    assert code == 1 and "--force" in err


# ---------------------------------------------------------------- external data
def _external_copy(src: Path, dst: Path, location: str | None = None) -> Path:
    """Re-save an export with its weights in external data (one file), optionally pointing somewhere else."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "model.onnx":
            shutil.copyfile(f, dst / f.name)
    m = onnx.load(str(src / "model.onnx"))
    onnx.save_model(m, str(dst / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    if location is not None:
        m = onnx.load(str(dst / "model.onnx"), load_external_data=False)
        for t in m.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        with open(dst / "model.onnx", "wb") as f:
            f.write(m.SerializeToString())
    return dst


def test_external_data_inside_folder_runs(llama_onnx, tmp_path, text_file, cli):
    out, _ = llama_onnx
    ext = _external_copy(out, tmp_path / "ext")
    m = onnx.load(str(out / "model.onnx"))
    weights = sum(onnx.numpy_helper.to_array(i).nbytes for i in m.graph.initializer)
    assert (ext / "model.onnx.data").stat().st_size >= 0.9 * weights
    code, stdout, stderr = cli("eval", str(ext), "--data", str(text_file), "--ctx", "32", "--windows", "1",
                               "-r", str(out), "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["kld"]["max"] < 1e-9


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_folder_refused(llama_onnx, tmp_path, text_file, cli, how):
    out, _ = llama_onnx
    secret = tmp_path / "outside" / "secret.data"
    secret.parent.mkdir()
    ext = _external_copy(out, tmp_path / "ext")
    shutil.move(ext / "model.onnx.data", secret)
    if how == "dotdot":
        _relocate(ext, "../outside/secret.data")
    elif how == "absolute":
        _relocate(ext, str(secret))
    else:
        os.symlink(secret, ext / "model.onnx.data")
    code, stdout, stderr = cli("eval", str(ext), "--data", str(text_file), "--ctx", "32", "--windows", "1")
    assert code == 1 and stdout == ""
    assert "refused" in stderr and "model.onnx" in stderr and "model's folder" in stderr
    code, _, stderr = cli("quantize", str(ext), "--type", "int8", "-o", str(tmp_path / "q"))
    assert code == 1 and "refused" in stderr and not (tmp_path / "q").exists()
    # the backend checks too, for callers that skip slmctl.io.onnx
    from slmctl.errors import InputError
    from slmctl.eval.backend_onnx import session

    with pytest.raises(InputError, match="refused"):
        session(ext / "model.onnx")


def _relocate(folder: Path, location: str) -> None:
    m = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    (folder / "model.onnx").write_bytes(m.SerializeToString())


# ---------------------------------------------------------------- quantisation
@pytest.mark.parametrize("bits,qtype,op", [(8, "int8", "MatMulInteger"), (4, "int4", "MatMulNBits")])
def test_quantize_onnx(llama_onnx, tmp_path, text_file, cli, bits, qtype, op):
    from slmctl.pipelines.quantize_onnx import quantize_onnx

    out, _ = llama_onnx
    q = tmp_path / f"q{bits}"
    if bits == 8:  # through `slmctl quantize`, which hands ONNX inputs to quantize_onnx
        code, stdout, stderr = cli("quantize", str(out), "--type", qtype, "-o", str(q), "--eval-data", str(text_file),
                                   "--eval-ctx", "32", "--eval-windows", "2")
        assert code == 0, stderr
        assert stdout.strip() == str(q)
        assert "perplexity" in stderr and "KL mean" in stderr and "top-1 agreement" in stderr and "MiB ->" in stderr
    else:
        assert quantize_onnx(str(out), q, qtype=qtype) == q
    m = onnx.load(str(q / "model.onnx"))
    ops = [n.op_type for n in m.graph.node]
    # every projection of both layers; int8 keeps the gated-MLP down projections (outlier inputs) in float
    assert ops.count(op) == 2 * 7 - (2 if bits == 8 else 0)
    prov = json.loads({p.key: p.value for p in m.metadata_props}["slmctl.provenance"])
    assert prov["verb"] == "quantize" and prov["recipe"]["bits"] == bits
    assert prov["inputs"][0]["provenance"]["verb"] == "export"  # the chain reaches back to the export
    assert (q / "tokenizer.json").is_file()
    # fewer weight bytes, and it still runs close to the fp32 export
    w = lambda mm: sum(int(np.prod(i.dims)) * onnx.helper.tensor_dtype_to_np_dtype(i.data_type).itemsize
                       for i in mm.graph.initializer)
    assert w(m) < w(onnx.load(str(out / "model.onnx")))
    code, stdout, stderr = cli("eval", str(q), "--data", str(text_file), "--ctx", "32", "--windows", "2",
                               "-r", str(out), "--json")
    assert code == 0, stderr
    rep = json.loads(stdout)
    assert rep["backend"] == "onnxruntime" and np.isfinite(rep["ppl"])
    assert 0 < rep["kld"]["mean"] < 0.05 and abs(rep["ppl_ratio"] - 1) < 0.05


def test_quantize_onnx_report_and_gate(llama_onnx, tmp_path, text_file, cli):
    """The quality report of every quantiser (input vs output on held-out text), and its gate (exit 3)."""
    out, _ = llama_onnx
    ev = ("--eval-data", str(text_file), "--eval-ctx", "32", "--eval-windows", "2")
    code, stdout, stderr = cli("quantize", str(out), "--type", "int4", "-g", "32", "-o", str(tmp_path / "q4"), *ev,
                               "--json", "--max-ppl-increase", "50")
    assert code == 0, stderr
    res = json.loads(stdout)
    assert res["output"] == str(tmp_path / "q4") and res["bits"] == 4
    rep = res["report"]
    from slmctl import api

    ref = api.evaluate(str(out), data=str(text_file), ctx=32, windows=2)
    assert rep["ppl_before"] == pytest.approx(ref["ppl"], rel=1e-6)  # the report's "before" is the ONNX input
    assert np.isfinite(rep["ppl_after"]) and rep["ppl_after"] != rep["ppl_before"]
    assert 0 < rep["kld_mean"] < 0.05 and 50 < rep["top1_agreement_pct"] <= 100
    assert rep["size_after"] < rep["size_before"]
    # 4-bit blocks of 32 with an fp32 scale each: 4 + 32/32 = 5 bits per weight
    assert rep["bits_per_weight"] == pytest.approx(5.0, abs=0.01)
    assert res["gates"] == {"passed": True, "failed": []}
    # a perplexity can not fall by 1000 %: the gate fails, exit 3, the model is still written
    code, stdout, stderr = cli("quantize", str(out), "--type", "int8", "-o", str(tmp_path / "q8"), *ev,
                               "--max-ppl-increase", "-1000")
    assert code == 3, stderr
    assert "gate failed: perplexity rose" in stderr and stdout.strip() == str(tmp_path / "q8")
    code, _, stderr = cli("quantize", str(out), "--type", "int8", "-o", str(tmp_path / "q8b"), "--no-report",
                          "--max-ppl-increase", "5")
    assert code == 2 and "needs the quality report" in stderr


def test_quantize_onnx_usage(llama_onnx, tiny_llama, tmp_path):
    from slmctl.errors import UsageError
    from slmctl.pipelines.quantize_onnx import default_output, parse_qtype, quantize_onnx

    out, _ = llama_onnx
    assert parse_qtype("int8", 4, "default") == (8, "default")
    assert parse_qtype("hqq", 8, "default") == (4, "hqq")
    with pytest.raises(UsageError, match="unknown ONNX quantisation type"):
        parse_qtype("q4_k_m", 4, "default")
    with pytest.raises(UsageError, match="--bits 8"):
        quantize_onnx(str(out), tmp_path / "x", 3)
    with pytest.raises(UsageError, match="not an ONNX model"):
        quantize_onnx(str(tiny_llama), tmp_path / "y", 8)
    assert default_output(str(out), out, 4, "hqq") == out.parent / "llama-onnx-int4-hqq"
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ---------------------------------------------------------------- slow: every family, fp16
@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_exports_and_verifies(tiny_models, tmp_path, cli, family):
    out = tmp_path / family
    code, stdout, stderr = cli("export", str(tiny_models[family]), "--format", "onnx", "-o", str(out))
    assert code == 0, stderr
    v = json.loads((out / "slmctl.json").read_text())["verification"]
    assert v["max_abs_diff_prompt"] <= 1e-3 and v["max_abs_diff_decode"] <= 1e-3
    assert v["greedy_identical"] and v["greedy_tokens"] == 32


@pytest.mark.slow
def test_fp16_export(tiny_models, tmp_path, cli):
    out = tmp_path / "fp16"
    code, _, stderr = cli("export", str(tiny_models["qwen3"]), "--format", "onnx", "--dtype", "float16", "-o", str(out))
    assert code == 0, stderr
    m = onnx.load(str(out / "model.onnx"))
    assert {i.name: i.type.tensor_type.elem_type for i in m.graph.input}["past_key_values.0.key"] == onnx.TensorProto.FLOAT16
    big = [i for i in m.graph.initializer if int(np.prod(i.dims)) >= 256]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
    v = json.loads((out / "slmctl.json").read_text())["verification"]
    assert v["top1_agreement_pct"] >= 90.0


@pytest.mark.slow
def test_external_data_export(tiny_models, tmp_path):
    from slmctl import api

    out = api.export(str(tiny_models["mistral"]), tmp_path / "ext", "onnx", external_data=True)
    assert (out / "model.onnx.data").is_file()
    m = onnx.load(str(out / "model.onnx"), load_external_data=False)
    external = [t for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"model.onnx.data"}
    weights = sum(int(np.prod(t.dims)) * 4 for t in external)
    assert weights > 100_000 and (out / "model.onnx.data").stat().st_size >= weights
    # verified by onnxruntime before it was renamed into place
    assert json.loads((out / "slmctl.json").read_text())["verification"]["greedy_identical"]
