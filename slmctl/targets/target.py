"""The Target interface: what a hardware target takes, how it loads a model, and how it runs one.

A target turns an artifact into a ``Session``; the profiler (slmctl.profile) does all the timing, so a
target only has to run prompts and decode steps. Measuring memory is the profiler's job too (process
RSS, or the target's own ``peak_memory_bytes`` when it has a better number, e.g. CUDA).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UnsupportedError

Log = Callable[[str], None]

# where an artifact converted for a target goes, by slmctl export format
_EXPORT_NAMES = {"gguf": "model.gguf", "onnx": "onnx", "hf": "hf", "safetensors": "model.safetensors"}


def _nolog(msg: str) -> None:
    pass


class Session:
    """A model loaded on a target. Token ids in (numpy int64, shape [batch, tokens]), next-token ids out.

    ``prefill`` runs a prompt and returns an opaque state that holds the next token of every row (and the
    KV cache when the target has one); ``decode_step`` feeds those tokens and advances the state by one.
    Both must return only when the work is done (synchronise devices), because the caller times them.
    """

    device: str = "cpu"
    kv_cache: bool = True  # False: each decode step re-runs the whole sequence
    max_batch: int | None = None  # None: any batch size
    max_tokens: int | None = None  # longest sequence the model takes (positions), None: unknown
    vocab_size: int = 0
    weight_bytes: int = 0  # bytes of weights read per decode step (embedding rows aside)
    parameters: int = 0

    def prefill(self, ids: np.ndarray) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def decode_step(self, state: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def layer_times(self, ids: np.ndarray) -> dict[str, list[dict]] | None:
        """Per-module time of one prefill and one decode step, when the target can see inside the model."""
        return None

    def peak_memory_bytes(self) -> int | None:
        """Peak device memory since load, when the target tracks it (e.g. CUDA); None: use process RSS."""
        return None

    def close(self) -> None:
        pass


class Target:
    """A hardware target. Subclass it, set ``name``/``formats``, implement ``load``; register it from a plugin.

    - ``formats``: the slmctl artifact formats (hf, safetensors, gguf, onnx) the target loads as they are;
      anything else is converted first with ``slmctl export`` to the first of them that can be built.
    - ``load``: artifact -> Session.
    - ``load_config``: an HF config dict -> Session of a randomly initialised model (depth-width sweeps).
    - ``export``: optionally write the target's own format (e.g. OpenVINO IR).
    """

    name: str = "?"
    formats: tuple[str, ...] = ()
    description: str = ""
    exports: str | None = None  # the target's own format, when export() is implemented
    requires: tuple[tuple[str, str], ...] = ()  # (module it imports, the package that provides it)

    def available(self) -> str | None:
        """None when the target can run here, else why not (a missing package, no device)."""
        import importlib

        for module, package in self.requires:
            try:
                importlib.import_module(module)
            except ImportError:
                return f"{package} is not installed"
        return None

    def devices(self) -> list[str]:
        return ["cpu"]

    def load(self, artifact, *, device: str | None = None, log: Log = _nolog) -> Session:  # pragma: no cover
        raise NotImplementedError

    def load_config(self, config: dict, *, device: str | None = None, seed: int = 0, log: Log = _nolog) -> Session:
        raise UnsupportedError(f"target {self.name!r} cannot build a model from a config",
                               hint="depth-width sweeps run on --target torch (or a plugin that implements load_config)")

    def export(self, artifact, out: Path, *, force: bool = False, log: Log = _nolog) -> Path:
        raise UnsupportedError(f"target {self.name!r} has no format of its own to export")

    # ---------------------------------------------------------------- shared
    def check_available(self) -> None:
        why = self.available()
        if why:
            raise UnsupportedError(f"target {self.name!r} cannot run here: {why}", hint=_install_hint(self.name))

    def prepare(self, artifact, ref: str, *, workdir: Path | None = None, log: Log = _nolog,
                converter: Callable[[str], Callable[..., Any]] | None = None):
        """The artifact in a format this target loads: as it is, or converted with slmctl's exporters.

        ``converter(fmt)`` (passed in by the profile pipeline; targets never import the exporters) raises
        when there is no exporter for ``fmt``, else returns ``convert(ref, out, log=...) -> artifact``."""
        if artifact.format in self.formats:
            return artifact
        errors = []
        for fmt in self.formats if converter is not None else ():
            try:
                convert = converter(fmt)
            except Exception as exc:  # the exporter is not there (yet)
                errors.append(f"{fmt}: {getattr(exc, 'message', exc)}")
                continue
            workdir = workdir or Path(tempfile.mkdtemp(prefix="slmctl-profile-"))
            out = workdir / _EXPORT_NAMES.get(fmt, f"model.{fmt}")
            log(f"converting {ref} ({artifact.format}) to {fmt} for target {self.name}")
            return convert(ref, out, log=log)
        raise UnsupportedError(
            f"target {self.name!r} takes {', '.join(self.formats)}; {artifact.path} is {artifact.format} and cannot be "
            f"converted here" + (f" ({'; '.join(errors)})" if errors else ""),
            hint=f"export it first: slmctl export MODEL --format {self.formats[0]} -o OUT" if self.formats else None)

    def info(self) -> dict:
        why = self.available()
        return {"name": self.name, "formats": list(self.formats), "exports": self.exports,
                "description": self.description or (self.__doc__ or "").strip().split("\n")[0],
                "available": why is None, "unavailable_reason": why,
                "devices": self.devices() if why is None else []}


def _install_hint(name: str) -> str:
    return {"llamacpp": "pip install 'slmctl[gguf]'", "onnxruntime": "pip install onnxruntime",
            "openvino": "pip install ./plugins/slmctl-openvino"}.get(name, "install the package the target needs")
