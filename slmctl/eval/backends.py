"""Evaluation backends: each turns a window of token ids into next-token logits.

A backend is chosen by the artifact's format; target plugins can add more through BACKENDS.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError, UnsupportedError
from ..registry import Registry

BACKENDS: Registry[type] = Registry("eval backend")
FORMAT_BACKEND = {"hf": "torch", "safetensors": "torch", "gguf": "llamacpp", "onnx": "onnxruntime"}


class Backend:
    """Interface: ``logits(ids) -> float32 array (len(ids), vocab)``; ``tokenizer`` gives the token ids."""

    name = "?"

    def __init__(self, artifact, ctx: int, trust_remote_code: bool = False):
        self.artifact = artifact
        self.ctx = ctx

    def logits(self, ids: list[int]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


def load_tokenizer(artifact, trust_remote_code: bool = False):
    """The artifact's own tokenizer (transformers): from its folder, or rebuilt from GGUF metadata."""
    from transformers import AutoTokenizer

    from ..hf import quiet_transformers

    quiet_transformers()
    p = artifact.path
    try:
        if artifact.format == "gguf":
            from ..io.gguf_import import gguf_tokenizer

            return gguf_tokenizer(p)
        folder = p if p.is_dir() else p.parent
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{p}: no usable tokenizer ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                         hint="put tokenizer.json beside the model, or evaluate with --tokenizer PATH") from None


@BACKENDS.register("torch")
class TorchBackend(Backend):
    """PyTorch/transformers on the CPU (CUDA when present), fp32."""

    name = "torch"

    def __init__(self, artifact, ctx: int, trust_remote_code: bool = False):
        super().__init__(artifact, ctx)
        import torch

        from ..hf import quiet_transformers

        quiet_transformers()
        p = artifact.path
        folder = p if p.is_dir() else p.parent
        if artifact.config is None:
            raise InputError(f"{p}: no config.json, so transformers cannot build the model",
                             hint="evaluate the HF folder instead of the bare .safetensors file")
        from ..device import current

        self.device = current()  # --device / $SLMCTL_DEVICE; auto: CUDA, then MPS, then the CPU
        kw = {}
        if artifact.format == "safetensors" and p.name != "model.safetensors":
            raise UnsupportedError(f"{p}: transformers loads model.safetensors from a folder",
                                   hint="export it to an HF folder first: slmctl export FILE --format hf -o DIR")
        try:
            if (artifact.config or {}).get("quantization_config") and artifact.format == "hf":
                # slmctl's own quantised outputs (GPTQ layout, compressed-tensors pack-quantized): dequantised on
                # load into a plain fp32 model, so the CPU sees exactly the stored grid without GPU kernels
                from ..io.quantized_formats import load_dequantized_model

                self.model = load_dequantized_model(artifact, trust_remote_code=trust_remote_code)
            elif (artifact.config or {}).get("slmctl_per_layer"):
                # per-layer head/FFN sizes (slmctl prune --method width --adaptive): from_pretrained cannot hold them
                from ..surgery.width import load_per_layer_model

                self.model = load_per_layer_model(artifact, trust_remote_code=trust_remote_code)
            else:
                from ..hf import load_model

                self.model = load_model(folder, trust_remote_code=trust_remote_code, **kw)
        except ValueError as exc:
            raise UnsupportedError(f"{folder}: transformers cannot build this model ({str(exc).splitlines()[0]})",
                                   hint="pass --trust-remote-code if the model needs its own code and you trust it") from None
        self.model.to(self.device).eval()
        self.vocab_size = self.model.config.vocab_size
        self._torch = torch

    def logits(self, ids):
        torch = self._torch
        with torch.inference_mode():
            x = torch.tensor([ids], dtype=torch.long, device=self.device)
            return self.model(input_ids=x, use_cache=False).logits[0].float().cpu().numpy()


@BACKENDS.register("llamacpp")
class LlamaCppBackend(Backend):
    """llama.cpp through llama-cpp-python, on the CPU."""

    name = "llamacpp"

    def __init__(self, artifact, ctx: int, trust_remote_code: bool = False):
        super().__init__(artifact, ctx)
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise UnsupportedError("evaluating GGUF needs llama-cpp-python",
                                   hint="pip install 'slmctl[gguf]' (builds llama.cpp, about 5 minutes)") from None
        from ..io.libllama import open_llama

        threads = int(os.environ.get("SLMCTL_THREADS", os.cpu_count() or 1))
        with _quiet_stderr():
            self.llm = open_llama(artifact.path, n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True,
                                  n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)
        self.vocab_size = self.llm.n_vocab()

    def logits(self, ids):
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def close(self):
        self.llm.close()


class _quiet_stderr:
    """llama.cpp prints its load log on fd 2 even with verbose=False; keep it off unless debugging."""

    def __enter__(self):
        self.saved = None
        if os.environ.get("SLMCTL_DEBUG") == "1":
            return self
        try:
            self.saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            self.saved = None
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            os.dup2(self.saved, 2)
            os.close(self.saved)


# backends that live in their own module (slmctl/eval/backend_<name>.py), imported on first use
BACKEND_MODULES = {"onnxruntime": "slmctl.eval.backend_onnx"}


def open_backend(artifact, ctx: int, name: str | None = None, trust_remote_code: bool = False) -> Backend:
    name = name or FORMAT_BACKEND.get(artifact.format)
    if name is None:
        raise UnsupportedError(f"{artifact.path}: no eval backend for format {artifact.format}")
    if name not in BACKENDS and name in BACKEND_MODULES:
        import importlib

        importlib.import_module(BACKEND_MODULES[name])
    return BACKENDS.get(name)(artifact, ctx, trust_remote_code=trust_remote_code)
