"""Llama 3.2, Phi-4-mini, LFM2 and Nemotron-H through every verb (issue 22, second half).

Tiny random models from tests/conftest.py (configs shaped like the real ones). llama.cpp must compute what
transformers computes in f32 (1e-3), including past LongRoPE's switch to the long factors; the tokenizer
gives the same ids; GGUF imports back; ONNX exports (or the hybrids refuse clearly); depth pruning keeps the
per-layer lists; quantisation leaves the recurrent mixers float and transformers loads the result; merges,
eval on every backend and profile on torch and llama.cpp run.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TEXT

torch = pytest.importorskip("torch")
llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

MINE = ("llama32", "phi4mini", "lfm2", "nemotron_h")
HYBRIDS = ("lfm2", "nemotron_h")
DENSE = ("llama32", "phi4mini")
IDS = [5, 17, 42, 99, 123, 7, 250, 64, 300, 11, 88, 190, 33, 271, 150, 9]
TINY_Q = ("--samples", "4", "--seq-len", "32", "--no-report")
EVAL = ("--ctx", "32", "--windows", "2")


def _ids(n: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(n).integers(3, 300, n)]


@functools.lru_cache(maxsize=None)
def _hf(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def _hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return _hf(folder)(torch.tensor([ids])).logits[0].numpy()


def _llama_logits(path: Path, ids: list[int], n_ctx: int) -> np.ndarray:
    from slmctl.io.libllama import open_llama

    llm = open_llama(path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, n_threads=1,
                     n_threads_batch=1, verbose=False, seed=0)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


@pytest.fixture(scope="module")
def ggufs(tiny_models, tmp_path_factory):
    from slmctl import api

    root = tmp_path_factory.mktemp("gguf_b")
    return {f: api.export(str(tiny_models[f]), root / f"{f}.gguf", "gguf", outtype="f32") for f in MINE}


def _fields(path: Path) -> dict:
    r = gguf.GGUFReader(str(path))
    return {"kv": {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.ggml.")},
            "tensors": {t.name: np.array(t.data) for t in r.tensors}}


# ---------------------------------------------------------------- GGUF: RoPE variants
def test_llama32_rope_freqs_and_logits_past_the_original_context(tiny_models, ggufs):
    """llama3 RoPE: one frequency kept, one interpolated, two slowed by 32, as llama.cpp's rope_freqs;
    logits match transformers over 300 positions (past original_max_position_embeddings = 256)."""
    f = _fields(ggufs["llama32"])
    freqs = f["tensors"]["rope_freqs.weight"]
    assert freqs.shape == (4,) and freqs[0] == 1.0 and 1.0 < freqs[1] < 32.0 and list(freqs[2:]) == [32.0, 32.0]
    ids = _ids(300)
    got, ref = _llama_logits(ggufs["llama32"], ids, 320), _hf_logits(tiny_models["llama32"], ids)
    assert np.abs(got - ref).max() <= 1e-3


def test_phi4mini_longrope_short_and_long_factors(tiny_models, ggufs):
    """Partial rotary (6 of 8 dims) and LongRoPE: llama.cpp takes the short factors when its context fits the
    original 256 positions and the long ones past it, as transformers does by sequence length."""
    cfg = json.loads((tiny_models["phi4mini"] / "config.json").read_text())
    rp = cfg["rope_parameters"]
    f = _fields(ggufs["phi4mini"])
    assert f["kv"]["phi3.rope.dimension_count"] == 6
    assert f["kv"]["phi3.rope.scaling.original_context_length"] == 256
    assert f["kv"]["phi3.rope.scaling.attn_factor"] == pytest.approx((1 + np.log(4) / np.log(256)) ** 0.5)
    np.testing.assert_allclose(f["tensors"]["rope_factors_short.weight"], rp["short_factor"], rtol=1e-6)
    np.testing.assert_allclose(f["tensors"]["rope_factors_long.weight"], rp["long_factor"], rtol=1e-6)
    short, long = _ids(40), _ids(300)
    for ids, n_ctx in ((short, 256), (long, 512)):
        got, ref = _llama_logits(ggufs["phi4mini"], ids, n_ctx), _hf_logits(tiny_models["phi4mini"], ids)
        assert np.abs(got - ref).max() <= 1e-3, (len(ids), np.abs(got - ref).max())
    # the switch is real: the first 40 positions of a 300-token run use other frequencies
    assert np.abs(_hf_logits(tiny_models["phi4mini"], long)[:40] - _hf_logits(tiny_models["phi4mini"], long[:40])).max() > 1e-3


def test_hybrid_gguf_layout(ggufs):
    """llama.cpp tells recurrent blocks by head_count_kv 0; conv kernels are 2-D f32; Mamba-2's A is -exp(A_log)."""
    lf = _fields(ggufs["lfm2"])
    assert list(lf["kv"]["lfm2.attention.head_count_kv"]) == [0, 0, 2, 0]
    assert lf["kv"]["lfm2.feed_forward_length"] == 64 and lf["kv"]["lfm2.shortconv.l_cache"] == 3
    assert lf["tensors"]["blk.0.shortconv.conv.weight"].shape == (32, 3)
    nh = _fields(ggufs["nemotron_h"])
    assert list(nh["kv"]["nemotron_h.feed_forward_length"]) == [0, 64, 0, 0, 64]
    assert list(nh["kv"]["nemotron_h.attention.head_count_kv"]) == [0, 0, 0, 2, 0]
    assert nh["tensors"]["blk.0.ssm_a"].shape == (8, 1) and (nh["tensors"]["blk.0.ssm_a"] < 0).all()
    assert nh["tensors"]["blk.0.ssm_norm.weight"].shape == (2, 32)


