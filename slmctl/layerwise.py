"""Layer-by-layer calibration: run a model one decoder layer at a time, capturing each linear's inputs.

Peak memory stays near one decoder layer, its activations, and the embeddings: the model is built
with empty (meta) parameters and each layer's weights are read from the artifact's safetensors only
when that layer runs, then dropped again. This is slmctl's one layer engine: GPTQ, AWQ, the GGUF
importance matrix and GPTQ-on-grids, Wanda, SparseGPT, OWL / block-influence allocation, depth and
width importance all run through it. GPT-2's Conv1D linears (``linears``, ``linear_weight``,
``set_linear_weight`` give every linear an (out, in) view), positional layer arguments (GPT-2's
blocks get the causal mask positionally) and per-layer head/FFN sizes (``slmctl_per_layer``) are
handled here.

API (stable; other methods import it)::

    from slmctl.layerwise import LayerwiseModel, iter_layers, capture_layer_inputs, run_layer

    lm = LayerwiseModel(art)                 # art: slmctl Artifact (hf folder); nothing big loaded yet
    windows = lm.tokenize_windows(text, seq_len=512, samples=32)   # list[list[int]]
    hidden = lm.embed(windows)               # list of (1, seq, hidden) fp32 tensors, one per window

    for step in iter_layers(lm, windows):    # or iter_layers(lm, hidden=hidden)
        step.idx, step.layer                 # int, the decoder layer (weights loaded, fp32, CPU)
        step.inputs                          # {linear name inside the layer: [X (1, seq, in)] per window}
        step.kwargs                          # what the model passes this layer (mask, rotary cos/sin, ...)
        step.hidden                          # the layer's input hidden states, one per window
        step.recapture(names)                # re-run the layer (e.g. after quantising q/k/v) and
                                             # return fresh inputs of ``names`` (true-sequential)
        # modify step.layer in place (quantise, prune ...); when the loop continues, the *modified*
        # layer's outputs feed the next layer, and this layer's weights are freed.
        # set step.keep = True to keep the weights (e.g. to write them out) after the step.

    linears(layer) -> {name: nn.Linear or Conv1D}; linear_weight(m) / set_linear_weight(m, w): (out, in)
    final_norm(model) -> the norm after the last decoder layer (or None)
    linear_groups(layer, hidden, kwargs) -> [[names sharing one input], ...] in forward order
        # e.g. [[q,k,v], [o], [gate,up], [down]]: the sequential groups of true-sequential GPTQ / AWQ
    capture_layer_inputs(layer, hidden, kwargs, names=None, on_input=None) -> {name: [X, ...]}
        # forward hooks on every nn.Linear in ``layer`` (or only ``names``); with ``on_input(name, x)``
        # the inputs are handed over one window at a time and not kept (e.g. accumulate a Hessian);
        # stop_early=True ends each window's forward once all of ``names`` have seen their input.
    run_layer(layer, hidden, kwargs) -> list of outputs

    lm.load_layer(i) / lm.free_layer(i)      # materialise / drop one layer's weights
    lm.layer_tensor_names(i)                 # {param name inside the layer: artifact tensor name}
    lm.linear_names(i)                       # names of the nn.Linear modules in layer i, in forward order

With ``capture=False`` (``iter_layers(..., capture=False)``) step.inputs is empty and only hidden
states flow, for callers that register their own hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .arch.names import BLOCK_CONTAINERS
from .errors import InputError, UnsupportedError

__all__ = ["LayerwiseModel", "LayerStep", "iter_layers", "capture_layer_inputs", "run_layer", "linear_groups",
           "linears", "linear_weight", "set_linear_weight", "final_norm", "is_linear"]


class _Stop(Exception):
    pass


def _decoder_layers(model, n_layers: int):
    """(prefix, ModuleList) of the decoder layers: the first ModuleList with num_hidden_layers entries."""
    import torch.nn as nn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers and name.rsplit(".", 1)[-1] in BLOCK_CONTAINERS:
            return name, mod
    raise UnsupportedError(f"{type(model).__name__}: cannot find its decoder layers",
                           hint="layer-by-layer methods support llama-style models (model.layers)")


class LayerwiseModel:
    """A causal LM whose decoder layers are loaded one at a time from the artifact's tensors."""

    def __init__(self, art, *, trust_remote_code: bool = False):
        import torch
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        from .hf import quiet_transformers
        from .surgery.width import PER_LAYER_KEY, apply_per_layer

        quiet_transformers()
        if art.format not in ("hf", "safetensors") or art.config is None:
            raise UnsupportedError(f"{art.path}: layer-by-layer calibration needs an HF folder (config.json + safetensors)",
                                   hint="convert it first: slmctl export MODEL --format hf -o DIR")
        self.art = art
        folder = art.path if art.path.is_dir() else art.path.parent
        cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        if getattr(cfg, "quantization_config", None) is not None:
            raise UnsupportedError(f"{art.path}: the model is already quantised ({_qmethod(cfg)})",
                                   hint="quantise the original floating-point model")
        self.config = cfg
        # parameters on the meta device, buffers (rotary inv_freq) real: nothing big is allocated
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code, dtype=torch.float32)
            if art.config.get(PER_LAYER_KEY):  # per-layer head / FFN sizes (width pruning): resized, still empty
                apply_per_layer(model, art.config)
        model.eval()
        self.model = model
        self.n_layers = cfg.num_hidden_layers
        self.layers_prefix, self.layers = _decoder_layers(model, self.n_layers)
        self._names = self._map_names()
        self._kwargs: list[dict[str, Any]] | None = None
        self._seq = None

    # ------------------------------------------------------------ tensor names
    def _map_names(self) -> dict[str, str]:
        """model parameter name -> artifact tensor name (same name, or without/with a 'model.' prefix)."""
        have = self.art.tensors
        out = {}
        for name, _ in self.model.named_parameters():
            for cand in (name, name.removeprefix("model."), "model." + name,
                         name.removeprefix("transformer."), "transformer." + name,
                         "backbone." + name.removeprefix("model.")):  # Nemotron-H / Mamba checkpoints
                if cand in have:
                    out[name] = cand
                    break
        return out

    def layer_tensor_names(self, i: int) -> dict[str, str]:
        """{parameter name inside layer i: artifact tensor name}."""
        pre = f"{self.layers_prefix}.{i}."
        return {k[len(pre):]: v for k, v in self._names.items() if k.startswith(pre)}

    def linear_names(self, i: int) -> list[str]:
        """The nn.Linear modules of layer i (the quantisers' domain: GPT-2's Conv1D is left out, see ``linears``)."""
        import torch.nn as nn

        return [n for n, m in self.layers[i].named_modules() if isinstance(m, nn.Linear)]

    def _set(self, module, pname: str, tensor) -> None:
        from accelerate.utils import set_module_tensor_to_device

        set_module_tensor_to_device(module, pname, "cpu", value=tensor.float())

    def _load_params(self, module, prefix: str) -> None:
        pre = prefix + "." if prefix else ""
        for pname, p in list(module.named_parameters()):
            full = pre + pname
            src = self._names.get(full)
            if src is None:
                raise InputError(f"{self.art.path}: tensor for {full} is missing",
                                 hint="the weights do not match config.json; export the model again")
            t = self.art.tensors[src].load()
            if tuple(t.shape) != tuple(p.shape):
                raise InputError(f"{self.art.path}: tensor {src} has shape {tuple(t.shape)}, config.json implies "
                                 f"{tuple(p.shape)}", hint="the weights do not match config.json; export the model again")
            self._set(module, pname, t)

    def load_layer(self, i: int):
        """Materialise layer i's weights (fp32, CPU) and return the layer."""
        layer = self.layers[i]
        if any(p.is_meta for p in layer.parameters()):
            self._load_params(layer, f"{self.layers_prefix}.{i}")
        return layer

    def free_layer(self, i: int) -> None:
        """Drop layer i's weights back to the meta device."""
        from accelerate.utils import set_module_tensor_to_device

        layer = self.layers[i]
        for pname, p in list(layer.named_parameters()):
            if not p.is_meta:
                set_module_tensor_to_device(layer, pname, "meta")

    # ------------------------------------------------------------ data
    def tokenizer(self):
        from .eval.backends import load_tokenizer

        return load_tokenizer(self.art)

    def tokenize_windows(self, text: str, *, seq_len: int = 512, samples: int = 32) -> list[list[int]]:
        """The first ``samples`` non-overlapping windows of ``seq_len`` tokens of ``text``."""
        from .calib import token_windows

        tok = self.tokenizer()
        return token_windows(lambda s: tok(s, add_special_tokens=False)["input_ids"], text, seq_len, samples)

    # ------------------------------------------------------------ running
    def _outside_layers(self):
        """Parameters that are not in a decoder layer, grouped by the module that owns them."""
        pre = self.layers_prefix + "."
        return [n for n, _ in self.model.named_parameters() if not n.startswith(pre)]

    def embed(self, windows: list[list[int]]):
        """Hidden states entering layer 0, one (1, seq, hidden) tensor per window; records per-layer kwargs."""
        import torch

        # load what runs before the first layer (embeddings, and whatever else sits outside the layers
        # except the LM head and final norm, which are never run here)
        for n, p in self.model.named_parameters():
            if n.startswith(self.layers_prefix + ".") or not p.is_meta:
                continue
            if n not in self._names:
                continue  # e.g. a tied lm_head
            owner, _, pname = n.rpartition(".")
            mod = self.model.get_submodule(owner)
            if "lm_head" in owner or owner.endswith(".norm") or owner.endswith("ln_f"):
                continue
            self._set(mod, pname, self.art.tensors[self._names[n]].load())
        lens = {len(w) for w in windows}
        if len(lens) != 1:
            raise InputError("calibration windows must all have the same length")
        records: list[dict[str, Any]] = []
        firsts: list[Any] = []
        originals = list(self.layers)

        class Recorder(torch.nn.Module):
            def __init__(self, idx):
                super().__init__()
                self.idx = idx
                self.attention_type = getattr(originals[idx], "attention_type", None)
                # what the model's forward reads off each layer to pick its mask (Nemotron-H's block_type)
                for k in ("block_type", "layer_type", "is_attention_layer"):
                    if hasattr(originals[idx], k):
                        setattr(self, k, getattr(originals[idx], k))

            def forward(self, hidden_states, *args, **kwargs):
                if self.idx == 0:
                    firsts.append(hidden_states.detach().clone())
                if len(records) <= self.idx:
                    records.append(dict(_named_args(originals[self.idx], hidden_states, args), **kwargs))
                if self.idx == len(originals) - 1:
                    raise _Stop
                return hidden_states

        for j in range(len(originals)):
            self.layers[j] = Recorder(j)
        try:
            with torch.inference_mode(False), torch.no_grad():
                for w in windows:
                    ids = torch.tensor([w], dtype=torch.long)
                    try:
                        self.model(input_ids=ids, use_cache=False)
                    except _Stop:
                        pass
        finally:
            for j, m in enumerate(originals):
                self.layers[j] = m
        if len(firsts) != len(windows) or len(records) != len(originals):
            raise UnsupportedError(f"{type(self.model).__name__}: could not trace the decoder layers' inputs")
        self._kwargs = [_clean_kwargs(r) for r in records]
        return firsts

    def layer_kwargs(self, i: int) -> dict[str, Any]:
        if self._kwargs is None:
            raise RuntimeError("call embed() first")
        return self._kwargs[i]


