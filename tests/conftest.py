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
    # Gemma 3 (270M's shape, shrunk): one KV head, head_dim above hidden/heads, a sliding then a full layer with
    # their own RoPE bases, QK norms; query_pre_attn_scalar = hidden/heads (the 27B's rule) so it differs from
    # head_dim; SentencePiece-style tokenizer without a dummy prefix (SPM_FAMILIES)
    "gemma3": dict(model_type="gemma3_text", intermediate_size=64, num_key_value_heads=1, head_dim=16,
                   query_pre_attn_scalar=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                   rope_parameters={"sliding_attention": dict(rope_type="default", rope_theta=10000.0),
                                    "full_attention": dict(rope_type="default", rope_theta=1000000.0)},
                   hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True),
    # SmolLM3: RoPE left out of every 4th layer, so 4 layers; tied, GQA
    "smollm3": dict(model_type="smollm3", num_hidden_layers=4, intermediate_size=64, num_key_value_heads=2,
                    no_rope_layer_interval=4, tie_word_embeddings=True, use_sliding_window=False, pad_token_id=0,
                    rope_parameters=dict(rope_type="default", rope_theta=5000000.0)),
    # Granite 3.x dense: the four multipliers with granite-3.3-2b's values (attention = 1/head_dim)
    "granite": dict(model_type="granite", intermediate_size=64, num_key_value_heads=2, tie_word_embeddings=True,
                    embedding_multiplier=12.0, attention_multiplier=0.125, residual_multiplier=0.22,
                    logits_scaling=8.0, rope_parameters=dict(rope_type="default", rope_theta=10000000.0)),
    # OLMo 2: post-norms, QK norms over whole projections, untied, MHA (as OLMo-2-1B)
    "olmo2": dict(model_type="olmo2", intermediate_size=64, num_key_value_heads=4, tie_word_embeddings=False,
                  rope_parameters=dict(rope_type="default", rope_theta=500000.0)),
    # Llama 3.2: llama3 frequency-dependent RoPE (factor 32 as 1B/3B); the original context is scaled down with the
    # head so that one frequency is kept, one interpolated and two slowed
    "llama32": dict(model_type="llama", intermediate_size=64, num_key_value_heads=2, tie_word_embeddings=True,
                    max_position_embeddings=1024,
                    rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                                         high_freq_factor=4.0, original_max_position_embeddings=256)),
    # Phi-4-mini: phi3 with 3/4 of each head rotated, LongRoPE short/long factors, tied embeddings
    "phi4mini": dict(model_type="phi3", intermediate_size=64, num_key_value_heads=2, tie_word_embeddings=True,
                     pad_token_id=0, partial_rotary_factor=0.75, sliding_window=262144, max_position_embeddings=1024,
                     original_max_position_embeddings=256,  # llama.cpp rounds its context up to 256
                     rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.75,
                                          short_factor=[1.0, 1.2, 1.9], long_factor=[1.1, 3.5, 9.0],
                                          original_max_position_embeddings=256)),
    # LFM2: gated short-convolution blocks and GQA attention blocks with QK norms (LFM2-350M's 2:1, shrunk)
    "lfm2": dict(model_type="lfm2", num_hidden_layers=4, layer_types=["conv", "conv", "full_attention", "conv"],
                 num_key_value_heads=2, intermediate_size=96, block_multiple_of=32, block_auto_adjust_ff_dim=True,
                 block_ffn_dim_multiplier=1.0, conv_L_cache=3, norm_eps=1e-5, tie_word_embeddings=True,
                 rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    # Nemotron-H: Mamba-2 (M), attention (*) and ReLU^2 MLP (-) blocks, as nvidia/Nemotron-H-*'s pattern
    "nemotron_h": dict(model_type="nemotron_h", num_hidden_layers=5, hybrid_override_pattern="M-M*-",
                       num_key_value_heads=2, head_dim=8, intermediate_size=64, mamba_num_heads=8, mamba_head_dim=8,
                       n_groups=2, ssm_state_size=16, conv_kernel=4, chunk_size=16, layer_norm_epsilon=1e-5,
                       mlp_hidden_act="relu2", use_mamba_kernels=False, tie_word_embeddings=False),
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


SPM_FAMILIES = ("gemma3",)  # families whose tiny model gets a SentencePiece-style tokenizer


def _spm_tokenizer(folder: Path):
    """Gemma-style SentencePiece: BPE with byte fallback, digits split, no dummy prefix (spaces become "▁"
    in place), turn markers as user-defined pieces; tokenizer.model plus the tokenizer.json transformers makes."""
    import io
    import json

    import sentencepiece as spm
    from transformers import AutoTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT.splitlines()), model_writer=buf, vocab_size=384,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, split_digits=True,
                                   add_dummy_prefix=False, remove_extra_whitespaces=False,
                                   normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=3,
                                   unk_piece="<unk>", bos_piece="<bos>", eos_piece="<eos>", pad_piece="<pad>",
                                   user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], minloglevel=2)
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>",
         "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False}))
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.save_pretrained(folder)
    return tok


