"""Which ggml type each tensor gets for a llama.cpp file type (Q4_K_M, Q3_K_S, Q4_0 ...).

llama.cpp's quantiser does not write every tensor at the file type's base type: ``attn_v`` and
``ffn_down`` of some layers get more bits (the "use more bits" layers), the output / tied
embedding get Q6_K or Q8_0, Q4_0 with an importance matrix keeps the first ffn_down layers at
Q4_1, and a tensor whose rows are not a multiple of a type's block falls back to a smaller-block
type (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0, then F16). This module states
those rules (llama.cpp ``llama_tensor_get_type`` of the version slmctl pins), so a file written
by slmctl at ``--type q4_k_m`` holds the same types, and so the same size, as llama-quantize's.

Reference: https://github.com/ggml-org/llama.cpp/blob/master/src/llama-quant.cpp
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...io.gguf_types import block_size

#: file type -> its base ggml type (the llama_ftype numbers: io.gguf_types.file_types)
FTYPES = {"q4_0": "q4_0", "q4_1": "q4_1", "q8_0": "q8_0", "q5_0": "q5_0", "q5_1": "q5_1", "q2_k": "q2_k",
          "q3_k_s": "q3_k", "q3_k_m": "q3_k", "q3_k_l": "q3_k", "q4_k_s": "q4_k", "q4_k_m": "q4_k", "q5_k_s": "q5_k",
          "q5_k_m": "q5_k", "q6_k": "q6_k"}
FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}
#: tensor-name fragments llama.cpp never quantises (beyond 1-D tensors and norms)
_KEEP = ("_norm.weight", "ffn_gate_inp.weight", "ssm_conv1d", "shortconv.conv.weight", "attn_rel_b.weight",
         "time_mix_first.weight", "altup", "laurel", "per_layer_model_proj")


@dataclass
class ModelInfo:
    """What the rules look at: layer count, heads per KV head, experts, architecture."""

    n_layer: int
    n_gqa: int = 1
    n_expert: int = 0
    arch: str = "llama"


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """llama.cpp quantises 2-D+ tensors named ``*weight`` except norms, position embeddings and a few small ones."""
    if len(shape) < 2 or not name.endswith("weight"):
        return False
    if name in ("position_embd.weight", "token_types.weight") or any(k in name for k in _KEEP):
        return False
    return True


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for frag, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
                      ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                      ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if frag in name:
            return cat
    return "other"


def _more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def fallback(gtype: str, ncols: int) -> str:
    """The type llama.cpp writes when rows of ``ncols`` do not fill ``gtype``'s blocks."""
    if ncols % block_size(gtype) == 0:
        return gtype
    t = FALLBACK.get(gtype, gtype)
    return t if ncols % block_size(t) == 0 else "f16"


def tensor_types(tensors: list[tuple[str, tuple[int, ...]]], ftype: str, info: ModelInfo, *,
                 has_imatrix: bool) -> dict[str, tuple[str, str | None]]:
    """{GGUF tensor name: (ggml type, the type it fell back from or None)} for the quantisable tensors.

    ``tensors`` are (GGUF name, numpy shape) in file order (rows are the last dimension).
    """
    if ftype not in FTYPES:
        raise ValueError(f"unknown file type {ftype}")
    base = FTYPES[ftype]
    cats = [(n, s, _category(n)) for n, s in tensors if quantizable(n, s)]
    tied = not any(c == "output" for _, _, c in cats)
    n_wv = sum(1 for _, _, c in cats if c in ("attn_v", "attn_qkv", "attn_kv_b"))
    i_wv = i_down = 0
    falcon = info.arch == "falcon"
    out: dict[str, tuple[str, str | None]] = {}
    for name, shape, cat in cats:
        t = base
        ncols = shape[-1]
        if cat == "output" or (tied and cat == "token_embd"):
            if falcon or ncols % block_size(t):
                t = "q8_0"
            elif t != "q8_0":
                t = "q6_k"
        elif cat in ("attn_v", "attn_qkv", "attn_kv_b"):
            if ftype == "q2_k":
                t = "q4_k" if info.n_gqa >= 4 else "q3_k"
            elif ftype == "q3_k_m":
                t = "q5_k" if i_wv < 2 else "q4_k"
            elif ftype == "q3_k_l":
                t = "q5_k"
            elif ftype in ("q4_k_m", "q5_k_m") and _more_bits(i_wv, n_wv):
                t = "q6_k"
            elif ftype == "q4_k_s" and i_wv < 4:
                t = "q5_k"
            if info.n_expert == 8:
                t = "q8_0"
            i_wv += 1
        elif cat == "attn_k":
            if info.n_expert == 8:
                t = "q8_0"
        elif cat == "ffn_down":
            i, n = i_down, info.n_layer
            if ftype == "q2_k":
                t = "q3_k"
            elif ftype == "q3_k_m":
                t = "q5_k" if i < n // 16 else ("q4_k" if not falcon or _more_bits(i, n) else "q3_k")
            elif ftype == "q3_k_l":
                t = "q4_k" if falcon else "q5_k"
            elif ftype == "q4_k_m":
                if falcon:
                    t = "q6_k" if i < n // 16 else ("q5_k" if _more_bits(i, n) else "q4_k")
                elif _more_bits(i, n):
                    t = "q6_k"
            elif ftype == "q5_k_m" and _more_bits(i, n):
                t = "q6_k"
            elif ftype == "q4_k_s" and not falcon and i < n // 8:
                t = "q5_k"
            elif ftype in ("q4_0", "q5_0") and has_imatrix and i < n // 8:
                t = "q4_1" if ftype == "q4_0" else "q5_1"
            i_down += 1
        elif cat == "attn_output":
            if not falcon:
                if info.n_expert == 8:
                    if ftype in ("q2_k", "q3_k_s", "q3_k_m", "q4_k_s", "q4_k_m"):
                        t = "q5_k"
                elif ftype == "q2_k":
                    t = "q3_k"
                elif ftype == "q3_k_m":
                    t = "q4_k"
                elif ftype == "q3_k_l":
                    t = "q5_k"
            elif ftype == "q3_k_l":
                t = "q4_k"
        f = fallback(t, ncols)
        out[name] = (f, t if f != t else None)
    return out


