"""Run a transformers decoder one layer at a time on calibration windows.

The inputs of the first decoder layer are captured (the forward stops there), together with the
keyword arguments each layer receives (rotary embeddings, masks; captured on one window, so they
broadcast over any batch). Then each layer runs on the stored activations, hooks collect what a
method needs, the method edits the layer, and its outputs become the next layer's inputs — the
sequential scheme of SparseGPT and Wanda. Activation memory is the calibration set at one layer
boundary; a small local version of slmctl/layerwise.py, kept here so prune does not depend on it.
"""

from __future__ import annotations

from typing import Callable, Iterable

from ...errors import UnsupportedError

LAYER_PATHS = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers")
NORM_PATHS = ("model.norm", "transformer.ln_f", "model.decoder.final_layer_norm", "gpt_neox.final_layer_norm")


def _get(obj, path: str):
    for p in path.split("."):
        obj = getattr(obj, p, None)
        if obj is None:
            return None
    return obj


def decoder_layers(model):
    """(ModuleList of decoder layers, its attribute path)."""
    for path in LAYER_PATHS:
        layers = _get(model, path)
        if layers is not None:
            return layers, path
    raise UnsupportedError(f"{type(model).__name__}: cannot find the decoder layers",
                           hint="supported: Llama-style (model.layers) and GPT-2-style (transformer.h) models")


def final_norm(model):
    for path in NORM_PATHS:
        m = _get(model, path)
        if m is not None:
            return m
    return None


def linear_weight(module):
    """The (out, in) weight view of an nn.Linear or a GPT-2 Conv1D (which stores (in, out))."""
    w = module.weight
    return w.data.t() if type(module).__name__ == "Conv1D" else w.data


def set_linear_weight(module, w) -> None:
    module.weight.data.copy_(w.t() if type(module).__name__ == "Conv1D" else w)


def linears(layer) -> dict[str, object]:
    """Every Linear/Conv1D inside a decoder layer, by its name within the layer."""
    import torch

    return {n: m for n, m in layer.named_modules()
            if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"}


class _Stop(Exception):
    pass


class LayerRunner:
    """Layer-by-layer execution of ``model`` on ``ids`` (N, S), ``chunk`` windows at a time."""

    def __init__(self, model, ids, chunk: int = 8):
        import torch

        self.model = model
        self.layers, self.path = decoder_layers(model)
        self.chunk = chunk
        n = len(self.layers)
        self.args: list[tuple] = [()] * n
        self.kwargs: list[dict] = [{}] * n

        def grab(i):
            def hook(mod, args, kwargs):
                kw = dict(kwargs)
                kw.pop("hidden_states", None)
                self.args[i] = tuple(args[1:])
                self.kwargs[i] = kw
            return hook

        hs = [layer.register_forward_pre_hook(grab(i), with_kwargs=True) for i, layer in enumerate(self.layers)]
        try:
            with torch.no_grad():  # one window through the whole model: every layer's keyword arguments
                model(input_ids=ids[:1], use_cache=False)
        finally:
            for h in hs:
                h.remove()
        self.inps: list = []

        def first(mod, args, kwargs):
            self.inps.append((args[0] if args else kwargs["hidden_states"]).detach())
            raise _Stop

        h = self.layers[0].register_forward_pre_hook(first, with_kwargs=True)
        try:
            with torch.no_grad():
                for c in range(0, ids.shape[0], chunk):
                    try:
                        model(input_ids=ids[c:c + chunk], use_cache=False)
                    except _Stop:
                        pass
        finally:
            h.remove()

    def __len__(self) -> int:
        return len(self.layers)

    def run(self, i: int, inps: Iterable | None = None) -> list:
        """Layer ``i`` on the stored inputs (or ``inps``); returns the outputs, one tensor per chunk."""
        import torch

        layer = self.layers[i]
        outs = []
        with torch.no_grad():
            for x in (self.inps if inps is None else inps):
                y = layer(x, *self.args[i], **self.kwargs[i])
                outs.append((y[0] if isinstance(y, tuple) else y).detach())
        return outs

    def advance(self, outs: list) -> None:
        self.inps = outs


def collect_inputs(modules: dict[str, object], fn: Callable[[str, object], None]):
    """Forward hooks calling ``fn(name, input 2-D (tokens, features))``; returns the handles."""
    def make(name):
        def hook(mod, inp, out):
            x = inp[0]
            fn(name, x.reshape(-1, x.shape[-1]))
        return hook
    return [m.register_forward_hook(make(n)) for n, m in modules.items()]
