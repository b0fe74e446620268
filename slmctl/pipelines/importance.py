"""llama.cpp's importance matrix, computed one decoder layer at a time (slmctl.layerwise, on --device).

For every linear weight, the sum over calibration tokens of each input channel's squared activation
(and the token count), keyed by the weight's GGUF tensor name. llama.cpp's k-quant search weights
each column's error by ``sum / count`` (the mean squared activation).
Reference: https://github.com/ggml-org/llama.cpp/tree/master/tools/imatrix
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..arch import spec_for
from ..errors import InputError


CTX, CHUNKS = 512, 32  # llama-imatrix's default chunk size; 16k tokens


def compute_imatrix(art, text: str | None = None, *, data=None, ctx: int = CTX, chunks: int | None = CHUNKS,
                    progress: Callable | None = None, trust_remote_code: bool = False,
                    field: str = "text") -> tuple[dict[str, tuple[np.ndarray, int]], int]:
    """({GGUF tensor name: (per-input-channel sum of squared activations, tokens)}, windows used).

    The windows are the first ``chunks`` of ``text``, or ``chunks`` drawn (seed 0) from ``data``'s calibration
    region (sources as slmctl.calib reads them: several, weighted; chat through the chat template)."""
    from ..calib import token_windows
    from ..eval.backends import load_tokenizer
    from ..layerwise import LayerwiseModel

    if art.config is None:
        raise InputError(f"{art.path}: no config.json, so the model cannot run for the importance matrix")
    spec_for(art.config)  # a family without a GGUF spec fails here, before the model is read
    tok = load_tokenizer(art, trust_remote_code)
    if text is None:
        from ..calib import draw_windows

        wins, _ = draw_windows(tok, data, n=chunks, ctx=ctx, seed=0, purpose="calib", field=field)
    else:
        wins = token_windows(lambda t: tok(t, add_special_tokens=False)["input_ids"], text, ctx, chunks)
    if not wins:
        raise InputError("the calibration text is shorter than one window", hint="pass more text with --data")
    lm = LayerwiseModel(art, trust_remote_code=trust_remote_code)
    sums = imatrix_sums(lm, wins, head=True, progress=progress)
    return {k: (v.numpy().astype(np.float32), n) for k, (v, n) in sums.items()}, len(wins)


def imatrix_sums(lm, windows: list[list[int]], *, head: bool = True, progress: Callable | None = None) -> dict:
    """{GGUF name: (per-input-column sum of squared activations, float32 on the CPU; tokens)} of every linear
    (nn.Linear, GPT-2's Conv1D) in the decoder layers, and of the output head with ``head`` (its input: the
    last layer's output through the final norm). One pass of the layer engine: the hooks see the forward
    that carries the hidden states to the next layer, on whatever device that runs."""
    import torch

    from ..layerwise import final_norm, iter_layers, linears

    spec = spec_for(lm.art.config)
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}

    def add(gname, x):
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        s = (x * x).sum(0)
        sums[gname] = sums[gname] + s if gname in sums else s
        counts[gname] = counts.get(gname, 0) + x.shape[0]

    handles: list = []
    last: list = []
    try:
        for step in iter_layers(lm, windows, capture=False, progress=progress):
            for h in handles:
                h.remove()
            handles.clear()
            mapping = lm.layer_tensor_names(step.idx)
            for n, mod in linears(step.layer).items():
                gname = _gguf_name(spec, mapping.get(f"{n}.weight"))
                if gname is not None:
                    handles.append(mod.register_forward_pre_hook(lambda m, a, g=gname: add(g, a[0])))
            if head and step.idx == lm.n_layers - 1:
                handles.append(step.layer.register_forward_hook(
                    lambda m, a, o: last.append((o[0] if isinstance(o, tuple) else o).detach().cpu())))
    finally:
        for h in handles:
            h.remove()
    gname = _gguf_name(spec, "lm_head.weight") if head else None
    norm = final_norm(lm.model)
    if gname is not None and norm is not None and last:
        lm.load_module(norm)
        with torch.no_grad():
            for h in last:
                add(gname, norm(h))
    return {k: (v.cpu(), counts[k]) for k, v in sums.items()}


def _gguf_name(spec, hf_name: str | None) -> str | None:
    if hf_name is None:
        return None
    try:
        return spec.gguf_name(hf_name)
    except Exception:  # a tensor the GGUF spec does not map  # noqa: BLE001
        return None
