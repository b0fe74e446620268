"""Every artifact slmctl accepts to write loads in its users' runtime; what a runtime cannot load is refused.

The cases live in tests/conformance.py (which also writes docs/formats.md). Default suite: the cases
marked fast, on one-layer models with real widths (576, 896, 1536, a pruned 1000-wide FFN and a
per-layer model); ``make test-slow`` runs every case, and the sample (test_conformance_sample).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conformance import GGUF_CASES, ONNX_CASES, OPENVINO_CASES, QUANT_CASES, build_shape, render_doc

IDS = [1, 5, 17, 99, 3, 250, 41, 7, 8, 120, 64, 11, 200, 33]
CALIB = ("--samples", "4", "--seq-len", "32")


def _param(cases):
    return [pytest.param(c, id=c.id, marks=() if c.fast else pytest.mark.slow) for c in cases]


@pytest.fixture(scope="session")
def shape_model(tmp_path_factory):
    """shape name -> HF folder, each built once per session on first use."""
    root = tmp_path_factory.mktemp("shapes")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_shape(name, root / name)
        return built[name]

    return get


def _quantize(cli, src, out, text_file, args):
    method = [] if "--method" in args else ["--method", "rtn"]
    return cli("quantize", str(src), "-o", str(out), "--no-report", "--data", str(text_file), *CALIB, *method, *args)


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------- quantised safetensors
@pytest.mark.parametrize("case", _param(QUANT_CASES))
def test_quantized_layout_loads_or_is_refused(case, shape_model, tmp_path, text_file, cli):
    from slmctl.io.artifact import open_artifact
    from slmctl.io.quantized_formats import load_dequantized_model

    src = shape_model(case.shape)
    out = tmp_path / "q"
    code, stdout, stderr = _quantize(cli, src, out, text_file, case.args())
    if case.refuse:
        assert code == 2, stderr
        assert case.refuse in stderr and "hint:" in stderr, stderr
        assert stdout == "" and not out.exists()
        return
    assert code == 0, stderr
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    if "--skip-incompatible" in case.extra:
        kept = qc["ignore"][1:] if case.fmt == "compressed-tensors" else list(qc["dynamic"])
        assert kept and f"{len(kept)} of " in stderr and "left unquantised" in stderr
        for name in kept:  # each skipped linear is stored as a float weight
            prefix = name if case.fmt == "compressed-tensors" else name[3:-1].replace("\\", "")
            assert f"{prefix}.weight" in open_artifact(out).tensors
    ours = load_dequantized_model(open_artifact(out))
    if case.fmt == "compressed-tensors":
        from transformers import AutoModelForCausalLM

        theirs = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        gen = theirs.generate(torch.tensor([IDS]), max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert gen.shape[1] == len(IDS) + 4
        a, b = _logits(theirs), _logits(ours)
        assert np.abs(a - b).max() <= 1e-3 * max(1.0, np.abs(b).max())
    else:
        # GPTQModel itself loads these in the peer test; here: slmctl's reader gives a model close to the source
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
        assert _rel(_logits(ours), _logits(ref)) < {2: 1.0, 3: 0.6, 4: 0.3, 8: 0.05}[case.bits]


def test_refusal_names_runtime_tensor_width_and_the_nearest_combination(shape_model, tmp_path, text_file, cli):
    # the issue's command: SmolLM2's 576-wide projections, default group 128, compressed-tensors
    code, _, stderr = _quantize(cli, shape_model("576"), tmp_path / "q", text_file,
                                ["--format", "compressed-tensors"])
    assert code == 2
    assert "transformers + compressed-tensors" in stderr
    assert "model.layers.0.mlp.gate_proj (1536x576, input width 576)" in stderr
    assert "576 % 128 = 64" in stderr
    assert "nearest combination that loads: -g 64" in stderr
    assert "--skip-incompatible to leave those 6 of 7 linears unquantised" in stderr
    # GPTQModel's group sizes
    code, _, stderr = _quantize(cli, shape_model("576"), tmp_path / "q", text_file, ["-g", "96"])
    assert code == 2 and "GPTQModel" in stderr and "-g 64" in stderr


def test_the_refused_combination_really_fails_in_transformers(shape_model, tmp_path, monkeypatch):
    """Negative control: written anyway (the check switched off), transformers rejects it as the refusal says."""
    from transformers import AutoModelForCausalLM

    from slmctl.pipelines import quantize as qp

    monkeypatch.setattr(qp, "runtime_check", lambda *a, **k: [])
    out = tmp_path / "forced"
    qp.quantize(str(shape_model("576")), out, method="rtn", fmt="compressed-tensors", group_size=128, report=False)
    with pytest.raises(Exception, match="divisi?ble by the given group_size 128 but got 576"):
        m = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
        m(input_ids=torch.tensor([IDS]))


# ---------------------------------------------------------------- GGUF
def _llama_logits(path: Path, ids=IDS) -> np.ndarray:
    from slmctl.io.libllama import open_llama

    llm = open_llama(path, n_ctx=64, logits_all=True, verbose=False, seed=0, n_threads=2)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def _gguf_reference(path: Path, src: Path, shape: str) -> np.ndarray:
    """Logits of the weights the GGUF holds, computed by transformers (dequantised on import);
    per-layer widths, which transformers cannot build: slmctl's per-layer model with gguf-py's dequantisation."""
    if shape == "per-layer":
        return _logits(_per_layer_dequantised(path, src))
    from transformers import AutoModelForCausalLM, GgufConfig

    m = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                             quantization_config=GgufConfig(dequantize=True)).eval()
    return _logits(m)


def _per_layer_dequantised(path: Path, src: Path):
    """slmctl's per-layer model of ``src`` holding the weights of the GGUF at ``path``, dequantised by gguf-py
    (Q/K rows back from llama.cpp's interleaved order)."""
    import gguf

    from slmctl.arch import spec_for
    from slmctl.io.artifact import open_artifact
    from slmctl.io.gguf_import import _unpermute_qk
    from slmctl.surgery.width import load_per_layer_model

    art = open_artifact(src)
    model = load_per_layer_model(art)
    spec, cfg = spec_for(art.config), art.config
    sd = model.state_dict()
    by_gguf = {spec.gguf_name(n): n for n in sd if spec.gguf_name(n)}
    with torch.no_grad():
        for t in gguf.GGUFReader(str(path)).tensors:
            for hf in [by_gguf[t.name]] + (["lm_head.weight"] if t.name == "token_embd.weight" else []):
                w = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
                w = w.reshape(sd[hf].shape)
                if hf.endswith("q_proj.weight"):
                    w = _unpermute_qk(w, cfg["num_attention_heads"])
                elif hf.endswith("k_proj.weight"):
                    w = _unpermute_qk(w, cfg["num_key_value_heads"])
                sd[hf].copy_(w)
    return model


@pytest.mark.parametrize("case", _param(GGUF_CASES))
def test_gguf_runs_in_llama_cpp(case, shape_model, tmp_path, text_file, cli):
    pytest.importorskip("llama_cpp")
    src = shape_model(case.shape)
    if case.source:
        q = tmp_path / "q"
        code, _, err = _quantize(cli, src, q, text_file, list(case.source))
        assert code == 0, err
        src = q
    out = tmp_path / "m.gguf"
    code, _, err = cli("export", str(src), "--format", "gguf", "-o", str(out),
                       *([] if case.outtype == "auto" else ["--outtype", case.outtype]))
    assert code == 0, err
    got = _llama_logits(out)
    want = _gguf_reference(out, src, case.shape)
    # llama.cpp quantises activations for the quantised matmuls (q8 dot products) and computes in f16
    # where transformers computes in f32; the weights are the same numbers
    tol = 0.01 if case.outtype in ("f32", "f16", "bf16") else 0.06
    rel = _rel(got, want)
    assert rel < tol, (case.id, rel)
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.85, case.id


# ---------------------------------------------------------------- ONNX
@pytest.fixture(scope="session")
def onnx_export(shape_model, tmp_path_factory):
    made: dict[str, Path] = {}

    def get(shape: str, cli) -> Path:
        if shape not in made:
            out = tmp_path_factory.mktemp("onnx") / shape
            code, _, err = cli("export", str(shape_model(shape)), "--format", "onnx", "-o", str(out))
            assert code == 0, err
            made[shape] = out
        return made[shape]

    return get


@pytest.mark.parametrize("case", _param(ONNX_CASES))
def test_onnx_runs_in_onnxruntime(case, shape_model, onnx_export, tmp_path, cli):
    pytest.importorskip("onnxruntime")
    from transformers import AutoModelForCausalLM

    from slmctl.eval.backend_onnx import OrtCausalLM

    folder = onnx_export(case.shape, cli)
    if case.qtype != "fp32":
        q = tmp_path / case.qtype
        code, _, err = cli("quantize", str(folder), "--type", case.qtype, "-o", str(q), "--no-report")
        assert code == 0, err
        folder = q
    lm = OrtCausalLM(folder / "model.onnx")
    full, _ = lm.run(np.asarray([IDS]))
    head, past = lm.run(np.asarray([IDS[:-1]]))
    step, _ = lm.run(np.asarray([IDS[-1:]]), past)  # one decode step through the KV cache
    if case.qtype == "int8":  # dynamic int8 scales each call's activations by their own range
        assert _rel(step[0, -1], full[0, -1]) < 0.1
    else:
        np.testing.assert_allclose(step[0, -1], full[0, -1], atol=1e-3 * np.abs(full).max())
    want = _logits(AutoModelForCausalLM.from_pretrained(str(shape_model(case.shape)), dtype=torch.float32).eval())
    tol = {"fp32": 1e-4, "int8": 0.25, "int4": 0.35}[case.qtype]
    assert _rel(full[0], want) < tol, (case.id, _rel(full[0], want))
    # inspect --check finds the HF folder through the provenance and runs the same comparison
    code, stdout, err = cli("inspect", str(folder), "--check", "--json")
    chk = json.loads(stdout)["check"]
    assert code == 0 and chk["ok"] and chk["logits"]["reference"] == "the HF folder it was exported from", err
    if (folder / "genai_config.json").is_file():  # onnxruntime-genai, as the release pipeline ships it
        from conftest import genai_greedy

        from slmctl.eval.check import _Ort

        got = genai_greedy(folder, IDS, 4)  # stops early at the end-of-sequence token
        assert got and got == _Ort(folder / "model.onnx").generate(IDS, 4)[: len(got)]


# ---------------------------------------------------------------- OpenVINO (the plugin)
@pytest.mark.parametrize("case", _param(OPENVINO_CASES))
def test_openvino_plugin_runs_the_model(case, shape_model, tmp_path):
    pytest.importorskip("openvino")
    plugin = pytest.importorskip("slmctl_openvino")
    from transformers import AutoModelForCausalLM

    from slmctl.io.artifact import open_artifact

    src = shape_model(case.shape)
    art = open_artifact(src)
    ir = plugin.OpenVINOTarget().export(art, tmp_path / "ir")
    sess = plugin.OpenVINOSession(ir / plugin.IR_NAME, art.config)
    got = sess.request.infer({0: np.asarray([IDS], dtype=np.int64)})[sess.compiled.output(0)][0]
    want = _logits(AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval())
    assert _rel(got, want) < 1e-3, _rel(got, want)
    state = sess.prefill(np.asarray([IDS]))
    assert int(state["next"][0]) == int(want[-1].argmax())


# ---------------------------------------------------------------- inspect --check
def test_inspect_check_runs_the_artifacts_runtime(shape_model, tmp_path, text_file, cli):
    q = tmp_path / "ct"
    assert _quantize(cli, shape_model("576"), q, text_file, ["--format", "compressed-tensors", "-g", "64"])[0] == 0
    code, stdout, stderr = cli("inspect", str(q), "--check", "--json")
    assert code == 0, stderr
    chk = json.loads(stdout)["check"]
    assert chk["runtime"] == "transformers + compressed-tensors" and chk["ok"]
    assert chk["load"]["ok"] and len(chk["run"]["generated"]) == 8
    assert chk["logits"]["ok"] and chk["logits"]["max_abs_diff"] <= 1e-3 * max(1, chk["logits"]["logit_scale"])
    # a folder its runtime cannot load: the group size in config.json no longer divides the widths
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] = 128
    (q / "config.json").write_text(json.dumps(cfg))
    code, stdout, stderr = cli("inspect", str(q), "--check")
    assert code == 1
    assert "FAILED" in stdout and "did not pass the check in transformers + compressed-tensors" in stderr


