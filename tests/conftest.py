"""Shared fixtures: tiny random models built from a config once per session (never downloaded).

Each family gets hidden size 32, 2 layers, and a byte-level BPE tokenizer of about 300 tokens
trained here on a few lines of text, so a model folder is a few hundred KB.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SLMCTL_LOAD_PLUGINS", "")  # tests never load installed target plugins by accident

TEXT = """\
Now is the winter of our discontent made glorious summer by this sun of York;
and all the clouds that lour'd upon our house in the deep bosom of the ocean buried.
To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer
the slings and arrows of outrageous fortune, or to take arms against a sea of troubles.
Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him.
All the world's a stage, and all the men and women merely players.
""" * 4

FAMILIES = {
    "llama": dict(model_type="llama", intermediate_size=64, num_key_value_heads=2, tie_word_embeddings=True,
                  rope_theta=100000.0),
    "mistral": dict(model_type="mistral", intermediate_size=64, num_key_value_heads=2, sliding_window=None),
    "qwen2": dict(model_type="qwen2", intermediate_size=64, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3", intermediate_size=64, num_key_value_heads=2, head_dim=8),
    "phi3": dict(model_type="phi3", intermediate_size=64, num_key_value_heads=4, pad_token_id=0),
    "gemma2": dict(model_type="gemma2", intermediate_size=64, num_key_value_heads=2, head_dim=8,
                   query_pre_attn_scalar=8, sliding_window=16),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=128, n_inner=64),
}


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    return fast


def build_tiny(family: str, folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(folder)
    spec = dict(FAMILIES[family])
    model_type = spec.pop("model_type")
    common = {} if family == "gpt2" else dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                max_position_embeddings=128)
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), bos_token_id=1, eos_token_id=2, **common, **spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    # random init of norms too, so tests see more than ones and zeros
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{family: HF folder} for every family, built once per session."""
    root = tmp_path_factory.mktemp("tiny")
    return {fam: build_tiny(fam, root / fam) for fam in FAMILIES}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "text.txt"
    p.write_text(TEXT * 3)
    return p


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Hash cache in a temp folder; the sample cache stays shared so the real model is imported once."""
    if "SLMCTL_CACHE" not in os.environ:
        monkeypatch.setenv("SLMCTL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


PEERS = Path(os.environ.get("SLMCTL_PEERS", Path(__file__).resolve().parent.parent / ".peers"))


def peer_bin(venv: str, exe: str = "python") -> Path:
    """An executable of a peer tool's venv, built by `make peers` under .peers/ (override: $SLMCTL_PEERS)."""
    return PEERS / venv / "bin" / exe


def run_cli(*args: str, input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run slmctl in a subprocess, as a shell script would."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "slmctl", *args], capture_output=True, text=True, input=input,
                          env=e, timeout=600)


@pytest.fixture
def cli():
    """Run slmctl in-process: returns (exit code, stdout, stderr)."""
    def _run(*args: str):
        import contextlib
        import io

        from slmctl.cli.app import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
        return code, out.getvalue(), err.getvalue()

    return _run
