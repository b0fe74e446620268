"""Where the model runs (``--device``) and how many CPU threads torch uses (``--threads``).

``--device auto|cpu|cuda[:N]|mps`` (or ``SLMCTL_DEVICE``): ``auto`` picks CUDA, then Apple's MPS, then the
CPU. The layer engine (slmctl.layerwise) moves one decoder layer at a time to the device for its
forwards and keeps everything else on the CPU, so the device holds one layer plus one batch of its
activations; the methods' own maths (GPTQ's and SparseGPT's Hessian solves, Wanda's scores) stay on the
CPU. ``--threads N`` (or ``SLMCTL_THREADS``) sets torch's intra-op threads; without either, torch keeps
its default (one per physical core).

The CLI calls ``configure(device, threads)`` once per verb; library users call it too, or set the
environment variables. Nothing here imports torch at module import time.
"""

from __future__ import annotations

import os
import re
from typing import Any

from .errors import SlmctlError, UsageError

DEVICE_ENV = "SLMCTL_DEVICE"
THREADS_ENV = "SLMCTL_THREADS"
_SPEC = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


class DeviceMemoryError(SlmctlError):
    """The device ran out of memory (exit 1): which layer, how much it needed, what to do."""

    exit_code = 1


def available_devices() -> list[str]:
    """The devices torch can use here, e.g. ["cpu", "cuda:0", "cuda:1"] or ["cpu", "mps"]."""
    import torch

    found = ["cpu"]
    try:
        if torch.cuda.is_available():
            found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    except Exception:  # a broken CUDA install reads as no CUDA device  # noqa: BLE001
        pass
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def resolve_device(spec: str | None = None):
    """``spec`` (or $SLMCTL_DEVICE, else ``auto``) as a torch.device that exists here; a usage error otherwise."""
    import torch

    raw = spec if spec is not None else os.environ.get(DEVICE_ENV) or "auto"
    text = str(raw).strip().lower()
    m = _SPEC.match(text)
    found = available_devices()
    if m is None:
        raise UsageError(f"unknown device {raw!r}",
                         hint="valid: auto, cpu, cuda, cuda:N, mps; found here: " + ", ".join(found))
    kind, index = m.group(1), m.group(2)
    if kind == "auto":
        pick = next((d for d in found if d.startswith("cuda")), None) or ("mps" if "mps" in found else "cpu")
        return torch.device(pick)
    if kind == "cpu":
        if index not in (None, "0"):
            raise UsageError(f"device {raw!r}: the CPU has no index", hint="use --device cpu")
        return torch.device("cpu")
    if kind == "mps":
        if "mps" not in found:
            raise UsageError(f"device {raw!r} is not available here", hint="found: " + ", ".join(found))
        return torch.device("mps")
    want = f"cuda:{index or 0}"
    if want not in found:
        cudas = [d for d in found if d.startswith("cuda")]
        raise UsageError(f"device {raw!r} is not available here"
                         + ("" if cudas else " (torch sees no CUDA device)"),
                         hint="found: " + ", ".join(found) + "; use --device auto or cpu")
    return torch.device(want)


def parse_threads(n: int | str | None) -> int | None:
    """``n`` (or $SLMCTL_THREADS) as a positive count, or None when neither is set."""
    raw = n if n is not None else os.environ.get(THREADS_ENV) or None
    if raw is None:
        return None
    try:
        v = int(raw)
    except (TypeError, ValueError):
        v = 0
    if v < 1:
        src = "--threads" if n is not None else THREADS_ENV
        raise UsageError(f"{src} {raw!r} must be a whole number of at least 1",
                         hint=f"this machine has {os.cpu_count() or 1} core(s)")
    return v


def configure(device: str | None = None, threads: int | str | None = None) -> dict[str, Any]:
    """Check ``device`` and apply ``threads`` for this process (and the workers it starts, through the
    environment); returns {"device": ..., "threads": ...} for the report."""
    dev = resolve_device(device)
    if device is not None:
        os.environ[DEVICE_ENV] = str(dev)
    n = parse_threads(threads)
    if n is not None:
        import torch

        os.environ[THREADS_ENV] = str(n)
        torch.set_num_threads(n)
    import torch

    return {"device": str(dev), "threads": torch.get_num_threads()}


def current():
    """The device this process was configured with ($SLMCTL_DEVICE, else auto)."""
    return resolve_device(None)


def to_device(obj, device):
    """``obj`` with every tensor in it (tuples, lists, dicts) moved to ``device``."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(to_device(x, device) for x in obj)
    if isinstance(obj, list):
        return [to_device(x, device) for x in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def nbytes(obj) -> int:
    """Bytes of the tensors in ``obj`` (a tensor, a module's parameters, or lists/tuples of tensors)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, torch.nn.Module):
        return sum(p.numel() * p.element_size() for p in obj.parameters())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(x) for x in obj)
    return 0


def is_oom(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def oom_error(device, what: str, need: int) -> DeviceMemoryError:
    """The exit-1 error for running out of device memory in ``what`` (e.g. "decoder layer 7")."""
    free = ""
    try:
        import torch

        if device.type == "cuda":
            f, total = torch.cuda.mem_get_info(device)
            free = f"; {f / 2**20:.0f} MiB of {total / 2**20:.0f} MiB free"
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass
    return DeviceMemoryError(f"{device}: out of memory running {what}: it needs about {need / 2**20:.0f} MiB "
                             f"(the layer's weights and one batch of its activations){free}",
                             hint="lower --batch-size (or --samples / --seqlen), or run on the CPU with --device cpu")


class PeakMemory:
    """Peak memory the device held while this object was alive (CUDA: torch's allocator statistics)."""

    def __init__(self, device):
        self.device = device
        if device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(device)

    def report(self) -> dict[str, Any]:
        rep: dict[str, Any] = {"device": str(self.device)}
        if self.device.type == "cuda":
            import torch

            rep["peak_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
        elif self.device.type == "mps":
            import torch

            rep["peak_bytes"] = int(torch.mps.driver_allocated_memory())
        return rep
