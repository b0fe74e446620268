"""Architecture facts live on ArchSpec and in one ggml type table read from gguf-py."""

from __future__ import annotations

from slmctl.arch import ARCHS, AWQ_FOLDS, spec_for
from slmctl.io.gguf_types import block_bytes, block_size, file_types, ggml_types


def test_tensor_roles_come_from_the_spec():
    llama, gemma, gpt2 = ARCHS.get("llama"), ARCHS.get("gemma3"), ARCHS.get("gpt2")
    assert llama.permuted("model.layers.3.self_attn.q_proj.weight") and llama.permuted("model.layers.3.self_attn.k_proj.bias")
    assert not llama.permuted("model.layers.3.self_attn.v_proj.weight")
    assert not ARCHS.get("qwen2").permuted("model.layers.0.self_attn.q_proj.weight")  # qwen2 keeps HF's order
    assert gemma.shifted_norm("model.layers.0.self_attn.q_norm.weight") and not llama.shifted_norm("model.norm.weight")
    assert gpt2.transposed("transformer.h.0.mlp.c_fc.weight") and not gpt2.transposed("transformer.h.0.mlp.c_fc.bias")
    assert ARCHS.get("nemotron_h").tensor_op("backbone.layers.0.mixer.A_log") == "neg_exp_col"
    assert llama.tensor_op("model.layers.0.mlp.up_proj.weight") is None
    assert (gpt2.embedding, gpt2.head, gpt2.hf_top("output_norm.weight")) == (
        "transformer.wte.weight", "lm_head.weight", "transformer.ln_f.weight")
    assert spec_for({"model_type": "gemma3_text"}) is gemma  # Gemma 3's text config names itself gemma3_text
    assert AWQ_FOLDS["mlp.down_proj"] == (("mlp.up_proj",), "rows")
    # norms over the hidden size (width pruning cuts them with the hidden channels); per-head Q/K norms are not
    assert ARCHS.get("qwen3").hidden_norms == ("input_layernorm", "post_attention_layernorm")
    assert ARCHS.get("olmo2").hidden_norms == ("post_attention_layernorm", "post_feedforward_layernorm")
    assert ARCHS.get("nemotron_h").hidden_norms == ("norm",)


def test_ggml_types_are_gguf_pys():
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

    for name, (tid, blk, nbytes) in ggml_types().items():
        qt = GGMLQuantizationType(tid)
        assert qt.name.lower() == name and GGML_QUANT_SIZES[qt] == (blk, nbytes)
    assert (block_size("q4_k"), block_bytes("q4_k"), block_size("f16")) == (256, 144, 1)
    assert file_types()["q4_k_m"] == int(LlamaFileType.MOSTLY_Q4_K_M) and file_types()["f32"] == 0
