"""The ``eval`` verb: perplexity of a model on a text domain; KL and top-1 against a reference."""

from __future__ import annotations

from typing import Any, Callable

Log = Callable[[str], None]


def _nolog(msg: str) -> None:
    pass


def eval_verb(model: str, recipe, *, allow_pickle: bool = False, trust_remote_code: bool = False, log: Log = _nolog,
              progress=None) -> dict[str, Any]:
    """``slmctl eval`` from its recipe (slmctl.recipe.EvalRecipe): one report for one domain, a table
    ({"domains": [report, ...]}) for several, with the recipe's gates checked on every domain
    (slmctl.eval.compare: the result carries "gates"; ``enforce`` raises GateFailed). The model and the
    reference are opened once for all domains."""
    from ..calib import split_weight
    from ..errors import UsageError
    from ..eval.compare import check_gates
    from ..io.resolve import load_artifact

    domains = recipe.domains()
    if any(split_weight(d)[1] is not None for d in domains):
        raise UsageError("eval measures each --data as its own domain; weights (SOURCE:WEIGHT) apply to calibration",
                         hint="drop the :WEIGHT suffix")
    art, _ = load_artifact(model, allow_pickle=allow_pickle, log=log)
    ref = load_artifact(recipe.reference, allow_pickle=allow_pickle, log=log)[0] if recipe.reference else None
    reps = [_evaluate_art(art, ref, data=d, field=recipe.field, ctx=recipe.ctx, windows=recipe.windows,
                          backend=recipe.backend, trust_remote_code=trust_remote_code, progress=progress, log=log)
            for d in domains]
    res = reps[0] if len(reps) == 1 else _table(reps)
    check_gates(res, [(rep["data"], rep) for rep in reps] if len(reps) > 1 else res, **recipe.gate_limits())
    return res


def _evaluate_art(art, ref, *, data, log: Log, **kw: Any) -> dict[str, Any]:
    from ..calib import label
    from ..eval.run import evaluate as _evaluate

    rep = _evaluate(art, data=data, reference_art=ref, log=log, **kw)
    rep["data"] = label(data)
    return rep


def _table(reps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model": reps[0]["model"], "format": reps[0]["format"], "backend": reps[0]["backend"],
            "reference": reps[0].get("reference"), "domains": reps}


def evaluate(model: str, *, data: str | list[str] = "sample:shakespeare", field: str = "text",
             reference: str | None = None, ctx: int = 512, windows: int | None = 40, backend: str | None = None,
             allow_pickle: bool = False, trust_remote_code: bool = False, log: Log = _nolog,
             progress=None) -> dict[str, Any]:
    """Perplexity of a model; with a reference, KL divergence, top-1 agreement and the perplexity ratio.

    ``data`` is one text domain: a source, or several (weighted) read as one mix (slmctl.calib);
    ``evaluate_domains`` measures several domains side by side.
    """
    from ..io.resolve import load_artifact

    art, _ = load_artifact(model, allow_pickle=allow_pickle, log=log)
    ref = load_artifact(reference, allow_pickle=allow_pickle, log=log)[0] if reference else None
    return _evaluate_art(art, ref, data=data, field=field, ctx=ctx, windows=windows, backend=backend,
                         trust_remote_code=trust_remote_code, progress=progress, log=log)


def evaluate_domains(model: str, domains: list, **kwargs: Any) -> dict[str, Any]:
    """``evaluate`` on each domain (a source, or a list read as one mix): {"model", "domains": [report, ...]}."""
    return _table([evaluate(model, data=d, **kwargs) for d in domains])