def build_tiny(family: str, folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = (_spm_tokenizer if family in SPM_FAMILIES else _tokenizer)(folder)
    spec = dict(FAMILIES[family])
    model_type = spec.pop("model_type")
    common = {} if family == "gpt2" else dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                max_position_embeddings=128)
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), bos_token_id=1, eos_token_id=2, **{**common, **spec})
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


# ---- helpers shared by test modules in several folders (moved here from the module named) ----

# from tests/pipelines/test_merge.py
def perturbed_copy(src: Path, dest: Path, seed: int, scale: float = 0.02) -> Path:
    """A copy of an HF folder with Gaussian noise added to every tensor (the same tokenizer and config)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    sd = load_file(str(dest / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    save_file({k: v + scale * torch.randn(v.shape, generator=g) for k, v in sd.items()},
              str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def load_dir(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out



# from tests/pipelines/test_prune.py
FAST = dict(samples=4, seqlen=32, eval_ctx=32, eval_windows=1)


def _prune(src, out, text_file, **kw):
    from slmctl import api

    args = dict(FAST, data=str(text_file))
    args.update(kw)
    return api.prune(str(src), out, **args)


def _state(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))



# from tests/pipelines/test_distill.py
SEQ = 32


def make_student(teacher: Path, folder: Path, seed: int = 1, **cfg_changes) -> Path:
    """A smaller student from the teacher's config, sharing its tokenizer files."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(teacher)
    for k, v in cfg_changes.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (teacher / f).is_file():
            shutil.copyfile(teacher / f, folder / f)
    return folder


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))



# from tests/pipelines/test_onnx.py
@pytest.fixture(scope="module")
def llama_onnx(tiny_llama, tmp_path_factory):
    """The tiny llama exported once through the CLI (in-process)."""
    from slmctl.cli.app import main

    out = tmp_path_factory.mktemp("onnx") / "llama-onnx"
    import contextlib
    import io

    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        code = main(["export", str(tiny_llama), "--format", "onnx", "-o", str(out)])
    assert code == 0, se.getvalue()
    assert so.getvalue().strip() == str(out)
    return out, se.getvalue()



# from tests/io/test_genai.py
NEW_TOKENS = 24


def genai_greedy(folder, prompt: list[int], new_tokens: int = NEW_TOKENS) -> list[int]:
    """onnxruntime-genai's greedy continuation of ``prompt`` (CPU), up to ``new_tokens`` or its EOS."""
    import numpy as np
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.clear_providers()
    model = og.Model(config)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + new_tokens)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(prompt, dtype=np.int32))
    while not gen.is_done():
        gen.generate_next_token()
    return [int(t) for t in gen.get_sequence(0)[len(prompt):]]


@pytest.fixture
def no_plugins(monkeypatch):
    """Targets' plugin manager with no installed plugins, rebuilt before and after the test."""
    from slmctl.targets import manager as m

    monkeypatch.setenv(m.ENV, "")
    m.reset()
    yield
    m.reset()
