"""Layer-by-layer calibration: run a model one decoder layer at a time, capturing each linear's inputs.

Peak memory stays near one decoder layer and its activations: the model is built with empty (meta)
parameters and each layer's weights are read from the artifact's safetensors only when that layer runs,
then dropped again; of the token embedding only the rows the calibration windows use are read, and only
while ``embed()`` runs (``_CompactEmbedding``). This is slmctl's one layer engine: GPTQ, AWQ, the GGUF
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

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

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

    def __init__(self, art, *, trust_remote_code: bool = False, device=None, spill_dir=None,
                 activation_budget: int | str | None = None, log: Callable[[str], None] | None = None):
        """``device``: where the layers' forwards run (None: --device / $SLMCTL_DEVICE, else auto; see
        slmctl.device); ``spill_dir``: where activations over ``activation_budget`` bytes (default
        $SLMCTL_ACTIVATION_BUDGET, else half the memory available now) go, in a temporary folder removed
        at the end (default: the system's temporary folder; verbs pass their output's folder)."""
        import torch
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        from .device import PeakMemory, resolve_device
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
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self._peak = PeakMemory(self.device)
        self.log = log or (lambda msg: None)
        self.spill = Spill(spill_dir, _budget(activation_budget), self.log)
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

    def load_module(self, module):
        """Materialise the weights of any submodule (e.g. the final norm) from the artifact; returns it."""
        name = next(n for n, m in self.model.named_modules() if m is module)
        if any(p.is_meta for p in module.parameters()):
            self._load_params(module, name)
        return module

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

        lens = {len(w) for w in windows}
        if len(lens) != 1:
            raise InputError("calibration windows must all have the same length")
        # the token embedding: only the rows the windows use (see _CompactEmbedding)
        compact = _CompactEmbedding.make(self, windows)
        # load what runs before the first layer (embeddings, and whatever else sits outside the layers
        # except the LM head and final norm, which are never run here)
        for n, p in self.model.named_parameters():
            if n.startswith(self.layers_prefix + ".") or not p.is_meta:
                continue
            if compact is not None and p is compact.weight:
                continue
            if n not in self._names:
                continue  # e.g. a tied lm_head
            owner, _, pname = n.rpartition(".")
            mod = self.model.get_submodule(owner)
            if "lm_head" in owner or owner.endswith(".norm") or owner.endswith("ln_f"):
                continue
            self._set(mod, pname, self.art.tensors[self._names[n]].load())
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
            if compact is not None:
                compact.attach()
            with torch.inference_mode(False), torch.no_grad():
                for w in windows:
                    ids = torch.tensor([w], dtype=torch.long)
                    try:
                        self.model(input_ids=ids, use_cache=False)
                    except _Stop:
                        pass
        finally:
            if compact is not None:
                compact.detach()
            for j, m in enumerate(originals):
                self.layers[j] = m
        if len(firsts) != len(windows) or len(records) != len(originals):
            raise UnsupportedError(f"{type(self.model).__name__}: could not trace the decoder layers' inputs")
        self._kwargs = [_clean_kwargs(r) for r in records]
        return firsts

    def device_report(self) -> dict[str, Any]:
        """{"device", "peak_bytes" (accelerators: the most the device held), "spill": {...}} for a verb's report."""
        rep = self._peak.report()
        rep["spill"] = self.spill.report()
        return rep

    def layer_kwargs(self, i: int) -> dict[str, Any]:
        if self._kwargs is None:
            raise RuntimeError("call embed() first")
        return self._kwargs[i]


