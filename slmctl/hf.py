"""Small shims around transformers that every verb shares."""

from __future__ import annotations

import os


def quiet_transformers() -> None:
    """transformers' own progress bars and advice go away unless SLMCTL_DEBUG=1: slmctl reports progress itself."""
    if os.environ.get("SLMCTL_DEBUG") == "1":
        return
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


def load_model(path, *, trust_remote_code: bool = False, what: str = "this model", cls=None, hint: str | None = None,
               **kw):
    """A float32 transformers model, in eval mode, from an HF folder (or the folder of ``path``).

    The one ``from_pretrained`` every verb goes through: transformers' progress output quieted, a model's
    own code run only with ``trust_remote_code`` (off unless the user passes --trust-remote-code), and a
    model transformers cannot build reported as an UnsupportedError naming the folder. ``cls`` defaults to
    AutoModelForCausalLM; ``hint`` replaces the --trust-remote-code advice; ``kw`` goes to from_pretrained.
    """
    from pathlib import Path

    import torch

    from .errors import UnsupportedError

    quiet_transformers()
    if cls is None:
        from transformers import AutoModelForCausalLM as cls
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    try:
        model = cls.from_pretrained(str(folder), dtype=torch.float32, trust_remote_code=trust_remote_code, **kw)
    except (ValueError, KeyError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if hint is None and not trust_remote_code:
            hint = "pass --trust-remote-code if the model needs its own code and you trust it"
        raise UnsupportedError(f"{folder}: transformers cannot build {what} ({first})", hint=hint) from None
    return model.eval()


def unique_state_items(model):
    """(name, tensor) of ``model.state_dict()`` with tied weights once (the first name), as transformers saves."""
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        yield name, t
