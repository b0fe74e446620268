"""The ``eval`` verb: perplexity of a model on a text domain; KL and top-1 against a reference."""

from __future__ import annotations

from typing import Any, Callable

Log = Callable[[str], None]


def _nolog(msg: str) -> None:
    pass


def evaluate(model: str, *, data: str | list[str] = "sample:shakespeare", field: str = "text",
             reference: str | None = None, ctx: int = 512, windows: int | None = 40, backend: str | None = None,
             allow_pickle: bool = False, trust_remote_code: bool = False, log: Log = _nolog,
             progress=None) -> dict[str, Any]:
    """Perplexity of a model; with a reference, KL divergence, top-1 agreement and the perplexity ratio.

    ``data`` is one text domain: a source, or several (weighted) read as one mix (slmctl.calib);
    ``evaluate_domains`` measures several domains side by side.
    """
    from ..calib import label
    from ..eval.run import evaluate as _evaluate
    from ..io.resolve import load_artifact

    art, _ = load_artifact(model, allow_pickle=allow_pickle, log=log)
    ref = load_artifact(reference, allow_pickle=allow_pickle, log=log)[0] if reference else None
    rep = _evaluate(art, data=data, field=field, ctx=ctx, windows=windows, reference_art=ref, backend=backend,
                    trust_remote_code=trust_remote_code, progress=progress, log=log)
    rep["data"] = label(data)
    return rep


def evaluate_domains(model: str, domains: list, **kwargs: Any) -> dict[str, Any]:
    """``evaluate`` on each domain (a source, or a list read as one mix): {"model", "domains": [report, ...]}."""
    reps = [evaluate(model, data=d, **kwargs) for d in domains]
    return {"model": reps[0]["model"], "format": reps[0]["format"], "backend": reps[0]["backend"],
            "reference": reps[0].get("reference"), "domains": reps}
