"""onnxruntime-genai runs slmctl's ONNX exports as they are: genai_config.json and the tokenizer files beside
model.onnx, greedy tokens equal to transformers' (fp32) and to plain onnxruntime's (int8, int4 MatMulNBits)."""

from __future__ import annotations

import json

import numpy as np
import pytest

og = pytest.importorskip("onnxruntime_genai")
from conftest import NEW_TOKENS, genai_greedy  # noqa: E402  (shared helpers)

# the tiny llama runs in the default suite (fp32, int8, int4); each other family costs an export, so they are slow
SLOW_FAMILIES = ("mistral", "qwen2", "qwen3", "phi3", "gemma2", "gpt2")


def _export(src, out):
    from slmctl import api

    return api.export(str(src), out, "onnx")


def torch_greedy(folder, prompt: list[int], new_tokens: int = NEW_TOKENS) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=model.config.eos_token_id)
    return [int(t) for t in out[0, len(prompt):]]


def ort_greedy(folder, prompt: list[int], new_tokens: int = NEW_TOKENS) -> list[int]:
    """Plain onnxruntime through slmctl's eval backend: prompt, then one token at a time through present -> past."""
    from slmctl.eval.backend_onnx import OrtCausalLM

    lm = OrtCausalLM(folder / "model.onnx")
    logits, past = lm.run(np.asarray([prompt]))
    toks = [int(logits[0, -1].argmax())]
    for _ in range(new_tokens - 1):
        logits, past = lm.run(np.asarray([[toks[-1]]]), past)
        toks.append(int(logits[0, -1].argmax()))
    return toks


def _until_eos(tokens: list[int], eos) -> list[int]:
    """A greedy run stops after its first EOS; compare only up to there."""
    eos = set(eos if isinstance(eos, list) else [eos])
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def _prompt(folder) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    return tok("To be, or not to be, that is the question", add_special_tokens=False)["input_ids"]


def _check_family(src, out):
    _export(src, out)
    cfg = json.loads((out / "genai_config.json").read_text())
    prompt = _prompt(src)
    want = _until_eos(torch_greedy(src, prompt), cfg["model"]["eos_token_id"])
    got = genai_greedy(out, prompt)
    assert got == want, (got, want)
    return out, cfg


@pytest.fixture(scope="module")
def llama_genai(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("genai") / "llama-onnx"
    return _check_family(tiny_llama, out)


def test_export_writes_genai_config(llama_genai, tiny_llama):
    out, cfg = llama_genai
    src = json.loads((tiny_llama / "config.json").read_text())
    d = cfg["model"]["decoder"]
    assert d["filename"] == "model.onnx"
    assert d["num_hidden_layers"] == src["num_hidden_layers"] and d["num_key_value_heads"] == src["num_key_value_heads"]
    assert d["head_size"] == src["hidden_size"] // src["num_attention_heads"]
    assert d["inputs"] == {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    assert d["outputs"] == {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"}
    assert cfg["model"]["type"] == "llama" and cfg["model"]["vocab_size"] == src["vocab_size"]
    assert cfg["model"]["eos_token_id"] == src["eos_token_id"] and cfg["search"]["past_present_share_buffer"] is False
    # the tokenizer files onnxruntime-genai reads travel with the graph
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("family", SLOW_FAMILIES)
def test_genai_greedy_equals_transformers_every_family(tiny_models, tmp_path, family):
    _check_family(tiny_models[family], tmp_path / family)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_folder_runs_in_genai(llama_genai, tiny_llama, tmp_path, bits):
    from slmctl.pipelines.quantize_onnx import quantize_onnx

    src, cfg = llama_genai
    out = tmp_path / f"int{bits}"
    quantize_onnx(str(src), out, bits=bits, block_size=32 if bits == 4 else 128)
    assert json.loads((out / "genai_config.json").read_text()) == cfg
    prompt = _prompt(tiny_llama)
    want = _until_eos(ort_greedy(out, prompt), cfg["model"]["eos_token_id"])
    assert genai_greedy(out, prompt) == want


@pytest.mark.slow
def test_sample_int4_genai_equals_onnxruntime(tmp_path):
    """The issue's check: the sample's int4 (MatMulNBits) export generates the same greedy tokens in
    onnxruntime-genai as in its plain onnxruntime run, and genai's tokenizer encodes like transformers'."""
    from transformers import AutoTokenizer

    from slmctl import api
    from slmctl.pipelines.quantize_onnx import quantize_onnx

    fp32 = tmp_path / "smollm2-onnx"
    api.export("sample:smollm2-135m", fp32, "onnx")
    int4 = tmp_path / "smollm2-int4"
    quantize_onnx(str(fp32), int4, bits=4)
    text = "The quality of mercy is not strained; it droppeth as the gentle rain from heaven"
    tok = AutoTokenizer.from_pretrained(str(int4))
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    config = og.Config(str(int4))
    config.clear_providers()
    gtok = og.Tokenizer(og.Model(config))
    assert [int(t) for t in gtok.encode(text)] == prompt
    cfg = json.loads((int4 / "genai_config.json").read_text())
    want = _until_eos(ort_greedy(int4, prompt, 48), cfg["model"]["eos_token_id"])
    assert genai_greedy(int4, prompt, 48) == want
