"""The export registry: format name -> exporter function.

Each exporter lives in its own module of this package and registers itself on import; a format's
module is imported on first use, so asking for ``hf`` never imports the GGUF or ONNX code.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from ...registry import Registry

EXPORTERS: Registry[Callable[..., Path]] = Registry("export format")
DTYPES = ("auto", "float32", "float16", "bfloat16")
# format -> the module that registers its exporter
MODULES = {"hf": "to_hf", "safetensors": "to_safetensors", "gguf": "to_gguf", "onnx": "to_onnx"}


def get_exporter(fmt: str) -> Callable[..., Path]:
    """The exporter registered for ``fmt`` (its module imported first); unknown names list the valid ones."""
    for name in [fmt] if fmt in MODULES else MODULES:  # an unknown name: import all, so the error lists all
        if name not in EXPORTERS:
            importlib.import_module(f"{__package__}.{MODULES[name]}")
    return EXPORTERS.get(fmt)
