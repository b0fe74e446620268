"""Latency on a target: prefill at several context lengths, decode at several batch sizes, TTFT, memory.

Every figure is p50/p95 over ``repeats`` timed runs after ``warmup`` untimed ones. The prompt is random
token ids (latency does not depend on the text), seeded so runs compare.

- prefill / TTFT: one forward over a batch-1 prompt of ``ctx`` tokens up to the first token's id on the
  host (so TTFT at ``ctx`` equals the prefill time; tokenisation is not counted);
- decode: mean time of one step over ``decode_tokens`` steps after a ``decode_ctx``-token prompt; a
  step makes one token for every row, so tokens/s = batch / step time.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from typing import Any, Callable

import numpy as np

from ..errors import UsageError

Log = Callable[[str], None]


def stats_ms(samples_s: list[float]) -> dict[str, float]:
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    p50 = float(np.percentile(a, 50))
    p95 = float(np.percentile(a, 95))
    return {"p50_ms": p50, "p95_ms": p95, "mean_ms": float(a.mean()), "min_ms": float(a.min()),
            "max_ms": float(a.max()), "p95_over_p50": p95 / p50 if p50 > 0 else float("nan"), "n": int(a.size)}


# ---------------------------------------------------------------- memory
def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; elsewhere the lifetime peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        import sys

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if sys.platform == "darwin" else r * 1024


class PeakRSS:
    """Sample RSS in a thread every ``interval`` seconds; ``peak`` is the largest value seen."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())


# ---------------------------------------------------------------- memory bandwidth
def memory_bandwidth(mib: int = 128, repeats: int = 5) -> dict[str, float]:
    """This machine's memory bandwidth from a streaming copy (STREAM "copy": bytes read + bytes written).

    Uses torch's multi-threaded copy when torch is there, else numpy. The best of ``repeats`` runs is
    reported, as STREAM does, since the question is what the hardware can do.
    """
    n = mib * 1024 * 1024 // 4
    try:
        import torch

        src = torch.ones(n, dtype=torch.float32)
        dst = torch.empty_like(src)
        copy, kernel = (lambda: dst.copy_(src)), "torch copy_"
        # the machine's limit, whatever SLMCTL_THREADS gave the target: every core copies
        saved, threads = torch.get_num_threads(), os.cpu_count() or 1
        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover
        torch = None
        src = np.ones(n, dtype=np.float32)
        dst = np.empty_like(src)
        copy, kernel, threads, saved = (lambda: np.copyto(dst, src)), "numpy copyto", 1, 1
    try:
        copy()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            copy()
            best = min(best, time.perf_counter() - t0)
    finally:
        if torch is not None:
            torch.set_num_threads(saved)
    moved = 2 * n * 4
    return {"gb_per_s": moved / best / 1e9, "bytes_per_copy": n * 4, "kernel": kernel, "threads": threads,
            "array_mib": mib}


# ---------------------------------------------------------------- the measurement
def _prompt(rng: np.random.Generator, vocab: int, batch: int, n: int) -> np.ndarray:
    hi = max(2, min(vocab, 32000))
    return rng.integers(1, hi, size=(batch, n), dtype=np.int64)


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(session, *, ctx: list[int], batch: list[int], repeats: int = 10, warmup: int = 2,
            decode_tokens: int = 16, decode_ctx: int | None = None, layers: bool = True, seed: int = 0,
            log: Log = lambda m: None) -> dict[str, Any]:
    """Prefill, TTFT and decode figures for a loaded ``Session``; see the module docstring."""
    if repeats < 1 or warmup < 0 or decode_tokens < 1:
        raise UsageError("--repeats and --decode-tokens must be at least 1, --warmup at least 0")
    if not ctx or not batch or min(ctx) < 1 or min(batch) < 1:
        raise UsageError("--ctx and --batch take positive integers, e.g. --ctx 128,512 --batch 1,4")
    decode_ctx = decode_ctx or min(ctx)
    longest = max(max(ctx), decode_ctx + decode_tokens + 1)
    if session.max_tokens and longest > session.max_tokens:
        raise UsageError(f"the model takes at most {session.max_tokens} positions; this profile needs {longest}",
                         hint="use a shorter --ctx (or fewer --decode-tokens)")
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    out: dict[str, Any] = {"prefill": [], "decode": []}

    for n in ctx:
        ids = _prompt(rng, session.vocab_size, 1, n)
        for _ in range(warmup):
            session.prefill(ids)
        samples = [_time(lambda: session.prefill(ids)) for _ in range(repeats)]
        s = stats_ms(samples)
        s.update(ctx=n, batch=1, tokens_per_s=n * 1000.0 / s["p50_ms"])
        out["prefill"].append(s)
        log(f"prefill ctx {n}: p50 {s['p50_ms']:.2f} ms, p95 {s['p95_ms']:.2f} ms")
    out["ttft"] = [{"ctx": r["ctx"], "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"]} for r in out["prefill"]]

    for b in batch:
        if session.max_batch is not None and b > session.max_batch:
            notes.append(f"decode at batch {b} skipped: the target runs at most batch {session.max_batch}")
            continue
        ids = _prompt(rng, session.vocab_size, b, decode_ctx)

        def one_run() -> float:
            state = session.prefill(ids)
            t0 = time.perf_counter()
            for _ in range(decode_tokens):
                state = session.decode_step(state)
            return (time.perf_counter() - t0) / decode_tokens

        for _ in range(warmup):
            one_run()
        s = stats_ms([one_run() for _ in range(repeats)])
        s.update(batch=b, ctx=decode_ctx, steps=decode_tokens, tokens_per_s=b * 1000.0 / s["p50_ms"])
        out["decode"].append(s)
        log(f"decode batch {b}: p50 {s['p50_ms']:.2f} ms/step, {s['tokens_per_s']:.1f} tokens/s")
    if not session.kv_cache:
        notes.append("no KV cache on this target: each decode step re-runs the whole sequence")
    if layers:
        lt = session.layer_times(_prompt(rng, session.vocab_size, 1, min(ctx)))
        if lt:
            out["layers"] = {"ctx": min(ctx), **lt}
    out["notes"] = notes
    return out


def efficiency(weight_bytes: int, decode: list[dict], bandwidth_gbs: float) -> dict[str, Any] | None:
    """Batch-1 decode against the memory roofline: weight bytes read per token x tokens/s / bandwidth."""
    b1 = next((d for d in decode if d["batch"] == 1), None)
    if b1 is None or not weight_bytes or not bandwidth_gbs:
        return None
    achieved = weight_bytes * b1["tokens_per_s"] / 1e9
    return {"weight_bytes_per_token": int(weight_bytes), "tokens_per_s": b1["tokens_per_s"],
            "achieved_gb_per_s": achieved, "bandwidth_gb_per_s": bandwidth_gbs, "fraction": achieved / bandwidth_gbs,
            "roofline_tokens_per_s": bandwidth_gbs * 1e9 / weight_bytes}


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                            "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    try:
        info["load_avg_1m"] = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        pass
    return info