def test_inspect_check_gguf(shape_model, tmp_path, cli):
    pytest.importorskip("llama_cpp")
    g = tmp_path / "m.gguf"
    assert cli("export", str(shape_model("576")), "--format", "gguf", "--outtype", "q8_0", "-o", str(g))[0] == 0
    code, stdout, stderr = cli("inspect", str(g), "--check", "--json")
    assert code == 0, stderr
    chk = json.loads(stdout)["check"]
    assert chk["runtime"].startswith("llama.cpp") and chk["load"]["ok"] and chk["run"]["ok"]
    assert chk["logits"]["ok"] and chk["logits"]["top1_agreement_pct"] >= 90
    (tmp_path / "bad.gguf").write_bytes(g.read_bytes()[: g.stat().st_size // 2])
    code, _, stderr = cli("inspect", str(tmp_path / "bad.gguf"), "--check")
    assert code == 1


# ---------------------------------------------------------------- the page
def test_formats_doc_is_generated_from_the_matrix():
    page = Path(__file__).resolve().parents[1] / "docs" / "formats.md"
    assert page.read_text() == render_doc(), "docs/formats.md is stale: python tests/conformance.py > docs/formats.md"


# ---------------------------------------------------------------- the sample (make test-slow)
@pytest.mark.slow
def test_conformance_sample(tmp_path, cli):
    """SmolLM2-135M: the issue's command is refused with the hint; the hint's command and the
    --skip-incompatible output load and generate in transformers; a k-quant GGUF runs in llama.cpp;
    inspect --check passes on each."""
    from slmctl.io.artifact import open_artifact
    from slmctl.io.quantized_formats import load_dequantized_model
    from transformers import AutoModelForCausalLM

    s = "sample:smollm2-135m"
    code, _, err = cli("quantize", s, "--method", "rtn", "--format", "compressed-tensors", "-o", str(tmp_path / "x"))
    assert code == 2 and "nearest combination that loads: -g 64" in err and "input width 576)" in err
    assert not (tmp_path / "x").exists()
    for name, extra in (("g64", ["-g", "64"]), ("skip", ["--skip-incompatible"])):
        out = tmp_path / name
        code, _, err = cli("quantize", s, "--method", "rtn", "--format", "compressed-tensors", "-o", str(out),
                           "--no-report", *extra)
        assert code == 0, err
        if name == "skip":
            assert "180 of 210 linears left unquantised" in err  # all but the 1536-wide down_proj, 30 layers
        theirs = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        gen = theirs.generate(torch.tensor([IDS]), max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert gen.shape[1] == len(IDS) + 4
        a, b = _logits(theirs), _logits(load_dequantized_model(open_artifact(out)))
        assert np.abs(a - b).max() <= 1e-3 * max(1.0, np.abs(b).max())
        code, stdout, err = cli("inspect", str(out), "--check", "--json")
        assert code == 0 and json.loads(stdout)["check"]["ok"], err
    pytest.importorskip("llama_cpp")
    g = tmp_path / "s.gguf"
    code, _, err = cli("export", s, "--format", "gguf", "--outtype", "q4_k_m", "-o", str(g))
    assert code == 0, err
    got, want = _llama_logits(g), _gguf_reference(g, None, "576")
    assert _rel(got, want) < 0.06 and (got.argmax(-1) == want.argmax(-1)).mean() >= 0.85
    code, stdout, err = cli("inspect", str(g), "--check", "--json")
    assert code == 0 and json.loads(stdout)["check"]["ok"], err