def _qmethod(cfg) -> str:
    q = cfg.quantization_config
    return (q.get("quant_method") if isinstance(q, dict) else getattr(q, "quant_method", None)) or "quantized"


def _named_args(layer, hidden_states, args: tuple) -> dict[str, Any]:
    """Positional arguments after the hidden states under their parameter names (GPT-2's blocks get the
    cache and the causal mask positionally); names the signature cannot place are kept as ``_argN``."""
    import inspect

    if not args:
        return {}
    try:
        bound = inspect.signature(layer.forward).bind_partial(hidden_states, *args)
    except TypeError:
        return {f"_arg{j}": a for j, a in enumerate(args)}
    named = dict(bound.arguments)
    named.pop(next(iter(named)))  # the hidden states
    for k, p in inspect.signature(layer.forward).parameters.items():
        if p.kind is p.VAR_POSITIONAL and k in named:  # a *args catch-all: cannot be passed by name
            return {f"_arg{j}": a for j, a in enumerate(args)}
    return named


def _clean_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in kw.items() if not k.startswith("_arg")}
    out["use_cache"] = False
    for k in ("past_key_values", "past_key_value", "cache"):
        if k in out:
            out[k] = None
    return out


def is_linear(module) -> bool:
    """An nn.Linear or GPT-2's Conv1D (a linear that stores its weight as (in, out))."""
    import torch.nn as nn

    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def linears(layer) -> dict[str, Any]:
    """Every Linear / Conv1D inside a decoder layer, by its name within the layer."""
    return {n: m for n, m in layer.named_modules() if is_linear(m)}


