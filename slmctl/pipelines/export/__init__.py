"""The ``export`` verb: one module per format (hf, safetensors, gguf, onnx), each registered in ``registry``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ...errors import UsageError
from ...recipe import EXPORT_API_ONLY, EXPORT_FORMAT_OPTIONS, ExportRecipe
from .formats import DTYPES, EXPORTERS, MODULES, get_exporter

Log = Callable[[str], None]


def _nolog(msg: str) -> None:
    pass


def export(src: str, out: str | Path, fmt: str | ExportRecipe = "hf", *, force: bool = False,
           allow_pickle: bool = False, log: Log = _nolog, progress=None, **options: Any) -> Path:
    """Convert a model to another format; returns the output path.

    ``fmt``: a format name with the recipe's fields as keywords (``export(m, o, "gguf", outtype="q8_0")``),
    or a slmctl.recipe.ExportRecipe (keywords then replace its fields). An option the format's exporter
    does not take (``--outtype`` for hf) is a usage error naming it, never dropped."""
    from ... import provenance
    from ...io.resolve import load_artifact

    asked = ExportRecipe.build(None, fmt=fmt, **options) if isinstance(fmt, str) else ExportRecipe.build(fmt, **options)
    if asked.dtype not in DTYPES:
        raise UsageError(f"unknown dtype {asked.dtype!r}", hint="valid: " + ", ".join(DTYPES))
    fn = get_exporter(asked.fmt)
    opts = exporter_options(fn, asked)
    art, path = load_artifact(src, allow_pickle=allow_pickle, log=log)
    with provenance.asking(asked):
        return fn(art, src, Path(out), dtype=asked.dtype, max_shard_size=asked.max_shard_size, force=force, log=log,
                  progress=progress, **opts)


def _keywords(fn: Callable[..., Path]) -> set[str]:
    import inspect

    return {n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}


def _takes(fmt: str) -> set[str]:
    """The keywords ``fmt``'s exporter names; none when its module cannot be imported here (a missing extra)."""
    try:
        return _keywords(get_exporter(fmt))
    except ImportError:
        return set()


def exporter_options(fn: Callable[..., Path], asked: ExportRecipe) -> dict[str, Any]:
    """The format options set in ``asked``, each checked against the exporter's signature: an exporter takes
    exactly the keywords it names (none takes ``**``), so one it does not name is refused here, with the
    formats that do take it."""
    named = _keywords(fn)
    opts = asked.options()
    for name in opts:
        if name not in named:
            flag = ExportRecipe.flag(name)
            takers = [f for f in MODULES if name in _takes(f)]
            takes = [ExportRecipe.flag(n) for n in sorted(named) if n in EXPORT_FORMAT_OPTIONS and n not in EXPORT_API_ONLY]
            raise UsageError(f"{flag} goes with --format {' or '.join(takers)}; --format {asked.fmt} does not take it"
                             if takers else f"{flag} does not apply to --format {asked.fmt}",
                             hint=f"--format {asked.fmt} takes " + ", ".join(["--dtype", *takes]))
    return opts


__all__ = ["DTYPES", "EXPORTERS", "export", "get_exporter"]
