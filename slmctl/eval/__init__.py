"""Perplexity, KL divergence and top-1 agreement, with backends for torch, llama.cpp and onnxruntime."""

from .run import evaluate  # noqa: F401
