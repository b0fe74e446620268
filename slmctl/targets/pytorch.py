"""The torch target: transformers models in PyTorch, fp32, on the CPU (CUDA when present)."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..errors import InputError, UnsupportedError
from .target import Log, Session, Target, _nolog


def _threads() -> None:
    import torch

    n = os.environ.get("SLMCTL_THREADS")
    if n:
        torch.set_num_threads(int(n))


class TorchSession(Session):
    def __init__(self, model, device: str):
        import torch

        self.model = model.to(device).eval()
        self.device = device
        self._torch = torch
        import inspect

        # transformers 5.2x renamed past_key_values to cache; older releases take only the old name
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        cfg = model.config
        self.vocab_size = int(cfg.vocab_size)
        self.max_tokens = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        params = list(model.parameters())  # tied weights appear once
        self.parameters = sum(p.numel() for p in params)
        total = sum(p.numel() * p.element_size() for p in params)
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
        tied = head is not None and emb is not None and head.weight is emb.weight
        # a decode step reads every weight once, except the input embedding table (one row per token)
        self.weight_bytes = total if tied or emb is None else total - emb.weight.numel() * emb.weight.element_size()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize()

    def _forward(self, ids, cache=None):
        kw: dict[str, Any] = {"use_cache": True, "logits_to_keep": 1}
        if cache is not None:
            kw[self._cache_kw] = cache
        try:
            return self.model(input_ids=ids, **kw)
        except TypeError:  # a model without logits_to_keep
            kw.pop("logits_to_keep")
            return self.model(input_ids=ids, **kw)

    def prefill(self, ids: np.ndarray):
        torch = self._torch
        with torch.inference_mode():
            x = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)
            out = self._forward(x)
            nxt = out.logits[:, -1].argmax(-1)
            self._sync()
        return [_cache_of(out), nxt]

    def decode_step(self, state):
        torch = self._torch
        with torch.inference_mode():
            out = self._forward(state[1][:, None], state[0])
            state[0] = _cache_of(out)
            state[1] = out.logits[:, -1].argmax(-1)
            self._sync()
        return state

    def layer_times(self, ids: np.ndarray):
        """Forward hooks around the embedding, each decoder layer, the final norm and the LM head."""
        torch = self._torch
        mods = _named_parts(self.model)
        if not mods:
            return None
        times: dict[str, float] = {}
        starts: dict[str, float] = {}
        handles = []
        for name, m in mods:
            def pre(_m, _a, name=name):
                self._sync()
                starts[name] = time.perf_counter()

            def post(_m, _a, _o, name=name):
                self._sync()
                times[name] = times.get(name, 0.0) + time.perf_counter() - starts[name]

            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))

        def run(fn):
            times.clear()
            t0 = time.perf_counter()
            res = fn()
            total = time.perf_counter() - t0
            rows = [{"module": n, "ms": times.get(n, 0.0) * 1e3} for n, _ in mods]
            rows.append({"module": "other", "ms": max(0.0, total * 1e3 - sum(r["ms"] for r in rows))})
            for r in rows:
                r["pct"] = 100.0 * r["ms"] / (total * 1e3) if total else 0.0
            return res, rows

        import warnings

        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state, pre_rows = run(lambda: self.prefill(ids))
                _, dec_rows = run(lambda: self.decode_step(state))
        finally:
            for h in handles:
                h.remove()
        return {"prefill": pre_rows, "decode": dec_rows}

    def peak_memory_bytes(self):
        if self.device.startswith("cuda"):
            return int(self._torch.cuda.max_memory_allocated())
        return None

    def close(self):
        self.model = None


def _cache_of(out):
    c = out.get("cache") if hasattr(out, "get") else None
    return c if c is not None else out.past_key_values


def _named_parts(model) -> list[tuple[str, Any]]:
    import torch

    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    layers = None
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers:
            layers = (name, m)
            break
    if layers is None:
        return []
    parts: list[tuple[str, Any]] = []
    emb = model.get_input_embeddings()
    if emb is not None:
        parts.append(("embed", emb))
    parts += [(f"layer.{i}", m) for i, m in enumerate(layers[1])]
    prefix = layers[0].rsplit(".", 1)[0] if "." in layers[0] else ""
    base = model.get_submodule(prefix) if prefix else model
    for norm_name in ("norm", "ln_f", "final_layernorm"):
        if hasattr(base, norm_name) and isinstance(getattr(base, norm_name), torch.nn.Module):
            parts.append(("final_norm", getattr(base, norm_name)))
            break
    head = model.get_output_embeddings()
    if head is not None:
        parts.append(("lm_head", head))
    return parts


class TorchTarget(Target):
    """PyTorch + transformers, fp32; CUDA when present, else the CPU."""

    name = "torch"
    formats = ("hf", "safetensors")
    requires = (("torch", "torch"), ("transformers", "transformers"))

    def devices(self):
        import torch

        return (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]

    def _device(self, device):
        import torch

        if device is None:
            return "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UnsupportedError("CUDA is not available here", hint="use --device cpu")
        return device

    def load(self, artifact, *, device=None, log: Log = _nolog) -> Session:
        import torch
        from transformers import AutoModelForCausalLM

        from ..hf import quiet_transformers

        quiet_transformers()
        _threads()
        p = artifact.path
        if artifact.config is None:
            raise InputError(f"{p}: no config.json, so transformers cannot build the model",
                             hint="profile the HF folder instead of the bare .safetensors file")
        if artifact.format == "safetensors" and p.name != "model.safetensors":
            raise UnsupportedError(f"{p}: transformers loads model.safetensors from a folder",
                                   hint="export it to an HF folder first: slmctl export FILE --format hf -o DIR")
        folder = p if p.is_dir() else p.parent
        if artifact.config.get("quantization_config") and artifact.format == "hf":
            # slmctl's GPTQ-layout / compressed-tensors outputs: dequantised on load, as `slmctl eval` runs them
            from ..io.quantized_formats import load_dequantized_model

            log(f"{folder.name}: quantised weights dequantised to float32 on load (the grid's values, no int kernels)")
            return TorchSession(load_dequantized_model(artifact), self._device(device))
        from ..hf import load_model

        return TorchSession(load_model(folder, hint=""), self._device(device))

    def load_config(self, config: dict, *, device=None, seed: int = 0, log: Log = _nolog) -> Session:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from ..hf import quiet_transformers

        quiet_transformers()
        _threads()
        cfg = dict(config)
        model_type = cfg.pop("model_type", None)
        if not model_type:
            raise InputError("the config has no model_type", hint="use a transformers config.json")
        for k in ("architectures", "transformers_version", "torch_dtype", "dtype", "quantization_config", "_name_or_path"):
            cfg.pop(k, None)
        hf_cfg = AutoConfig.for_model(model_type, **cfg)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)
        return TorchSession(model, self._device(device))