def linear_weight(module):
    """The (out, in) weight of an nn.Linear, or the transposed view of a Conv1D's (in, out) weight."""
    w = module.weight
    return w.data.t() if type(module).__name__ == "Conv1D" else w.data


def set_linear_weight(module, w) -> None:
    """Write an (out, in) weight back in the module's own layout."""
    module.weight.data.copy_(w.t() if type(module).__name__ == "Conv1D" else w)


NORM_PATHS = ("model.norm", "transformer.ln_f", "model.decoder.final_layer_norm", "gpt_neox.final_layer_norm")


def final_norm(model):
    """The norm after the last decoder layer, or None."""
    for path in NORM_PATHS:
        m = model
        for part in path.split("."):
            m = getattr(m, part, None)
            if m is None:
                break
        if m is not None:
            return m
    return None


def run_layer(layer, hidden: list, kwargs: dict[str, Any]) -> list:
    """The layer's outputs for each window's hidden states."""
    import torch

    outs = []
    with torch.no_grad():
        for h in hidden:
            o = layer(h, **kwargs)
            outs.append((o[0] if isinstance(o, tuple) else o).detach())
    return outs


def capture_layer_inputs(layer, hidden: list, kwargs: dict[str, Any], names: list[str] | None = None,
                         on_input: Callable[[str, Any], None] | None = None,
                         stop_early: bool = False) -> dict[str, list]:
    """Inputs of the linears (nn.Linear, GPT-2's Conv1D) of ``layer`` (all, or ``names``) while it runs on ``hidden``.

    With ``on_input`` each input goes to ``on_input(name, x)`` as it appears and nothing is kept.
    With ``stop_early`` each window's forward stops once every wanted linear has seen its input
    (the rest of the layer is not run: true-sequential methods capture an early group cheaply).
    """
    import torch

    want = set(names) if names is not None else None
    got: dict[str, list] = {}
    handles = []
    seen: set[str] = set()
    for n, m in layer.named_modules():
        if not is_linear(m) or (want is not None and n not in want):
            continue
        got[n] = []

        def hook(mod, args, n=n):
            x = args[0].detach()
            if on_input is not None:
                on_input(n, x)
            else:
                got[n].append(x)
            if stop_early:
                seen.add(n)
                if len(seen) == len(got):
                    raise _Stop

        handles.append(m.register_forward_pre_hook(hook))
    if want is not None and want - set(got):
        for h in handles:
            h.remove()
        raise KeyError(f"no linear module(s) {sorted(want - set(got))} in the layer")
    try:
        with torch.no_grad():
            for h in hidden:
                seen.clear()
                try:
                    layer(h, **kwargs)
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    return got


