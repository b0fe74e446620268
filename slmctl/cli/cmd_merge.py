from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .options import OutOpt, Report, Run, verb_options


@verb_options("eval_data", "eval_ctx", "eval_windows", "max_ppl_increase", "max_kld", "min_top1", "max_shard_size",
              "force", "allow_pickle", "json", "quiet", eval_ctx=256, eval_windows=0)
def merge(
    output: OutOpt,
    models: Annotated[Optional[List[str]], typer.Argument(
        help="Models to merge (HF folders, .safetensors with config.json, .gguf, sample:..., hub ids). "
             "With --lora: the one base model.", show_default=False)] = None,
    method: Annotated[Optional[str], typer.Option("--method", "-m", help="linear, slerp, task_arithmetic, ties, "
                                                  "dare_ties, dare_linear, passthrough, model_stock, breadcrumbs, "
                                                  "breadcrumbs_ties, della, della_linear, nearswap.")] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="Base model (task vectors are taken against it; "
                                                "slerp's t=0 end; default for slerp: the first model).")] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="Weights, one or one per model (besides "
                                                   "the base), comma-separated, e.g. 1,0.5.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random drops (dare_*, della); the same seed "
                                      "gives the same output.")] = 0,
    t: Annotated[Optional[str], typer.Option("--t", help="Interpolation factor for slerp/nearswap; a list "
                                             "(0,0.5,1) is a gradient over the layers.")] = None,
    density: Annotated[Optional[str], typer.Option("--density", help="Fraction of each task vector kept (ties, "
                                                   "dare_*, breadcrumbs, della); one or one per model.")] = None,
    lambda_: Annotated[Optional[float], typer.Option("--lambda", help="Scale of the merged task vector.")] = None,
    normalize: Annotated[Optional[bool], typer.Option("--normalize/--no-normalize", help="Divide by the sum of "
                                                      "weights (method default if unset).", show_default=False)] = None,
    rescale: Annotated[Optional[bool], typer.Option("--rescale/--no-rescale", help="DARE/DELLA: rescale kept "
                                                    "deltas to the dropped delta's L1 norm.", show_default=False)] = None,
    gamma: Annotated[Optional[float], typer.Option("--gamma", help="breadcrumbs: fraction of largest deltas dropped.")] = None,
    epsilon: Annotated[Optional[float], typer.Option("--epsilon", help="della: spread of keep probabilities.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="A mergekit YAML config (models, "
                                                   "method and parameters come from it).")] = None,
    lora: Annotated[Optional[str], typer.Option("--lora", help="Fold this PEFT LoRA adapter folder into the "
                                                "one model given.")] = None,
    tokenizer_source: Annotated[Optional[str], typer.Option("--tokenizer-source", help="'base' or a model: its "
                                                            "tokenizer is kept and embedding rows are aligned to it "
                                                            "by token.")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Compute dtype: float32, float16, bfloat16 "
                                                 "(default: the inputs').")] = None,
    out_dtype: Annotated[Optional[str], typer.Option("--out-dtype", help="Output dtype (default: --dtype).")] = None,
    run: Run = Run(),
    report: Report = Report(),
) -> int:
    """Merge models (linear, SLERP, task arithmetic, TIES, DARE, passthrough, ...) or fold a LoRA adapter.

    Examples: slmctl merge A B --method slerp --t 0.5 -o OUT;
    slmctl merge A B C --method ties --base BASE --density 0.5 --weights 1,1 -o OUT;
    slmctl merge --config merge.yml -o OUT; slmctl merge --lora ADAPTER BASE -o OUT.
    Streams one tensor at a time; prints the output folder.
    """
    from .. import api
    from ..eval.compare import enforce, render_report
    from ..recipe import MergeRecipe

    out = run.output()
    recipe = MergeRecipe(method=method, base=base, weights=weights, t=t, density=density, lambda_=lambda_,
                         normalize=normalize, rescale=rescale, gamma=gamma, epsilon=epsilon,
                         tokenizer_source=tokenizer_source, dtype=dtype, out_dtype=out_dtype, seed=seed,
                         max_shard_size=run.max_shard_size, **report.fields)
    res = api.merge_verb(models or [], output, recipe, config=config, lora=lora, force=run.force,
                         allow_pickle=run.allow_pickle, log=out.log,
                         progress=lambda it, desc="": out.progress(it, desc=desc, unit="tensor"))
    if res.get("report"):
        out.log(render_report(res["report"]))
        res["report"].pop("eval", None)
    out.result(res, human=res["output"])
    enforce(res)
    return 0
