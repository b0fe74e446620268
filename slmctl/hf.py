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


def unique_state_items(model):
    """(name, tensor) of ``model.state_dict()`` with tied weights once (the first name), as transformers saves."""
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        yield name, t