class _CompactEmbedding:
    """The token embedding of ``embed()`` holding only the rows the windows use, the ids mapped onto them.

    A 151936 x 1536 embedding is 0.9 GB in float32 and calibration windows use a few thousand of its rows: the
    embedding gets those rows (read alone from the file, float32 as a full load would give them) and a pre-hook
    maps each id to its row, so its outputs (and a scaled embedding's, e.g. Gemma's) are bit for bit the full
    table's. Afterwards the module gets its own (meta) parameter back, so a tied LM head stays tied. Only an
    ``nn.Embedding`` whose table is a 2-D tensor of the artifact is made compact; anything else loads whole."""

    def __init__(self, module, weight, ids, rows):
        self.module, self.weight, self.ids, self.rows = module, weight, ids, rows
        self.padding_idx = module.padding_idx
        self.handle = None

    @classmethod
    def make(cls, lm: "LayerwiseModel", windows: list[list[int]]) -> "_CompactEmbedding | None":
        import torch

        if os.environ.get("SLMCTL_COMPACT_EMBEDDING", "1") == "0":
            return None
        try:
            emb = lm.model.get_input_embeddings()
        except (AttributeError, NotImplementedError):
            return None
        if not isinstance(emb, torch.nn.Embedding) or not emb.weight.is_meta:
            return None
        name = next((n for n, p in lm.model.named_parameters() if p is emb.weight), None)
        src = lm._names.get(name) if name is not None else None
        lazy = lm.art.tensors.get(src) if src is not None else None
        if lazy is None or tuple(lazy.shape) != tuple(emb.weight.shape):
            return None
        ids = sorted({int(t) for w in windows for t in w})
        if ids and not 0 <= ids[0] <= ids[-1] < emb.weight.shape[0]:
            raise InputError(f"token id {ids[-1] if ids[-1] >= 0 else ids[0]} lies outside the model's "
                             f"{emb.weight.shape[0]}-token embedding", hint="the tokenizer does not match the model")
        return cls(emb, emb.weight, torch.tensor(ids, dtype=torch.long), lazy.rows(ids).float())

    def attach(self) -> None:
        import torch

        self.module.weight = torch.nn.Parameter(self.rows, requires_grad=False)
        self.module.padding_idx = None  # the forward ignores it; with a compact table it would lie outside
        def remap(mod, args, kwargs):
            if args:
                return (torch.searchsorted(self.ids, args[0]), *args[1:]), kwargs
            key = "input" if "input" in kwargs else "input_ids"
            return args, {**kwargs, key: torch.searchsorted(self.ids, kwargs[key])}

        self.handle = self.module.register_forward_pre_hook(remap, with_kwargs=True)

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        self.module.weight = self.weight
        self.module.padding_idx = self.padding_idx
        self.rows = None


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


@contextmanager
def _placed(layer, hidden, kwargs: dict[str, Any], device, what: str):
    """``layer`` and ``kwargs`` on ``device`` for one pass over ``hidden`` (yields (kwargs, to_dev, to_cpu));
    the layer goes back to the CPU afterwards. On the CPU (or with no device) nothing moves.
    Running out of device memory becomes a DeviceMemoryError naming ``what`` and the bytes needed."""
    if device is None or device.type == "cpu":
        yield kwargs, _same, _same
        return
    from .device import is_oom, nbytes, oom_error, to_device

    try:
        layer.to(device)
        yield to_device(kwargs, device), (lambda t: t.to(device)), (lambda t: t.to("cpu"))
    except Exception as exc:
        if is_oom(exc):
            # weights, the batch in and out, and the MLP's widest intermediate (about 4x the hidden size)
            need = nbytes(layer) + 6 * (nbytes(hidden[0]) if len(hidden) else 0)
            raise oom_error(device, what, need) from None
        raise
    finally:
        layer.to("cpu")


def _same(t):
    return t


def run_layer(layer, hidden: list, kwargs: dict[str, Any], *, device=None, what: str = "a decoder layer",
              window_hook: Callable[[int], None] | None = None) -> list:
    """The layer's outputs for each window's hidden states (run on ``device``, returned on the CPU).
    ``window_hook(j)`` is called before window j runs."""
    import torch

    outs = []
    with torch.no_grad(), _placed(layer, hidden, kwargs, device, what) as (kw, to_dev, to_cpu):
        for j, h in enumerate(hidden):
            if window_hook is not None:
                window_hook(j)
            o = layer(to_dev(h), **kw)
            outs.append(to_cpu((o[0] if isinstance(o, tuple) else o).detach()))
    return outs