@pytest.mark.parametrize("family", HYBRIDS)
def test_hybrid_logits_over_a_long_run(family, tiny_models, ggufs):
    """Past Nemotron-H's 16-token scan chunks and LFM2's 3-token conv window, step after step."""
    ids = _ids(100)
    got, ref = _llama_logits(ggufs[family], ids, 128), _hf_logits(tiny_models[family], ids)
    assert np.abs(got - ref).max() <= 1e-3


@pytest.mark.parametrize("family", MINE)
def test_tokenizer_gives_the_same_ids(family, tiny_models, ggufs):
    from transformers import AutoTokenizer

    from slmctl.io.libllama import open_llama

    tok = AutoTokenizer.from_pretrained(str(tiny_models[family]))
    llm = open_llama(ggufs[family], vocab_only=True, verbose=False)
    try:
        text = TEXT[:400]
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok(text, add_special_tokens=False)["input_ids"]
    finally:
        llm.close()


# the Split regexes of Phi-4-mini's o200k tokenizer and of the Tekken tokenizer (Mistral NeMo's, Nemotron-H's)
O200K = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
         r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
         r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
          r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
          r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@pytest.mark.parametrize("family,regex,pre", [("phi4mini", O200K, "gpt-4o"), ("nemotron_h", TEKKEN, "tekken")])
