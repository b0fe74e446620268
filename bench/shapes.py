"""Random-weight models of real shapes, for time and memory at real sizes (meaningless for quality).

Each shape is the real model's config.json values (hidden size, layers, heads, MLP width, tying, RoPE)
with the sample's tokenizer (SmolLM2's 49,152-token vocabulary), so every shape tokenises the same text
and runs in every tool. All shapes use the Llama layout (Qwen2's q/k/v biases, 0.1% of its weights, are
left out): llama.cpp's convert_hf_to_gguf.py refuses a Qwen2 model whose BPE pre-tokenizer it does not
recognise, and the sample's tokenizer is one, so a "qwen2" folder would only measure the peer's crash. Weights are bf16 like the real checkpoints, drawn N(0, 0.02) tensor by tensor
(norms at 1) and written in 2 GB shards, so building the 1.5B shape needs memory for one shard, not
the model. Folders are cached under bench/out/shapes/NAME and rebuilt only when missing. Another seed
gives a second model of the same shape (two-model merges), cached under NAME-seedN.

    python bench/shapes.py qwen2.5-0.5b     # prints the folder
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "out" / "shapes"

# config.json values of the real models (their hub cards), vocabulary replaced by the sample's
SHAPES = {
    "smollm2-135m": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=576,
                         intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                         tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=896,
                         intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                         tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=1536,
                         intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                         tie_word_embeddings=True),
}
SHARD_BYTES = 2 * 10 ** 9


def build(name: str, folder: Path | None = None, seed: int = 0) -> Path:
    """The HF folder of shape ``name`` with weights drawn from ``seed`` (built once)."""
    folder = folder or CACHE / (name if seed == 0 else f"{name}-seed{seed}")
    if (folder / ".complete").is_file():  # before the heavy imports
        return folder
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(ROOT))
    from slmctl.io.resolve import resolve

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sample = Path(resolve("sample:smollm2-135m"))
    for f in sample.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")) or f.name == "generation_config.json":
            shutil.copy2(f, folder / f.name)
    vocab = json.loads((sample / "config.json").read_text())
    spec = dict(SHAPES[name])
    model_type = spec.pop("model_type")
    cfg = AutoConfig.for_model(model_type, vocab_size=vocab["vocab_size"], bos_token_id=vocab.get("bos_token_id"),
                               eos_token_id=vocab.get("eos_token_id"), torch_dtype="bfloat16", **spec)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(cfg)
    rng = np.random.default_rng(seed)
    skip = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    # written shard by shard so only one shard's tensors are in memory
    names = [(n, tuple(p.shape)) for n, p in meta.state_dict().items() if n not in skip]
    size, index = 0, {}
    planned: list[list[tuple[str, tuple]]] = [[]]
    for n, shape in names:
        nbytes = 2 * int(np.prod(shape))
        if size + nbytes > SHARD_BYTES and planned[-1]:
            planned.append([])
            size = 0
        planned[-1].append((n, shape))
        size += nbytes
    for i, group in enumerate(planned):
        fname = f"model-{i + 1:05d}-of-{len(planned):05d}.safetensors" if len(planned) > 1 else "model.safetensors"
        tensors = {}
        for n, shape in group:
            if n.endswith("norm.weight"):
                a = np.ones(shape, dtype=np.float32)
            else:
                a = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            tensors[n] = torch.from_numpy(a).to(torch.bfloat16)
            index[n] = fname
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        del tensors
    if len(planned) > 1:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}, indent=1))
    cfg.save_pretrained(folder)
    (folder / ".complete").write_text(f"{len(names)} tensors\n")
    return folder


def parameters(folder: Path) -> int:
    """Parameter count of a shape's folder (from the safetensors headers, tied weights once)."""
    sys.path.insert(0, str(ROOT))
    from slmctl.io.artifact import open_artifact

    art = open_artifact(folder)
    n = 0
    for lt in art.tensors.values():
        k = 1
        for d in lt.shape:
            k *= d
        n += k
    return n


if __name__ == "__main__":
    for a in sys.argv[1:] or list(SHAPES):
        print(build(a))
