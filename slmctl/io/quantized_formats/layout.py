"""A quantised checkpoint layout: how one linear's codes, scales and zeros are stored, and its config.

Each layout is a small class registered in ``LAYOUTS`` under its ``quant_method``; the read-back
(slmctl.io.quantized_formats) and the GGUF export ask the layout, never test the method's name.
"""

from __future__ import annotations

from typing import Any, Callable

from ...registry import Registry

Get = Callable[[str], Any]  # tensor name -> tensor, or None when absent


class Layout:
    """One on-disk layout. ``suffix``: the tensor that marks a quantised linear; ``extra``: all of its tensors."""

    name: str = ""
    suffix: str = ""
    extra: tuple[str, ...] = ()

    def __init__(self, qc: dict):
        self.qc = qc  # config.json's quantization_config

    def grid(self) -> tuple[int, bool, int]:
        """(bits, symmetric, group size; -1 per row) of the stored grid."""
        raise NotImplementedError

    def unpack(self, get: Get, prefix: str):
        """(q, scale, zero, g_idx) of the linear ``prefix`` (no ``.weight``)."""
        raise NotImplementedError

    def shape(self, tensors: dict, get: Get, prefix: str) -> tuple[int, int]:
        """(out, in) of the linear ``prefix`` without unpacking it."""
        raise NotImplementedError

    def g_idx(self, get: Get, prefix: str):
        """The stored column -> group map, or None when the layout keeps groups in column order."""
        return None


LAYOUTS: Registry[type[Layout]] = Registry("quantised layout")
