"""The llamacpp target: GGUF through llama-cpp-python on the CPU, with its KV cache; batch 1."""

from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from ..io.libllama import AMX_ENV, NoExtraBuffers as _NoExtraBuffers, amx_disabled, open_llama  # noqa: F401
from .target import Log, Session, Target, _nolog


def _threads() -> int:
    return int(os.environ.get("SLMCTL_THREADS") or os.cpu_count() or 1)


class LlamaCppSession(Session):
    max_batch = 1  # the high-level API runs one sequence; batched decode needs n_seq_max > 1

    def __init__(self, artifact, n_ctx: int, log: Log = _nolog):
        from ..eval.backends import _quiet_stderr

        th = _threads()
        self.no_extra_buffers = amx_disabled()
        if self.no_extra_buffers:
            log("llamacpp: AMX build on an AMX CPU: loading without extra buffer types (llama.cpp's AMX matmul "
                f"segfaults here, ggml-org/llama.cpp#20824); {AMX_ENV}=1 keeps them")
        with _quiet_stderr():
            self.llm = open_llama(artifact.path, no_extra_buffers=self.no_extra_buffers, n_ctx=n_ctx, n_batch=n_ctx,
                                  n_threads=th, n_threads_batch=th, verbose=False, seed=0)
        self.vocab_size = self.llm.n_vocab()
        self.max_tokens = n_ctx
        self.threads = th
        names = set(artifact.tensors)
        total = sum(t.nbytes for t in artifact.tensors.values())
        emb = artifact.tensors.get("token_embd.weight")
        # without output.weight the embedding doubles as the LM head and is read in full every step
        self.weight_bytes = total - emb.nbytes if emb is not None and "output.weight" in names else total
        self.parameters = sum(t.numel for t in artifact.tensors.values())

    def _next(self) -> int:
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.vocab_size,))
        return int(logits.argmax())

    def prefill(self, ids):
        ids = np.asarray(ids)
        if ids.shape[0] != 1:
            raise InputError("the llamacpp target runs batch 1")
        self.llm.reset()
        self.llm.eval(ids[0].tolist())
        return self._next()

    def decode_step(self, state):
        self.llm.eval([state])
        return self._next()

    def close(self):
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None


class LlamaCppTarget(Target):
    """llama.cpp (llama-cpp-python) on the CPU: GGUF as it is, quantised or not."""

    name = "llamacpp"
    formats = ("gguf",)
    requires = (("llama_cpp", "llama-cpp-python"),)

    def load(self, artifact, *, device=None, log: Log = _nolog) -> Session:
        arch = artifact.metadata.get("general.architecture", "")
        train_ctx = int(artifact.metadata.get(f"{arch}.context_length", 2048) or 2048)
        n_ctx = min(train_ctx, int(os.environ.get("SLMCTL_LLAMACPP_CTX", 2048)))
        return LlamaCppSession(artifact, n_ctx, log=log)