def test_real_pre_tokenizers_give_the_same_ids(family, regex, pre, tiny_models, tmp_path):
    """The family's real pre-tokenizer (a Split regex before byte-level BPE) maps to llama.cpp's name for it,
    and llama.cpp then splits text (capitals, contractions, digits, newlines) into the same ids."""
    import shutil

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from slmctl import api
    from slmctl.io.libllama import open_llama

    folder = tmp_path / family
    shutil.copytree(tiny_models[family], folder)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / f).unlink(missing_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), "isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    assert tok.get_vocab_size() == json.loads((folder / "config.json").read_text())["vocab_size"]
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(folder)
    g = api.export(str(folder), tmp_path / "t.gguf", "gguf", outtype="f32")
    assert gguf.GGUFReader(str(g)).fields["tokenizer.ggml.pre"].contents() == pre
    text = "Friends, ROMANS, countrymen: I'll say it 12345 times.\n\nWe're 7 o'clock  players\n" + TEXT[:200]
    llm = open_llama(g, vocab_only=True, verbose=False)
    try:
        ids = AutoTokenizer.from_pretrained(str(folder))(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
    finally:
        llm.close()


@pytest.mark.parametrize("family", MINE)
def test_gguf_imports_back(family, tiny_models, ggufs, tmp_path, cli):
    """transformers' GGUF loader drops LongRoPE, partial rotation and llama3 divisors; slmctl puts them back.
    Nemotron-H, which transformers cannot import, goes through slmctl's own importer (Mamba-2 ops undone)."""
    from transformers import AutoTokenizer

    code, out, err = cli("export", str(ggufs[family]), "--format", "hf", "-o", str(tmp_path / "back"))
    assert code == 0, err
    back = Path(out.strip())
    ids = _ids(100)
    assert np.abs(_hf_logits(back, ids) - _hf_logits(tiny_models[family], ids)).max() <= 1e-5
    a, b = AutoTokenizer.from_pretrained(str(back)), AutoTokenizer.from_pretrained(str(tiny_models[family]))
    assert a(TEXT[:300], add_special_tokens=False)["input_ids"] == b(TEXT[:300], add_special_tokens=False)["input_ids"]


def test_backbone_names_and_unknown_architecture(tiny_models):
    from slmctl.arch import spec_for
    from slmctl.errors import UnsupportedError

    spec = spec_for({"architectures": ["NemotronHForCausalLM"]})
    assert spec.gguf_name("backbone.layers.3.mixer.q_proj.weight") == "blk.3.attn_q.weight"
    assert spec.gguf_name("model.layers.0.mixer.A_log") == "blk.0.ssm_a"
    with pytest.raises(UnsupportedError, match="MysteryForCausalLM") as e:
        spec_for({"architectures": ["MysteryForCausalLM"]})
    assert all(f in e.value.hint for f in ("lfm2", "nemotron_h", "phi3", "llama"))


# ---------------------------------------------------------------- ONNX
@pytest.fixture(scope="module")
def phi4mini_onnx(tiny_models, tmp_path_factory):
    from slmctl import api

    return Path(api.export(str(tiny_models["phi4mini"]), tmp_path_factory.mktemp("onnx_b") / "phi4mini", "onnx"))


def test_onnx_phi4mini_verified_and_switches_to_the_long_factors(tiny_models, phi4mini_onnx):
    """The export is verified against PyTorch (prompt + greedy decode), and the graph picks LongRoPE's factors
    from the positions as transformers does: a 40-token run (short factors) and a 300-token run (long)."""
    from slmctl.eval.backend_onnx import OrtCausalLM

    rep = json.loads((phi4mini_onnx / "slmctl.json").read_text())["verification"]
    assert rep["max_abs_diff_all"] <= 1e-3 and rep["greedy_identical"]
    lm = OrtCausalLM(phi4mini_onnx / "model.onnx")
    for ids in (_ids(40), _ids(300)):
        logits, _ = lm.run(np.asarray([ids]))
        assert np.abs(logits[0] - _hf_logits(tiny_models["phi4mini"], ids)).max() <= 1e-3


# the llama3 divisors are constants of the graph; ~20 s of export
def test_onnx_llama32_verified(tiny_models, tmp_path, cli):
    out = tmp_path / "llama32-onnx"
    code, _, err = cli("export", str(tiny_models["llama32"]), "--format", "onnx", "-o", str(out))
    assert code == 0, err
    rep = json.loads((out / "slmctl.json").read_text())["verification"]
    assert rep["max_abs_diff_all"] <= 1e-3 and rep["greedy_identical"]


@pytest.mark.parametrize("family", HYBRIDS)
def test_onnx_refuses_hybrids_clearly(family, tiny_models, tmp_path, cli):
    code, out, err = cli("export", str(tiny_models[family]), "--format", "onnx", "-o", str(tmp_path / "o"))
    assert code == 1 and out == "" and "not supported for ONNX yet" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- prune
@pytest.mark.parametrize("family", MINE)
def test_depth_prune_keeps_per_layer_lists(family, tiny_models, text_file, tmp_path):
    from slmctl import api
    from slmctl.arch import layer_kinds

    src = tiny_models[family]
    before = json.loads((src / "config.json").read_text())
    rep = api.prune(str(src), tmp_path / "d", method="depth", layers=1, data=str(text_file), samples=4, seqlen=32,
                    eval_windows=0)
    drop = rep["recipe"]["layers_removed"]
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    kinds = layer_kinds(before)
    if kinds is not None:
        assert layer_kinds(cfg) == [k for i, k in enumerate(kinds) if i not in drop]
    m = _hf(tmp_path / "d")
    assert m.config.num_hidden_layers == (before.get("num_hidden_layers") or len(kinds)) - 1
    with torch.no_grad():
        assert torch.isfinite(m(torch.tensor([IDS])).logits).all()


def test_nemotron_h_hub_style_config(tiny_models, text_file, tmp_path):
    """Hub checkpoints keep the pattern string (hybrid_override_pattern) and a layer count: GGUF export reads
    it, depth pruning cuts it, and transformers loads the result."""
    import shutil

    from slmctl import api

    src = tmp_path / "hub"
    shutil.copytree(tiny_models["nemotron_h"], src)
    cfg = json.loads((src / "config.json").read_text())
    cfg.pop("layers_block_type")
    cfg.update(hybrid_override_pattern="M-M*-", num_hidden_layers=5)
    (src / "config.json").write_text(json.dumps(cfg))
    g = api.export(str(src), tmp_path / "hub.gguf", "gguf", outtype="f32")
    assert list(_fields(g)["kv"]["nemotron_h.feed_forward_length"]) == [0, 64, 0, 0, 64]
    rep = api.prune(str(src), tmp_path / "d", method="depth", layers=1, depth_metric="last", eval_windows=0)
    out = json.loads((tmp_path / "d" / "config.json").read_text())
    assert rep["recipe"]["layers_removed"] == [4]
    assert out["hybrid_override_pattern"] == "M-M*" and out["num_hidden_layers"] == 4
    assert _hf(tmp_path / "d").config.layers_block_type == ["linear_attention", "mlp", "linear_attention",
                                                             "full_attention"]


def test_width_prune_llama32(tiny_models, text_file, tmp_path):
    from slmctl import api

    api.prune(str(tiny_models["llama32"]), tmp_path / "w", method="width", heads_ratio=0.5, mlp_ratio=0.25,
              data=str(text_file), samples=4, seqlen=32, eval_windows=0)
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    assert cfg["rope_parameters"]["rope_type"] == "llama3" and cfg["intermediate_size"] == 48
    with torch.no_grad():
        assert torch.isfinite(_hf(tmp_path / "w")(torch.tensor([IDS])).logits).all()


def test_width_prune_phi3_fused_projections(tiny_models, text_file, tmp_path):
    """Phi-3's fused qkv_proj / gate_up_proj lose the same heads and channels as separate projections would;
    with LongRoPE only MLP channels (transformers checks the factors against hidden_size / heads)."""
    from slmctl import api
    from slmctl.errors import UnsupportedError

    kw = dict(data=str(text_file), samples=4, seqlen=32, eval_windows=0)
    with pytest.raises(UnsupportedError, match="LongRoPE"):
        api.prune(str(tiny_models["phi4mini"]), tmp_path / "x", method="width", heads_ratio=0.5, **kw)
    api.prune(str(tiny_models["phi4mini"]), tmp_path / "m", method="width", mlp_ratio=0.25, **kw)
    api.prune(str(tiny_models["phi3"]), tmp_path / "h", method="width", heads_ratio=0.5, mlp_ratio=0.25, **kw)
    from safetensors.torch import load_file

    st = load_file(str(tmp_path / "h" / "model.safetensors"))
    assert st["model.layers.0.self_attn.qkv_proj.weight"].shape == (8 * (2 + 2 + 2), 32)  # 2 q, 2 k, 2 v heads
    assert st["model.layers.0.mlp.gate_up_proj.weight"].shape == (2 * 48, 32)
    for out in ("m", "h"):
        with torch.no_grad():
            assert torch.isfinite(_hf(tmp_path / out)(torch.tensor([IDS])).logits).all()


@pytest.mark.parametrize("family", HYBRIDS)
def test_wanda_leaves_mixers_dense(family, tiny_models, text_file, tmp_path, cli):
    from safetensors.torch import load_file

    out = tmp_path / "wanda"
    code, _, err = cli("prune", str(tiny_models[family]), "--method", "wanda", "--sparsity", "0.5", "--data",
                       str(text_file), "--samples", "4", "--seqlen", "32", "--eval-windows", "0", "-o", str(out))
    assert code == 0, err
    assert "mixers' linears dense" in err
    st = load_file(str(out / "model.safetensors"))
    mixer = ("conv.in_proj", "conv.out_proj") if family == "lfm2" else ("mixer.in_proj", "mixer.out_proj")
    for n, t in st.items():
        if n.endswith(".weight") and t.dim() == 2 and ".layers." in n:
            frac = float((t == 0).float().mean())
            assert (frac < 0.01) if any(m in n for m in mixer) else (frac == pytest.approx(0.5, abs=0.02)), (n, frac)
    with torch.no_grad():
        assert torch.isfinite(_hf(out)(torch.tensor([IDS])).logits).all()


# ---------------------------------------------------------------- quantize
@pytest.mark.parametrize("family", MINE)
def test_gptq_compressed_tensors_loads_in_transformers(family, tiny_models, text_file, tmp_path, cli):
    """GPTQ to compressed-tensors: transformers loads it (with compressed-tensors) and agrees with slmctl's
    own dequantisation; the hybrids' mixer linears stay float (listed in `ignore`)."""
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    from slmctl.io.artifact import open_artifact
    from slmctl.io.quantized_formats import load_dequantized_model

    out = tmp_path / "ct"
    code, _, err = cli("quantize", str(tiny_models[family]), "-g", "32", "--format", "compressed-tensors",
                       "--data", str(text_file), "-o", str(out), *TINY_Q)
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    if family in HYBRIDS:
        assert "unquantised" in err and any("in_proj" in x for x in cfg["quantization_config"]["ignore"])
    theirs = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ours = load_dequantized_model(open_artifact(out))
    with torch.no_grad():
        assert (theirs(torch.tensor([IDS])).logits - ours(torch.tensor([IDS])).logits).abs().max() <= 1e-3


@pytest.mark.parametrize("family,method", [(f, "rtn") for f in MINE] + [(f, "awq") for f in ("phi4mini", *HYBRIDS)])
def test_rtn_awq_gptq_layout_evaluates(family, method, tiny_models, text_file, tmp_path, cli):
    """RTN (streamed) and AWQ (layer by layer) to the GPTQ layout; the hybrids' mixer linears stay float."""
    from safetensors.torch import load_file

    out = tmp_path / method
    code, _, err = cli("quantize", str(tiny_models[family]), "--method", method, "-g", "32", "--data", str(text_file),
                       "-o", str(out), *TINY_Q)
    assert code == 0, err
    st = load_file(str(out / "model.safetensors"))
    assert any(n.endswith("qweight") for n in st)
    if family in HYBRIDS:
        mixer = "conv.in_proj" if family == "lfm2" else "mixer.in_proj"
        assert any(n.endswith(f"{mixer}.weight") for n in st) and not any(mixer in n and "qweight" in n for n in st)
        dyn = json.loads((out / "config.json").read_text())["quantization_config"]["dynamic"]
        assert any(mixer.replace(".", "\\.") in k and k.startswith("-:") for k in dyn)
    code, out_json, err = cli("eval", str(out), "--data", str(text_file), *EVAL, "--json")
    assert code == 0, err
    assert np.isfinite(json.loads(out_json)["ppl"])


# ---------------------------------------------------------------- merge, eval, profile
@pytest.mark.parametrize("family", MINE)
def test_merge_two_seeds(family, tiny_models, tmp_path, cli):
    """Every tensor (conv kernels, A_log, LongRoPE configs) goes through a merge: weights 1,0 give the first
    model back; slerp halfway loads with its per-layer lists."""
    from conftest import build_tiny

    a, b = str(tiny_models[family]), str(build_tiny(family, tmp_path / "b", seed=1))
    code, out, err = cli("merge", a, b, "--method", "linear", "--weights", "1,0", "-o", str(tmp_path / "m"))
    assert code == 0, err
    assert np.abs(_hf_logits(tmp_path / "m", IDS) - _hf_logits(tiny_models[family], IDS)).max() <= 1e-6
    code, out, err = cli("merge", a, b, "--method", "slerp", "--t", "0.5", "-o", str(tmp_path / "s"))
    assert code == 0, err
    cfg, src = (json.loads((p / "config.json").read_text()) for p in (tmp_path / "s", tiny_models[family]))
    for k in ("layer_types", "layers_block_type", "rope_parameters"):
        assert cfg.get(k) == src.get(k)
    assert np.isfinite(_hf_logits(tmp_path / "s", IDS)).all()


@pytest.mark.parametrize("family", MINE)
def test_eval_torch_and_llamacpp_agree(family, tiny_models, ggufs, text_file, cli):
    res = {}
    for model in (tiny_models[family], ggufs[family]):
        code, out, err = cli("eval", str(model), "--data", str(text_file), *EVAL, "--json")
        assert code == 0, err
        res[model] = json.loads(out)
    a, b = res.values()
    assert a["backend"] != b["backend"] and a["ppl"] == pytest.approx(b["ppl"], rel=1e-3)


def test_eval_onnxruntime_agrees(tiny_models, phi4mini_onnx, text_file, cli):
    res = []
    for model in (tiny_models["phi4mini"], phi4mini_onnx):
        code, out, err = cli("eval", str(model), "--data", str(text_file), *EVAL, "--json")
        assert code == 0, err
        res.append(json.loads(out))
    assert res[1]["backend"] == "onnxruntime" and res[1]["ppl"] == pytest.approx(res[0]["ppl"], rel=1e-4)


@pytest.mark.parametrize("family", MINE)
@pytest.mark.parametrize("target", ["torch", "llamacpp"])
def test_profile_runs(family, target, tiny_models, ggufs, cli):
    model = ggufs[family] if target == "llamacpp" else tiny_models[family]
    code, out, err = cli("profile", str(model), "--target", target, "--ctx", "8", "--batch", "1", "--repeats", "1",
                         "--warmup", "0", "--decode-tokens", "2", "--no-bandwidth", "--no-layers", "--json")
    assert code == 0, err
    assert json.loads(out)["prefill"]


# ---------------------------------------------------------------- the whole chain (slow)
@pytest.mark.slow
@pytest.mark.parametrize("family", MINE)
def test_chain_prune_quantize_export_eval(family, tiny_models, text_file, tmp_path, cli):
    """prune depth -> quantize gptq -> export gguf -> eval in llama.cpp, gated against the quantised model."""
    pruned, q, g = tmp_path / "p", tmp_path / "q", tmp_path / "m.gguf"
    data = ("--data", str(text_file))
    code, _, err = cli("prune", str(tiny_models[family]), "--method", "depth", "--layers", "1", *data,
                       "--samples", "4", "--seqlen", "32", "--eval-windows", "0", "-o", str(pruned))
    assert code == 0, err
    code, _, err = cli("quantize", str(pruned), "--method", "gptq", "-g", "32", *data, "-o", str(q), *TINY_Q)
    assert code == 0, err
    code, _, err = cli("export", str(q), "--format", "gguf", "-o", str(g))
    assert code == 0, err
    code, out, err = cli("eval", str(g), "--reference", str(q), *data, *EVAL, "--backend", "llamacpp",
                         "--max-kld", "0.01", "--min-top1", "90", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["backend"] == "llamacpp" and rep["kld"]["mean"] <= 0.01