def linear_groups(layer, hidden: list, kwargs: dict[str, Any]) -> list[list[str]]:
    """The layer's nn.Linear names grouped by the input tensor they share, in the order they run."""
    import torch
    import torch.nn as nn

    order: list[tuple[int, str]] = []
    alive: list[Any] = []  # keep inputs referenced so their ids are not reused during the forward
    handles = []
    def hook(mod, args, n):
        alive.append(args[0])
        order.append((id(args[0]), n))  # returns None: the input is left as it is

    for n, m in layer.named_modules():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_pre_hook(lambda mod, args, n=n: hook(mod, args, n)))
    try:
        with torch.no_grad():
            layer(hidden[0], **kwargs)
    finally:
        for h in handles:
            h.remove()
    groups: dict[int, list[str]] = {}
    for key, n in order:
        if n not in (x for g in groups.values() for x in g):
            groups.setdefault(key, []).append(n)
    return list(groups.values())


@dataclass
class LayerStep:
    idx: int
    layer: Any
    hidden: list
    kwargs: dict[str, Any]
    inputs: dict[str, list] = field(default_factory=dict)
    keep: bool = False

    def groups(self) -> list[list[str]]:
        """Linear names grouped by shared input, in forward order (see linear_groups)."""
        return linear_groups(self.layer, self.hidden, self.kwargs)

    def recapture(self, names: list[str] | None = None, on_input=None, stop_early: bool = False) -> dict[str, list]:
        """Run the layer again as it is now and return the inputs of ``names`` (see capture_layer_inputs)."""
        got = capture_layer_inputs(self.layer, self.hidden, self.kwargs, names, on_input, stop_early)
        if on_input is None:
            self.inputs.update(got)
        return got


def iter_layers(lm: LayerwiseModel, windows: list[list[int]] | None = None, *, hidden: list | None = None,
                capture: bool = True, progress=None) -> Iterator[LayerStep]:
    """Yield one LayerStep per decoder layer; the (possibly modified) layer's outputs feed the next."""
    if hidden is None:
        if windows is None:
            raise ValueError("give windows or hidden")
        hidden = lm.embed(windows)
    elif lm._kwargs is None:
        raise RuntimeError("call lm.embed() first to record the layers' arguments")
    idxs = range(lm.n_layers)
    for i in (progress(idxs, desc="layers") if progress else idxs):
        layer = lm.load_layer(i)
        kw = lm.layer_kwargs(i)
        step = LayerStep(i, layer, hidden, kw)
        if capture:
            step.inputs = capture_layer_inputs(layer, hidden, kw)
        yield step
        step.inputs = {}
        hidden = run_layer(layer, hidden, kw)
        if not step.keep:
            lm.free_layer(i)
