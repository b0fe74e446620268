from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..errors import UsageError
from .options import Run, verb_options


@verb_options("force", "json", "quiet")
def card(
    artifacts: Annotated[Optional[List[str]], typer.Argument(help="Release artifacts: HF folders, .gguf files, ONNX "
                                                                  "folders (the card names them relative to itself). "
                                                                  "With --check: default, those the card names.",
                                                             show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="The card to write (README.md).",
                                                   show_default=False)] = None,
    eval_: Annotated[Optional[List[Path]], typer.Option("--eval", help="A `slmctl eval --json` report (repeat).",
                                                        show_default=False)] = None,
    profile: Annotated[Optional[List[Path]], typer.Option("--profile", help="A `slmctl profile --json` report "
                                                                            "(repeat).", show_default=False)] = None,
    check: Annotated[Optional[Path], typer.Option("--check", help="Check this card against the artifacts and "
                                                                  "reports instead of writing one; exit 3 when a "
                                                                  "hash or a figure no longer matches.",
                                                  show_default=False)] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="Hub id of the base model, when the provenance "
                                                               "does not name one.")] = None,
    license: Annotated[Optional[str], typer.Option("--license", help="License id (default: the base model's).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="The card's title (model_name).")] = None,
    run: Run = Run(),
) -> int:
    """Write a Hugging Face model card (README.md) for release artifacts, or check one (--check).

    The YAML front matter follows the Hub's conventions (base_model, base_model_relation, library_name,
    pipeline_tag, tags, license, datasets) from the provenance chain; the body has each step's recipe, the
    files with size and sha256, the quality table from the eval reports, the latency tables from the profile
    reports, and how to run each file. Every figure comes from a given file or from the artifact itself.
    """
    from .. import api
    from ..errors import GateFailed

    out = run.output()
    if check is not None:
        if output is not None or base or license or name:
            raise UsageError("--check reads a card; -o/--base/--license/--name write one")
        rep = api.check_card(check, artifacts or [], evals=[str(p) for p in eval_ or []] or None,
                               profiles=[str(p) for p in profile or []] or None, log=out.log)
        counts = ", ".join(f"{n} {k}" for k, n in rep["checked"].items() if n)
        out.result(rep, human=f"{check}: {'matches' if rep['ok'] else 'DOES NOT MATCH'} the files ({counts} rows)")
        if not rep["ok"]:
            raise GateFailed(f"{check} does not match the files", failed=rep["problems"], label="mismatch",
                             hint="regenerate it: slmctl card ARTIFACT... --eval ... --profile ... -o README.md --force")
        return 0
    if output is None or not artifacts:
        raise UsageError("card needs ARTIFACT... and -o README.md (or --check README.md)")
    from ..recipe import CardRecipe

    recipe = CardRecipe(evals=eval_ or [], profiles=profile or [], base=base, license=license, name=name)
    path = api.card(artifacts, output, recipe, force=run.force, log=out.log)
    out.result({"output": str(path)}, human=str(path))
    return 0
