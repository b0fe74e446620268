"""genai_config.json: what onnxruntime-genai needs beside model.onnx to run a decoder export.

The schema is the one onnxruntime-genai's model builder writes (``model`` with ``decoder`` inputs/outputs
named by printf patterns, ``search`` defaults); slmctl's decoder export already uses the names it expects
(input_ids, attention_mask, position_ids, past_key_values.N.key/value -> logits, present.N.key/value), with
the KV cache as (batch, kv heads, sequence, head size) and present = past + new tokens (no shared buffer).
https://onnxruntime.ai/docs/genai/reference/config.html
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GENAI_CONFIG = "genai_config.json"
# model types onnxruntime-genai registers as LLMs with this layout; anything else runs as its generic "decoder"
# (its "gpt2" type expects the older combined past_%d cache, so GPT-2 exports run as "decoder")
GENAI_TYPES = ("gemma", "gemma2", "gemma3_text", "granite", "llama", "mistral", "nemotron", "olmo", "phi",
               "phi3", "qwen2", "qwen3", "smollm3")


def _first(*vals):
    for v in vals:
        if v is not None:
            return v
    return None


def genai_config(config: dict[str, Any], *, generation: dict[str, Any] | None = None, filename: str = "model.onnx",
                 inputs: list[str], outputs: list[str], kv_heads: int, head_size: int) -> dict[str, Any]:
    """The genai_config.json document for an ONNX decoder exported from an HF ``config``.

    ``inputs``/``outputs``: the graph's names (only those present are declared); ``kv_heads``/``head_size``: the
    KV cache's shape as the graph holds it; ``generation``: generation_config.json, whose EOS ids and sampling
    defaults win over config.json's (chat models end a turn with a token config.json does not name)."""
    cfg = config.get("text_config") or config
    gen = generation or {}
    layers = int(_first(cfg.get("num_hidden_layers"), cfg.get("n_layer")))
    heads = int(_first(cfg.get("num_attention_heads"), cfg.get("n_head")))
    hidden = int(_first(cfg.get("hidden_size"), cfg.get("n_embd")))
    ctx = int(_first(cfg.get("max_position_embeddings"), cfg.get("n_positions"), cfg.get("n_ctx"), 2048))
    eos = _first(gen.get("eos_token_id"), cfg.get("eos_token_id"), config.get("eos_token_id"))
    bos = _first(gen.get("bos_token_id"), cfg.get("bos_token_id"), config.get("bos_token_id"))
    pad = _first(gen.get("pad_token_id"), cfg.get("pad_token_id"), config.get("pad_token_id"),
                 eos[0] if isinstance(eos, list) and eos else eos)
    names_in = set(inputs)
    ins: dict[str, str] = {"input_ids": "input_ids"}
    for n in ("attention_mask", "position_ids"):
        if n in names_in:
            ins[n] = n
    if "past_key_values.0.key" in names_in:
        ins["past_key_names"] = "past_key_values.%d.key"
        ins["past_value_names"] = "past_key_values.%d.value"
    outs: dict[str, str] = {"logits": "logits"}
    if "present.0.key" in set(outputs):
        outs["present_key_names"] = "present.%d.key"
        outs["present_value_names"] = "present.%d.value"
    mtype = str(config.get("model_type") or "")
    do_sample = bool(gen.get("do_sample", False))
    return {
        "model": {
            "bos_token_id": bos,
            "context_length": ctx,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename,
                "head_size": int(head_size),
                "hidden_size": hidden,
                "inputs": ins,
                "outputs": outs,
                "num_attention_heads": heads,
                "num_hidden_layers": layers,
                "num_key_value_heads": int(kv_heads),
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": mtype if mtype in GENAI_TYPES else "decoder",
            "vocab_size": int(cfg.get("vocab_size")),
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": do_sample,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": ctx,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "repetition_penalty": float(gen.get("repetition_penalty") or 1.0),
            "temperature": float(gen.get("temperature") or 1.0),
            "top_k": int(gen.get("top_k") or 50),
            "top_p": float(gen.get("top_p") or 1.0),
        },
    }


def write_genai_config(folder: Path, src_dir: Path, config: dict[str, Any], onnx_file: Path) -> Path:
    """Write genai_config.json into ``folder`` for the decoder graph ``onnx_file``: input/output names and the KV
    cache's heads and head size are read from the graph, token ids from config/generation_config."""
    import onnx

    m = onnx.load(str(onnx_file), load_external_data=False)
    kv_heads, head_size = _kv_dims(m)
    gen_file = src_dir / "generation_config.json"
    gen = None
    if gen_file.is_file():
        try:
            gen = json.loads(gen_file.read_text(encoding="utf-8"))
        except ValueError:
            gen = None
    doc = genai_config(config, generation=gen if isinstance(gen, dict) else None, filename=onnx_file.name,
                       inputs=[i.name for i in m.graph.input], outputs=[o.name for o in m.graph.output],
                       kv_heads=kv_heads, head_size=head_size)
    path = folder / GENAI_CONFIG
    path.write_text(json.dumps(doc, indent=4) + "\n")
    return path


def _kv_dims(model) -> tuple[int, int]:
    """(kv heads, head size) from past_key_values.0.key's static dims (batch, heads, past, head size)."""
    for i in model.graph.input:
        if i.name == "past_key_values.0.key":
            dims = i.type.tensor_type.shape.dim
            if len(dims) == 4 and dims[1].HasField("dim_value") and dims[3].HasField("dim_value"):
                return int(dims[1].dim_value), int(dims[3].dim_value)
    from ..errors import UnsupportedError

    raise UnsupportedError("the ONNX graph has no past_key_values.0.key input with static heads and head size",
                           hint="onnxruntime-genai runs decoders exported with a KV cache")