def capture_layer_inputs(layer, hidden: list, kwargs: dict[str, Any], names: list[str] | None = None,
                         on_input: Callable[[str, Any], None] | None = None,
                         stop_early: bool = False, *, device=None, what: str = "a decoder layer",
                         window_hook: Callable[[int], None] | None = None) -> dict[str, list]:
    """Inputs of the linears (nn.Linear, GPT-2's Conv1D) of ``layer`` (all, or ``names``) while it runs on ``hidden``.

    With ``on_input`` each input goes to ``on_input(name, x)`` as it appears and nothing is kept.
    With ``stop_early`` each window's forward stops once every wanted linear has seen its input
    (the rest of the layer is not run: true-sequential methods capture an early group cheaply).
    With ``device`` the layer runs there and the inputs are handed over (or kept) on the CPU.
    ``window_hook(j)`` is called before window j runs.
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
            x = to_cpu(args[0].detach())
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
    to_cpu = _same
    try:
        with torch.no_grad(), _placed(layer, hidden, kwargs, device, what) as (kw, to_dev, to_cpu):
            for j, h in enumerate(hidden):
                seen.clear()
                if window_hook is not None:
                    window_hook(j)
                try:
                    layer(to_dev(h), **kw)
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
    device: Any = None  # where the layer's forwards run (slmctl.device); None: the CPU
    # sub-blocks (attention, MLP) whose output is replayed from their last linear's recorded inputs
    replays: dict[str, "_Replay"] = field(default_factory=dict)

    @property
    def what(self) -> str:
        return f"decoder layer {self.idx}"

    def run(self, hidden: list | None = None) -> list:
        """The layer's outputs (on the CPU) for ``hidden`` (default: the step's inputs), run on the step's device."""
        if hidden is None or hidden is self.hidden:  # the step's own windows: recorded sub-blocks are replayed
            with self._replaying() as hook:
                return run_layer(self.layer, self.hidden, self.kwargs, device=self.device, what=self.what,
                                 window_hook=hook)
        return run_layer(self.layer, hidden, self.kwargs, device=self.device, what=self.what)

    def groups(self) -> list[list[str]]:
        """Linear names grouped by shared input, in forward order (see linear_groups)."""
        return linear_groups(self.layer, self.hidden, self.kwargs)

    def recapture(self, names: list[str] | None = None, on_input=None, stop_early: bool = False, *,
                  replayable: bool = False) -> dict[str, list]:
        """Run the layer again as it is now and return the inputs of ``names`` (see capture_layer_inputs).

        Sub-blocks recorded by an earlier ``replayable`` recapture are not run again (see ``_Replay``).
        With ``replayable`` (one linear in ``names``, an ``on_input`` consumer, and only that linear's
        weight changes before the layer runs again), the linear's inputs are kept so that later passes
        over these windows replay its sub-block as ``linear(recorded input)`` instead of running it,
        once the first window showed that the sub-block's output is exactly that."""
        if replayable and on_input is not None and names is not None and len(names) == 1 and self._can_record(names[0]):
            return self._record(names[0], on_input)
        with self._replaying() as hook:
            got = capture_layer_inputs(self.layer, self.hidden, self.kwargs, names, on_input, stop_early,
                                       device=self.device, what=self.what, window_hook=hook)
        if on_input is None:
            self.inputs.update(got)
        return got

    def _can_record(self, name: str) -> bool:
        parent = name.rpartition(".")[0]
        return (bool(parent) and parent not in self.replays and isinstance(self.hidden, list) and len(self.hidden) > 0
                and os.environ.get("SLMCTL_REPLAY", "1") != "0")

    def _record(self, name: str, on_input) -> dict[str, list]:
        """The recapture of one linear that also records its inputs, and its sub-block's output on window 0."""
        pname = name.rpartition(".")[0]
        parent, lin = self.layer.get_submodule(pname), self.layer.get_submodule(name)
        xs: list = []
        outs: list = []

        def keep(n, x):
            xs.append(x)
            on_input(n, x)

        def after(mod, args, out):  # window 0: the sub-block's own output and lin(x) where it ran, then stop
            outs.append((out, lin.forward(xs[0].to(lin.weight.device)) if len(xs) == 1 else None))
            raise _Stop

        handle = parent.register_forward_hook(after)
        try:
            with self._replaying() as hook:
                capture_layer_inputs(self.layer, self.hidden[:1], self.kwargs, [name], keep, False,
                                     device=self.device, what=self.what, window_hook=hook)
        finally:
            handle.remove()
        replay = _Replay.check(parent, lin, xs, outs)
        with self._replaying() as hook:
            # the other windows' inputs are kept only if window 0 showed the sub-block can be replayed
            capture_layer_inputs(self.layer, self.hidden[1:], self.kwargs, [name], keep if replay else on_input, True,
                                 device=self.device, what=self.what,
                                 window_hook=None if hook is None else (lambda j: hook(j + 1)))
        if replay is not None and len(xs) == len(self.hidden):
            self.replays[pname] = replay
        return {}

    @contextmanager
    def _replaying(self):
        """The recorded sub-blocks replayed while the layer runs over the step's windows; yields the window hook."""
        for r in self.replays.values():
            r.patch()
        try:
            yield (lambda j: [r.at(j) for r in self.replays.values()]) if self.replays else None
        finally:
            for r in self.replays.values():
                r.unpatch()

    def release(self) -> None:
        """Forget the recorded sub-blocks (their inputs); the layer runs as it is from now on."""
        self.replays.clear()