def model_info(cfg: dict, arch: str) -> ModelInfo:
    """ModelInfo from an HF config.json."""
    heads = int(cfg.get("num_attention_heads") or cfg.get("n_head") or 1)
    kv = int(cfg.get("num_key_value_heads") or heads)
    n_layer = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or 0)
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    return ModelInfo(n_layer=n_layer, n_gqa=max(1, heads // max(kv, 1)), n_expert=experts, arch=arch)


#: ggml types a tensor can be given by hand (``--tensor-type``) or taken from another file (``--tensor-types-from``)
TENSOR_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")


def parse_tensor_types(specs) -> list[tuple[Any, str]]:
    """``PATTERN=TYPE`` strings (llama-quantize's ``--tensor-type``) -> [(compiled regex, ggml type)].

    The pattern is a regular expression searched in the GGUF tensor name (``attn_v``, ``blk\\.[0-3]\\.ffn_down``);
    the first rule that matches a tensor decides its type.
    """
    import re

    from ...errors import UsageError

    rules = []
    for spec in specs or ():
        pat, sep, t = str(spec).rpartition("=")
        t = t.strip().lower()
        if not sep or not pat:
            raise UsageError(f"--tensor-type {spec!r}: expected PATTERN=TYPE", hint="e.g. --tensor-type attn_v=q6_k")
        if t not in TENSOR_TYPES:
            raise UsageError(f"--tensor-type {spec!r}: unknown tensor type {t!r}", hint="valid: " + ", ".join(TENSOR_TYPES))
        try:
            rules.append((re.compile(pat), t))
        except re.error as exc:
            raise UsageError(f"--tensor-type {spec!r}: the pattern is not a regular expression ({exc})") from None
    return rules


def reference_types(path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], int | None]:
    """{tensor name: (ggml type, numpy shape)} of a GGUF file, and its ``general.file_type``."""
    from ...io import gguf

    f = gguf.read(path)
    ft = f.metadata.get("general.file_type")
    return {n: (t.type_name.lower(), tuple(t.shape)) for n, t in f.tensors.items()}, ft if isinstance(ft, int) else None


def override_types(tensors: list[tuple[str, tuple[int, ...]]], types: dict[str, tuple[str, str | None]], *,
                   rules=(), reference: dict[str, tuple[str, tuple[int, ...]]] | None = None,
                   reference_name: str = "") -> dict[str, tuple[str, str]]:
    """Apply a reference file's types, then ``rules``, to ``types`` (tensor_types' answer) in place.

    Returns {name: (type asked for, type written)} of the tensors whose type changed (the type written differs
    from the one asked for when the rows do not fill its blocks: llama.cpp's fallback). A quantisable tensor that
    the reference lacks, or holds with another shape or in a type slmctl does not write, is an error naming it.
    """
    from ...errors import InputError

    changed: dict[str, tuple[str, str]] = {}
    for name, shape in tensors:
        if name not in types:
            continue
        want = None
        if reference is not None:
            if name not in reference:
                raise InputError(f"{reference_name}: has no tensor {name}",
                                 hint="--tensor-types-from takes a GGUF file of the same model")
            rt, rshape = reference[name]
            if tuple(rshape) != tuple(shape):
                raise InputError(f"{reference_name}: tensor {name} has shape {list(rshape)}, this model's has "
                                 f"{list(shape)}", hint="--tensor-types-from takes a GGUF file of the same model")
            if rt not in TENSOR_TYPES:
                raise InputError(f"{reference_name}: tensor {name} is {rt.upper()}, a type slmctl does not write",
                                 hint="valid: " + ", ".join(TENSOR_TYPES))
            want = rt
        for pat, t in rules:
            if pat.search(name):
                want = t
                break
        if want is None:
            continue
        got, before = fallback(want, shape[-1]), types[name][0]
        types[name] = (got, want if got != want else None)  # a fallback is now one from the type asked for
        if got != before:
            changed[name] = (want, got)
    return changed
