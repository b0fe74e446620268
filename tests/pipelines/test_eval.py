"""Exact facts of eval on tiny models: self-comparison, hand-computed perplexity, gates."""

import json
import math

import pytest
import torch

from slmctl.calib import token_windows


def test_model_against_itself(cli, tiny_llama, text_file):
    code, out, err = cli("eval", str(tiny_llama), "--reference", str(tiny_llama), "--data", str(text_file),
                         "--ctx", "32", "--windows", "4", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["kld"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert rep["kld"]["max"] == pytest.approx(0.0, abs=1e-9)
    assert rep["top1_agreement_pct"] == 100.0
    assert rep["ppl_ratio"] == pytest.approx(1.0)
    assert rep["tokens"] == 4 * 31


def test_perplexity_matches_hand_computation(cli, tiny_llama, text_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    code, out, err = cli("eval", str(tiny_llama), "--data", str(text_file), "--ctx", "16", "--windows", "3", "--json")
    assert code == 0, err
    rep = json.loads(out)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    ids = tok(text_file.read_text(), add_special_tokens=False)["input_ids"]
    nll = []
    for w in range(3):
        x = torch.tensor([ids[w * 16:(w + 1) * 16]])
        with torch.no_grad():
            logp = torch.log_softmax(model(x).logits[0].double(), -1)
        for i in range(15):
            nll.append(-logp[i, x[0, i + 1]].item())
    assert rep["ppl"] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-6)


def test_gate_exits_3(cli, tiny_models, text_file, tmp_path):
    other = tiny_models["llama"]
    # a float16 copy is close, but not identical: a zero tolerance must fail, a loose one pass
    f16 = tmp_path / "f16"
    assert cli("export", str(other), "--dtype", "float16", "-o", str(f16))[0] == 0
    args = ["eval", str(f16), "--reference", str(other), "--data", str(text_file), "--ctx", "32", "--windows", "2"]
    code, out, err = cli(*args, "--max-kld", "0")
    assert code == 3
    assert "gate failed: mean KL divergence" in err and "exceeds 0" in err
    assert "FAILED" in out
    code, out, err = cli(*args, "--max-kld", "0.01", "--min-top1", "90", "--max-ppl-increase", "1")
    assert code == 0, err


def test_gate_needs_reference(cli, tiny_llama, text_file):
    code, _, err = cli("eval", str(tiny_llama), "--data", str(text_file), "--ctx", "16", "--windows", "1",
                       "--max-kld", "1")
    assert code == 2 and "--reference" in err


def test_different_tokenizers_refused(cli, tiny_models, text_file, tmp_path):
    import shutil

    from conftest import build_tiny

    other = build_tiny("llama", tmp_path / "other")
    # a different tokenizer: retrain with another vocabulary size
    tj = json.loads((other / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    swapped = {k: (v + 1) % len(vocab) if v > 10 else v for k, v in vocab.items()}
    tj["model"]["vocab"] = swapped
    (other / "tokenizer.json").write_text(json.dumps(tj))
    code, _, err = cli("eval", str(other), "--reference", str(tiny_models["llama"]), "--data", str(text_file),
                       "--ctx", "16", "--windows", "1")
    assert code == 1 and "do not share a tokenizer" in err


def test_gguf_export_evaluates_against_its_hf_folder(cli, tiny_models, text_file, tmp_path):
    # transformers' GGUF tokenizer loader appends <|endoftext|> (id 320) to the tiny GPT-2-style vocabulary:
    # an extra special id past the model's rows, which must not block the comparison
    gguf = tmp_path / "m.gguf"
    code, _, err = cli("export", str(tiny_models["llama"]), "--format", "gguf", "--outtype", "f32", "-o", str(gguf))
    assert code == 0, err
    code, out, err = cli("eval", str(gguf), "--reference", str(tiny_models["llama"]), "--data", str(text_file),
                         "--ctx", "16", "--windows", "2", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["backend"] == "llamacpp" and rep["kld"]["mean"] < 1e-4 and rep["top1_agreement_pct"] == 100.0


def test_same_vocab_allows_only_extra_special_tokens(tiny_models):
    from transformers import AutoTokenizer

    from slmctl.eval.run import _same_vocab

    a = AutoTokenizer.from_pretrained(str(tiny_models["llama"]))
    b = AutoTokenizer.from_pretrained(str(tiny_models["llama"]))
    assert _same_vocab(a, b)
    b.add_special_tokens({"additional_special_tokens": ["<|endoftext|>"]})
    assert len(b) == len(a) + 1 and _same_vocab(a, b) and _same_vocab(b, a)
    c = AutoTokenizer.from_pretrained(str(tiny_models["llama"]))
    c.add_tokens(["zzqx"])  # an ordinary word the other tokenizer would split
    assert not _same_vocab(a, c)


def test_data_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from slmctl.calib import load_text

    (tmp_path / "d.jsonl").write_text('{"text": "a b"}\n{"text": "c"}\n')
    assert load_text(str(tmp_path / "d.jsonl")) == "a b\n\nc"
    pq.write_table(pa.table({"body": ["x", "y"]}), tmp_path / "d.parquet")
    assert load_text(str(tmp_path / "d.parquet"), field="body") == "x\n\ny"
    from slmctl.errors import InputError

    with pytest.raises(InputError, match="no string field 'body'"):
        load_text(str(tmp_path / "d.jsonl"), field="body")


def test_sample_regions_do_not_overlap():
    from slmctl.calib import shakespeare

    ev, ca, tr = shakespeare("eval"), shakespeare("calib"), shakespeare("train")
    assert len(ev) > 500_000 and len(ca) > 500_000 and len(tr) > 2_000_000
    assert ev[:5000] not in ca and ev[:5000] not in tr and ca[:5000] not in tr
    assert ev.startswith("# Hamlet")


def test_windows_tokenise_only_what_is_needed():
    calls = []

    def tok(text):
        calls.append(len(text))
        return list(range(len(text) // 4))

    wins = token_windows(tok, "x" * 4_000_000, 10, 3)
    assert len(wins) == 3 and all(len(w) == 10 for w in wins)
    assert max(calls) < 10_000