class _Replay:
    """A sub-block (attention, MLP) whose output is ``lin(x)``, ``lin`` its last linear and ``x`` that linear's
    input, which depends only on weights that no longer change. True-sequential calibration runs the layer once
    per group of linears; from the group after ``lin``'s on, the sub-block is replayed from the recorded inputs
    with ``lin``'s current (quantised) weight: bit for bit what running it would give, without its attention or
    its other matmuls. Recorded only when window 0 showed the sub-block's output to be exactly ``lin(x)`` (and
    the rest of a tuple output None), so a family that does more after its last linear is run as it is."""

    def __init__(self, parent, lin, xs: list, tuple_len: int | None):
        self.parent, self.lin, self.xs, self.tuple_len = parent, lin, xs, tuple_len
        self.j = 0

    @classmethod
    def check(cls, parent, lin, xs: list, outs: list) -> "_Replay | None":
        import torch

        if len(xs) != 1 or len(outs) != 1 or outs[0][1] is None:
            return None
        out, again = outs[0]
        first, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        if not torch.is_tensor(first) or any(r is not None for r in rest):
            return None
        if again.shape != first.shape or again.dtype != first.dtype or not torch.equal(again, first):
            return None
        return cls(parent, lin, xs, len(out) if isinstance(out, tuple) else None)

    def at(self, j: int) -> None:
        self.j = j

    def patch(self) -> None:
        def forward(*args, **kwargs):
            w = self.lin.weight
            y = self.lin.forward(self.xs[self.j].to(device=w.device))
            return y if self.tuple_len is None else (y, *([None] * (self.tuple_len - 1)))

        self.parent.forward = forward

    def unpatch(self) -> None:
        self.parent.__dict__.pop("forward", None)


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
    import gc

    # the objects alive now (modules, imports, the tokenizer) are set aside from the cyclic collector, so the
    # collection after each layer (release_freed_memory) scans only what the layers made: 0.2 s -> milliseconds
    gc.collect()
    gc.freeze()
    try:
        hidden = lm.spill.hold(hidden, "layer 0 input")
        for i in (progress(idxs, desc="layers") if progress else idxs):
            layer = lm.load_layer(i)
            kw = lm.layer_kwargs(i)
            step = LayerStep(i, layer, hidden, kw, device=lm.device)
            if capture:
                step.inputs = capture_layer_inputs(layer, hidden, kw, device=lm.device, what=step.what)
            yield step
            step.inputs = {}
            hidden = lm.spill.advance(step)
            step.release()
            if not step.keep:
                lm.free_layer(i)
            release_freed_memory()
    finally:
        gc.unfreeze()
        lm.spill.close()
    if lm.device.type != "cpu":
        peak = lm.device_report().get("peak_bytes")
        lm.log(f"{lm.device}: peak {peak / 2**20:.0f} MiB on the device (one decoder layer and its activations)"
               if peak is not None else f"layers ran on {lm.device}")


_TRIM = None  # libc's malloc_trim once looked up (False: not glibc)


