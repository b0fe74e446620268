"""llama.cpp's importance matrix, computed with the HF model on the CPU.

For every linear weight, the sum over calibration tokens of each input channel's squared activation
(and the token count), keyed by the weight's GGUF tensor name. llama.cpp's k-quant search weights
each column's error by ``sum / count`` (the mean squared activation).
Reference: https://github.com/ggml-org/llama.cpp/tree/master/tools/imatrix
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..arch import spec_for
from ..errors import InputError
from ..hf import load_model


CTX, CHUNKS = 512, 32  # llama-imatrix's default chunk size; 16k tokens


def compute_imatrix(art, text: str | None = None, *, data=None, ctx: int = CTX, chunks: int | None = CHUNKS,
                    progress: Callable | None = None, trust_remote_code: bool = False,
                    field: str = "text") -> tuple[dict[str, tuple[np.ndarray, int]], int]:
    """({GGUF tensor name: (per-input-channel sum of squared activations, tokens)}, windows used).

    The windows are the first ``chunks`` of ``text``, or ``chunks`` drawn (seed 0) from ``data``'s calibration
    region (sources as slmctl.calib reads them: several, weighted; chat through the chat template)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    from ..calib import token_windows
    from ..eval.backends import load_tokenizer
    from ..hf import quiet_transformers

    quiet_transformers()
    if art.config is None:
        raise InputError(f"{art.path}: no config.json, so the model cannot run for the importance matrix")
    spec = spec_for(art.config)
    folder = art.path if art.path.is_dir() else art.path.parent
    tok = load_tokenizer(art, trust_remote_code)
    if text is None:
        from ..calib import draw_windows

        wins, _ = draw_windows(tok, data, n=chunks, ctx=ctx, seed=0, purpose="calib", field=field)
    else:
        wins = token_windows(lambda t: tok(t, add_special_tokens=False)["input_ids"], text, ctx, chunks)
    if not wins:
        raise InputError("the calibration text is shorter than one window", hint="pass more text with --data")
    model = load_model(folder, trust_remote_code=trust_remote_code)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for mname, mod in model.named_modules():
        if not isinstance(mod, (torch.nn.Linear, Conv1D)):
            continue
        try:
            gname = spec.gguf_name(f"{mname}.weight")
        except Exception:
            continue
        if gname is None:
            continue

        def hook(_m, inputs, _out, gname=gname):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float32)
            s = (x * x).sum(0)
            sums[gname] = sums[gname] + s if gname in sums else s
            counts[gname] = counts.get(gname, 0) + x.shape[0]

        hooks.append(mod.register_forward_hook(hook))
    try:
        it = progress(wins, desc="imatrix") if progress else wins
        with torch.inference_mode():
            for ids in it:
                model(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {k: (v.numpy().astype(np.float32), counts[k]) for k, v in sums.items()}, len(wins)
