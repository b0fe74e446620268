"""GGUF export: every family runs in llama.cpp like in transformers; block maths bit-identical to gguf-py."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from slmctl.io.libllama import open_llama  # AMX-safe, as slmctl itself opens GGUFs

from conftest import FAMILIES, TEXT

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

PROMPT = [5, 17, 42, 99, 123, 7, 250, 64, 300, 11, 88, 190, 33, 271, 150, 9]


@functools.lru_cache(maxsize=None)
def _hf_model(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def _hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import torch

    m = _hf_model(folder)
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0].numpy()


def _hf_greedy(folder: Path, ids: list[int], n: int) -> list[int]:
    import torch

    m = _hf_model(folder)
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(m(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids):]


def _llama(path: Path):
    return open_llama(path, n_ctx=64, n_batch=64, logits_all=True, n_threads=1,
                           n_threads_batch=1, verbose=False, seed=0, type_k=0, type_v=0)


def _llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _llama_greedy(llm, ids, n):
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


@pytest.fixture(scope="module")
def f32_exports(tiny_models, tmp_path_factory):
    """{family: f32 GGUF} exported through the API once per module."""
    from slmctl import api

    root = tmp_path_factory.mktemp("gguf_f32")
    return {fam: api.export(str(p), root / f"{fam}.gguf", "gguf", outtype="f32") for fam, p in tiny_models.items()}


# ---------------------------------------------------------------- every family in llama.cpp
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_f32_logits_and_greedy_match_transformers(family, tiny_models, f32_exports):
    path = f32_exports[family]
    llm = _llama(path)
    try:
        got = _llama_logits(llm, PROMPT)
        ref = _hf_logits(tiny_models[family], PROMPT)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-3, f"{family}: max abs diff {np.abs(got - ref).max()}"
        assert _llama_greedy(llm, PROMPT, 16) == _hf_greedy(tiny_models[family], PROMPT, 16)
    finally:
        llm.close()


def test_metadata_tokenizer_and_provenance(tiny_llama, f32_exports):
    r = gguf.GGUFReader(str(f32_exports["llama"]))
    f = r.fields
    assert f["general.architecture"].contents() == "llama"
    assert f["tokenizer.ggml.model"].contents() == "gpt2"
    assert f["tokenizer.ggml.pre"].contents() == "gpt-2"
    tok = json.loads((tiny_llama / "tokenizer.json").read_text())
    tokens = f["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    for s, i in tok["model"]["vocab"].items():
        assert tokens[i] == s
    assert f["tokenizer.ggml.merges"].contents()[0] == " ".join(tok["model"]["merges"][0]) \
        if isinstance(tok["model"]["merges"][0], list) else tok["model"]["merges"][0]
    assert f["tokenizer.ggml.bos_token_id"].contents() == 1
    assert f["tokenizer.ggml.eos_token_id"].contents() == 2
    types = f["tokenizer.ggml.token_type"].contents()
    assert types[1] == 3 and types[2] == 3 and types[100] == 1  # control specials, normal tokens
    assert f["llama.attention.head_count_kv"].contents() == 2
    assert f["llama.rope.freq_base"].contents() == pytest.approx(100000.0)
    prov = json.loads(f["slmctl.provenance"].contents())
    assert prov["verb"] == "export" and prov["recipe"]["outtype"] == "f32"
    assert prov["inputs"][0]["sha256"]
    side = f32_exports["llama"].with_name("llama.gguf.slmctl.json")
    assert json.loads(side.read_text())["recipe"]["format"] == "gguf"
    # norms are f32, tied output is not written (llama.cpp reuses token_embd)
    names = {t.name for t in r.tensors}
    assert "output.weight" not in names and "token_embd.weight" in names


def test_llama_cpp_tokenises_like_transformers(tiny_llama, f32_exports):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_llama))
    llm = llama_cpp.Llama(model_path=str(f32_exports["llama"]), vocab_only=True, verbose=False)
    try:
        for line in TEXT.splitlines()[:6] + ["12345 digits, and 'quotes' too!"]:
            assert llm.tokenize(line.encode(), add_bos=False, special=False) == hf(line, add_special_tokens=False)["input_ids"]
    finally:
        llm.close()


def test_chat_template_and_special_tokens(tiny_llama, tmp_path, cli):
    src = tmp_path / "chat"
    shutil.copytree(tiny_llama, src)
    template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    (src / "chat_template.jinja").write_text(template)
    tc = json.loads((src / "tokenizer_config.json").read_text())
    tc["pad_token"] = "</s>"
    (src / "tokenizer_config.json").write_text(json.dumps(tc))
    code, out, err = cli("export", str(src), "--format", "gguf", "--outtype", "f16", "-o", str(tmp_path / "c.gguf"))
    assert code == 0, err
    assert out.strip() == str(tmp_path / "c.gguf")
    f = gguf.GGUFReader(out.strip()).fields
    assert f["tokenizer.chat_template"].contents() == template
    assert f["tokenizer.ggml.padding_token_id"].contents() == 2


# ---------------------------------------------------------------- output types
@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
def test_outtypes_bytes_match_gguf_reference_and_run(outtype, tiny_models, tmp_path):
    """Each 2-D weight's bytes equal gguf.quants.quantize of the HF tensor; llama.cpp runs the file."""
    from safetensors.numpy import load_file

    from slmctl import api

    src = tiny_models["qwen2"]  # no Q/K permutation, so HF tensors map 1:1
    out = api.export(str(src), tmp_path / f"m-{outtype}.gguf", "gguf", outtype=outtype)
    hf = load_file(str(src / "model.safetensors"))
    r = gguf.GGUFReader(str(out))
    qtype = gguf.GGMLQuantizationType[outtype.upper()]
    by_name = {t.name: t for t in r.tensors}
    checked = 0
    for hf_name, g_name in [("model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight"),
                            ("model.layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight"),
                            ("model.embed_tokens.weight", "token_embd.weight")]:
        t = by_name[g_name]
        assert t.tensor_type == qtype
        ref = gguf.quants.quantize(hf[hf_name].astype(np.float32), qtype)
        assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), ref.view(np.uint8).reshape(-1))
        checked += 1
    assert by_name["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert by_name["blk.0.attn_q.bias"].tensor_type == gguf.GGMLQuantizationType.F32
    assert checked == 3
    llm = _llama(out)
    try:
        got = _llama_logits(llm, PROMPT)
    finally:
        llm.close()
    ref = _hf_logits(src, PROMPT)
    assert np.isfinite(got).all()
    # quantised models still rank like the original on most positions
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= (0.9 if outtype in ("f16", "bf16", "q8_0") else 0.5)


# ---------------------------------------------------------------- per-layer widths
def _nonuniform(tiny_llama: Path, tmp: Path) -> tuple[Path, Path]:
    """(pruned folder with slmctl_per_layer, uniform folder with the pruned parts zeroed = same function)."""
    from safetensors.torch import load_file, save_file

    cfg = json.loads((tiny_llama / "config.json").read_text())
    sd = load_file(str(tiny_llama / "model.safetensors"))
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    zeroed, pruned = dict(sd), dict(sd)
    # layer 0: FFN 64 -> 40 channels
    keep = 40
    p0 = "model.layers.0.mlp."
    zeroed[p0 + "down_proj.weight"] = sd[p0 + "down_proj.weight"].clone()
    zeroed[p0 + "down_proj.weight"][:, keep:] = 0
    for k in ("gate_proj.weight", "up_proj.weight"):
        pruned[p0 + k] = sd[p0 + k][:keep].clone()
    pruned[p0 + "down_proj.weight"] = sd[p0 + "down_proj.weight"][:, :keep].clone()
    # layer 1: drop KV head 1 and its query heads 2, 3 (GQA groups of 2)
    a = "model.layers.1.self_attn."
    zeroed[a + "o_proj.weight"] = sd[a + "o_proj.weight"].clone()
    zeroed[a + "o_proj.weight"][:, 2 * hd:] = 0
    pruned[a + "q_proj.weight"] = sd[a + "q_proj.weight"][: 2 * hd].clone()
    pruned[a + "k_proj.weight"] = sd[a + "k_proj.weight"][:hd].clone()
    pruned[a + "v_proj.weight"] = sd[a + "v_proj.weight"][:hd].clone()
    pruned[a + "o_proj.weight"] = sd[a + "o_proj.weight"][:, : 2 * hd].clone()
    out = []
    for name, tensors, extra in (("pruned", pruned, {"slmctl_per_layer": {
            "num_attention_heads": [4, 2], "num_key_value_heads": [2, 1], "intermediate_size": [keep, 64]}}),
            ("zeroed", zeroed, {})):
        d = tmp / name
        shutil.copytree(tiny_llama, d)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps({**cfg, **extra}))
        out.append(d)
    return out[0], out[1]


