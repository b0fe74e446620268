"""The ggml tensor types and llama.cpp file types, by the names slmctl uses, read from gguf-py's constants.

gguf-py's ``constants.py`` is llama.cpp's own table (type ids, block sizes, ``LlamaFileType``), so slmctl keeps
no copy of its numbers. The tables are built on first use: importing gguf-py costs a noticeable fraction of a
second, and most commands never touch GGUF.
"""

from __future__ import annotations

from functools import cache

# the tensor types slmctl reads, writes or quantises to itself (lower-case, as on the command line)
TENSOR_TYPES = ("f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")


@cache
def ggml_types() -> dict[str, tuple[int, int, int]]:
    """{name: (ggml type id, weights per block, bytes per block)} for TENSOR_TYPES."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    out = {}
    for name in TENSOR_TYPES:
        qt = GGMLQuantizationType[name.upper()]
        block, nbytes = GGML_QUANT_SIZES[qt]
        out[name] = (int(qt), int(block), int(nbytes))
    return out


def block_size(name: str) -> int:
    """Weights per block of a tensor type (1 for the float types)."""
    return ggml_types()[name][1]


def block_bytes(name: str) -> int:
    """Bytes per block of a tensor type."""
    return ggml_types()[name][2]


@cache
def file_types() -> dict[str, int]:
    """{name: llama_ftype} (GGUF's ``general.file_type``): f32, f16, bf16, q4_0 ... q8_0, q2_k, q3_k_s ... q6_k."""
    from gguf import LlamaFileType

    out = {"f32": int(LlamaFileType.ALL_F32)}
    for m in LlamaFileType:
        if m.name.startswith("MOSTLY_"):
            out[m.name.removeprefix("MOSTLY_").lower()] = int(m)
    return out
