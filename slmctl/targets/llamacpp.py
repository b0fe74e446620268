"""The llamacpp target: GGUF through llama-cpp-python on the CPU, with its KV cache; batch 1."""

from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from .base import Log, Session, Target, _nolog


def _threads() -> int:
    return int(os.environ.get("SLMCTL_THREADS") or os.cpu_count() or 1)


AMX_ENV = "SLMCTL_LLAMACPP_AMX"


def amx_disabled() -> bool:
    """Whether to keep llama.cpp off its extra weight buffers (AMX, repacking) on this machine.

    llama.cpp's AMX matmul segfaults on the first forward on some AMX CPUs (Sapphire Rapids class, in
    VMs too; ggml-org/llama.cpp#20824, closed unfixed), and it does on this project's machine with the
    sample's Q4_1 GGUF. When the build reports AMX_INT8 we load without extra buffer types, which
    also gives up the repacked kernels llama.cpp has for some quant types (Q4_0, IQ4_NL, Q8_0, ...).
    ``SLMCTL_LLAMACPP_AMX=1`` keeps them (for a fixed llama.cpp).
    """
    if os.environ.get(AMX_ENV) == "1":
        return False
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    info = info.decode(errors="replace") if isinstance(info, bytes) else str(info)
    return "AMX_INT8 = 1" in info


class _NoExtraBuffers:
    """Build a ``Llama`` with ``use_extra_bufts = False`` (its constructor does not take the flag)."""

    def __enter__(self):
        import llama_cpp.llama_cpp as C

        self._c, self._orig = C, C.llama_model_default_params

        def params():
            p = self._orig()
            p.use_extra_bufts = False
            return p

        C.llama_model_default_params = params
        return self

    def __exit__(self, *exc):
        self._c.llama_model_default_params = self._orig


class LlamaCppSession(Session):
    max_batch = 1  # the high-level API runs one sequence; batched decode needs n_seq_max > 1

    def __init__(self, artifact, n_ctx: int, log: Log = _nolog):
        import contextlib

        from llama_cpp import Llama

        from ..eval.backends import _quiet_stderr

        th = _threads()
        self.no_extra_buffers = amx_disabled()
        if self.no_extra_buffers:
            log("llamacpp: AMX build on an AMX CPU: loading without extra buffer types (llama.cpp's AMX matmul "
                f"segfaults here, ggml-org/llama.cpp#20824); {AMX_ENV}=1 keeps them")
        guard = _NoExtraBuffers() if self.no_extra_buffers else contextlib.nullcontext()
        with _quiet_stderr(), guard:
            self.llm = Llama(model_path=str(artifact.path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=th,
                             n_threads_batch=th, verbose=False, seed=0)
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

    def available(self):
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            return "llama-cpp-python is not installed"
        return None

    def load(self, artifact, *, device=None, log: Log = _nolog) -> Session:
        arch = artifact.metadata.get("general.architecture", "")
        train_ctx = int(artifact.metadata.get(f"{arch}.context_length", 2048) or 2048)
        n_ctx = min(train_ctx, int(os.environ.get("SLMCTL_LLAMACPP_CTX", 2048)))
        return LlamaCppSession(artifact, n_ctx, log=log)