def test_per_layer_widths_run_in_llama_cpp(tiny_llama, tmp_path, cli):
    pruned, zeroed = _nonuniform(tiny_llama, tmp_path)
    dst = tmp_path / "pruned.gguf"
    code, out, err = cli("export", str(pruned), "--format", "gguf", "--outtype", "f32", "-o", str(dst))
    assert code == 0, err
    f = gguf.GGUFReader(str(dst)).fields
    arch = f["general.architecture"].contents()
    assert f[f"{arch}.attention.head_count"].contents() == [4, 2]
    assert f[f"{arch}.attention.head_count_kv"].contents() == [2, 1]
    assert f[f"{arch}.feed_forward_length"].contents() == [40, 64]
    llm = _llama(dst)
    try:
        got = _llama_logits(llm, PROMPT)
    finally:
        llm.close()
    ref = _hf_logits(zeroed, PROMPT)
    assert np.abs(got - ref).max() <= 1e-3


# ---------------------------------------------------------------- errors
def test_unknown_outtype_is_a_usage_error(tiny_llama, tmp_path, cli):
    code, out, err = cli("export", str(tiny_llama), "--format", "gguf", "--outtype", "q4_k_n", "-o", str(tmp_path / "x.gguf"))
    assert code == 2 and out == ""
    assert "q4_k_n" in err and "q4_k_m" in err
    assert not (tmp_path / "x.gguf").exists()


