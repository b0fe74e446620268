"""profile(): latency and memory of a model on a target, or a depth-width sweep at a parameter budget."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from ..errors import UsageError
from ..recipe import ProfileRecipe

Log = Callable[[str], None]


def _nolog(msg: str) -> None:
    pass


def profile(model: str | None = None, recipe: ProfileRecipe | None = None, *, allow_pickle: bool = False,
            log: Log = _nolog, progress=None, **options: Any) -> dict[str, Any]:
    """Profile ``model`` on ``target``; with ``sweep="depth-width"``, sweep shapes at ``params`` parameters.

    ``recipe`` says what to measure (slmctl.recipe.ProfileRecipe); keyword ``options`` are its fields,
    building one (``profile(m, target="onnxruntime", ctx=[128])``) or replacing the given recipe's."""
    asked = ProfileRecipe.build(recipe, **options)
    target, ctx, batch, repeats, warmup = asked.target, asked.ctx, asked.batch, asked.repeats, asked.warmup
    decode_tokens, decode_ctx, device, layers = asked.decode_tokens, asked.decode_ctx, asked.device, asked.layers
    bandwidth, sweep, params, base = asked.bandwidth, asked.sweep, asked.params, asked.base
    depths, budget_ms = asked.depths, asked.budget_ms
    if sweep is not None:  # the recipe checked its name
        from ..profiling.sweep import run_sweep

        if model is not None and base is not None:
            raise UsageError("give the base model once: as MODEL or with --base")
        return run_sweep(base or model, params=params, target=target, depths=depths, batch=batch, ctx=ctx,
                         repeats=repeats, warmup=warmup, decode_tokens=decode_tokens, device=device,
                         budget_ms=budget_ms, log=log, progress=progress)
    if model is None:
        raise UsageError("profile needs a MODEL (or --sweep depth-width --params N --base MODEL)")
    from ..io.resolve import load_artifact
    from ..profiling.latency import efficiency, memory_bandwidth
    from ..targets import get_target

    tgt = get_target(target)
    tgt.check_available()
    art, path = load_artifact(model, allow_pickle=allow_pickle, log=log)
    import shutil
    import tempfile
    from pathlib import Path

    workdir = Path(tempfile.mkdtemp(prefix="slmctl-profile-"))  # a converted copy, when the target needs one
    try:
        rep = _measure_model(tgt, art, model, path, workdir, ctx=ctx, batch=batch, repeats=repeats, warmup=warmup,
                             decode_tokens=decode_tokens, decode_ctx=decode_ctx, device=device, layers=layers,
                             log=log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if bandwidth:
        log("measuring memory bandwidth (streaming copy)")
        bw = memory_bandwidth()
        rep["bandwidth"] = bw
        rep["efficiency"] = efficiency(rep["weight_bytes"], rep["decode"], bw["gb_per_s"])
    return rep


def converter(fmt: str):
    """What a target's ``prepare`` calls to convert a model: raises when ``fmt`` has no exporter."""
    from ..io.resolve import load_artifact
    from .export import export, get_exporter

    get_exporter(fmt)

    def convert(ref: str, out, *, log: Log = _nolog):
        export(ref, out, fmt, log=log)
        return load_artifact(str(out))[0]

    return convert


def _measure_model(tgt, art, model, path, workdir, *, ctx, batch, repeats, warmup, decode_tokens, decode_ctx, device,
                   layers, log) -> dict[str, Any]:
    from ..profiling.latency import PeakRSS, machine_info, measure, rss_bytes

    src_format = art.format
    art = tgt.prepare(art, model, workdir=workdir, log=log, converter=converter)
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    log(f"loading {art.path} on target {tgt.name}")
    with PeakRSS() as load_peak:
        session = tgt.load(art, device=device, log=log)
    load_s = time.perf_counter() - t0
    rss_loaded = rss_bytes()
    try:
        with PeakRSS() as run_peak:
            res = measure(session, ctx=list(ctx), batch=list(batch), repeats=repeats, warmup=warmup,
                          decode_tokens=decode_tokens, decode_ctx=decode_ctx, layers=layers, log=log)
        dev_peak = session.peak_memory_bytes()
        peak = max(load_peak.peak, run_peak.peak)
        return {
            "model": model, "path": str(path), "format": art.format, "source_format": src_format,
            "target": tgt.name, "device": session.device,
            "kv_cache": session.kv_cache, "parameters": session.parameters, "weight_bytes": session.weight_bytes,
            "settings": {"ctx": list(ctx), "batch": list(batch), "repeats": repeats, "warmup": warmup,
                         "decode_tokens": decode_tokens, "decode_ctx": decode_ctx or min(ctx)},
            "load_s": load_s,
            **res,
            "memory": {"rss_before_load_mb": rss0 / 2**20, "rss_after_load_mb": rss_loaded / 2**20,
                       "load_delta_mb": (rss_loaded - rss0) / 2**20, "peak_rss_mb": peak / 2**20,
                       "peak_over_baseline_mb": (peak - rss0) / 2**20,
                       "device_peak_mb": dev_peak / 2**20 if dev_peak is not None else None},
            "machine": machine_info(),
        }
    finally:
        session.close()