def release_freed_memory() -> None:
    """Collect the last layer's garbage (cycles included) and hand the memory back to the OS (glibc's
    malloc_trim): the previous layer's captured inputs and Hessians are freed between layers, but glibc keeps
    freed heap pages mapped, and the next layer's allocations do not always reuse them, so the process's resident
    size creeps up layer by layer. SLMCTL_GC=0 skips the collection, SLMCTL_MALLOC_TRIM=0 the trim (a no-op off
    glibc)."""
    import gc
    import os

    # reference cycles hold tensors of the layer just done: on a 0.5B shape the peak grew by about 0.2 GB a layer
    # until the cyclic collector happened to run (iter_layers freezes what was alive before the first layer, so
    # this scans only what the layers made)
    if os.environ.get("SLMCTL_GC", "1") != "0":
        gc.collect()
    if os.environ.get("SLMCTL_MALLOC_TRIM", "1") == "0":
        return
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


# ---------------------------------------------------------------- activations over the memory budget
def _budget(value: int | str | None) -> int | None:
    """Bytes of activations kept in memory: ``value``, $SLMCTL_ACTIVATION_BUDGET, else half of MemAvailable."""
    import os

    from .io.safetensors import parse_size

    raw = value if value is not None else os.environ.get("SLMCTL_ACTIVATION_BUDGET")
    if raw is not None:
        n = parse_size(raw)
        if n is None or n < 0:
            raise InputError(f"activation budget {raw!r} is not a size", hint="e.g. 2GB or 500MB")
        return n
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return None


class SpilledActivations(Sequence):
    """One layer boundary's activations on disk, one safetensors file per batch, read back one at a time."""

    def __init__(self, folder: Path, tag: str, tensors=()):
        self.folder, self.tag = folder, tag
        self.paths: list[Path] = []
        for t in tensors:
            self.append(t)

    def append(self, t) -> None:
        from safetensors.torch import save_file

        p = self.folder / f"{self.tag}-{len(self.paths)}.safetensors"
        save_file({"h": t.contiguous()}, str(p))
        self.paths.append(p)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        from safetensors.torch import load_file

        return load_file(str(self.paths[k]))["h"]

    def remove(self) -> None:
        for p in self.paths:
            p.unlink(missing_ok=True)


class Spill:
    """Keeps a layer boundary's activations in memory while they fit ``budget`` bytes, else on disk in a
    temporary folder under ``folder`` (removed by ``close``). Values are bit-exact either way. The boundary
    before the current one stays readable too (callers compare a layer's input with its output)."""

    def __init__(self, folder, budget: int | None, log: Callable[[str], None]):
        self.folder, self.budget, self.log = folder, budget, log
        self.dir: Path | None = None
        self.current: SpilledActivations | None = None
        self.previous: SpilledActivations | None = None
        self.count = 0
        self.largest = 0

    def hold(self, hidden, tag: str):
        from .device import nbytes

        if isinstance(hidden, SpilledActivations):
            return hidden
        size = nbytes(list(hidden))  # the list of batches in memory
        if self.budget is None or size <= self.budget:
            self._retire(None)
            return hidden
        import tempfile

        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix=".slmctl-activations-", dir=self.folder))
            self.log(f"calibration activations ({size / 2**20:.0f} MiB per layer boundary) are over the "
                     f"{self.budget / 2**20:.0f} MiB budget: kept on disk in {self.dir}")
        new = SpilledActivations(self.dir, f"h{self.count}", hidden)
        self.count += 1
        self.largest = max(self.largest, size)
        self._retire(new)
        return new

    def _retire(self, new: SpilledActivations | None) -> None:
        """``new`` becomes the current boundary; the one before the previous is deleted."""
        if self.previous is not None:
            self.previous.remove()
        self.previous, self.current = self.current, new

    def advance(self, step: "LayerStep"):
        """The step's layer run on its inputs; outputs written batch by batch when the inputs are on disk."""
        if self.current is None or step.hidden is not self.current:
            return self.hold(step.run(), f"layer {step.idx} output")
        old = self.current
        new = SpilledActivations(self.dir, f"h{self.count}")
        size = 0
        for h in old:
            out = step.run([h])[0]
            size += out.numel() * out.element_size()
            new.append(out)
        self.count += 1
        self.largest = max(self.largest, size)
        self._retire(new)
        return new

    def close(self) -> None:
        import shutil

        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = self.current = self.previous = None

    def report(self) -> dict[str, Any]:
        return {"spilled": self.count > 0, "layer_boundaries": self.count, "bytes": self.largest,
                "budget_bytes": self.budget}