def test_unsupported_architecture_names_it(tiny_llama, tmp_path, cli):
    src = tmp_path / "odd"
    shutil.copytree(tiny_llama, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["FalconForCausalLM"], "falcon"
    (src / "config.json").write_text(json.dumps(cfg))
    code, out, err = cli("export", str(src), "--format", "gguf", "-o", str(tmp_path / "x.gguf"))
    assert code == 1 and "FalconForCausalLM" in err and "llama" in err
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".x.gguf*"))


def test_existing_output_needs_force(tiny_llama, tmp_path, cli):
    dst = tmp_path / "m.gguf"
    dst.write_bytes(b"keep")
    code, _, err = cli("export", str(tiny_llama), "--format", "gguf", "-o", str(dst))
    assert code == 1 and "--force" in err and dst.read_bytes() == b"keep"
    code, _, err = cli("export", str(tiny_llama), "--format", "gguf", "-o", str(dst), "--force")
    assert code == 0 and dst.read_bytes()[:4] == b"GGUF"


def test_llama3_rope_scaling_matches_transformers(tiny_llama, tmp_path):
    """Llama 3.x frequency scaling: the rope_freqs tensor gives transformers' logits in llama.cpp."""
    from slmctl import api

    src = tmp_path / "l3"
    shutil.copytree(tiny_llama, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
    (src / "config.json").write_text(json.dumps(cfg))
    out = api.export(str(src), tmp_path / "l3.gguf", "gguf", outtype="f32")
    r = gguf.GGUFReader(str(out))
    freqs = {t.name: t for t in r.tensors}["rope_freqs.weight"]
    assert len(freqs.data) == 4 and float(np.max(freqs.data)) > 1.0  # some wavelengths are scaled
    llm = _llama(out)
    try:
        got = _llama_logits(llm, PROMPT)
    finally:
        llm.close()
    assert np.abs(got - _hf_logits(src, PROMPT)).max() <= 1e-3


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_gguf_imports_back_to_the_same_hf_model(family, tiny_models, f32_exports, tmp_path, cli):
    """HF -> GGUF (f32) -> HF through transformers' GGUF loader gives back the same logits (Q/K unpermuted)."""
    code, out, err = cli("export", str(f32_exports[family]), "--format", "hf", "-o", str(tmp_path / "back"))
    assert code == 0, err
    assert "de-quantizing" not in err  # transformers' own loader bar is silenced; slmctl reports progress
    ids = PROMPT[:8]
    assert np.abs(_hf_logits(Path(out.strip()), ids) - _hf_logits(tiny_models[family], ids)).max() <= 1e-5


def test_sentencepiece_tokenizer_model(tiny_llama, tmp_path):
    """A llama-style SentencePiece tokenizer.model: pieces, scores and byte tokens; llama.cpp tokenises like it."""
    import io

    spm = pytest.importorskip("sentencepiece")
    from slmctl import api

    src = tmp_path / "spm"
    shutil.copytree(tiny_llama, src)
    (src / "tokenizer.json").unlink()
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT.splitlines() * 5), model_writer=buf, vocab_size=320,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1,
                                   eos_id=2, minloglevel=2)
    (src / "tokenizer.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    out = api.export(str(src), tmp_path / "spm.gguf", "gguf", outtype="f32")
    f = gguf.GGUFReader(str(out)).fields
    assert f["tokenizer.ggml.model"].contents() == "llama"
    assert f["tokenizer.ggml.tokens"].contents()[:3] == ["<unk>", "<s>", "</s>"]
    assert f["tokenizer.ggml.token_type"].contents()[3] == 6  # <0x00> is a byte token
    assert f["tokenizer.ggml.scores"].contents()[300] == pytest.approx(sp.get_score(300))
    assert f["tokenizer.ggml.add_bos_token"].contents() is True
    llm = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    try:
        for line in TEXT.splitlines()[:6] + ["Zebra 42 ünïcode"]:
            assert llm.tokenize(line.encode(), add_bos=False) == sp.encode(line)
        assert llm.tokenize(b"To be", add_bos=True)[0] == 1
    finally:
        llm.close()
