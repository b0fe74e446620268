"""Shared Annotated option and argument aliases, so every verb spells them the same way."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

ModelArg = Annotated[str, typer.Argument(help="Model: a path (HF folder, .safetensors, .gguf, .onnx), "
                                              "sample:smollm2-135m, a hub id org/name, or - to read a path from stdin.",
                                         show_default=False)]
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="Output path (written atomically).", show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No logs or progress on stderr.")]
AllowPickleOpt = Annotated[bool, typer.Option("--allow-pickle", help="Load pickle checkpoints (.bin/.pt) with "
                                                                      "torch.load(weights_only=True). Off by default.")]
TrustRemoteCodeOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow model code from the model's "
                                                                                "repository to run. Off by default.")]
DataOpt = Annotated[Optional[list[str]], typer.Option(
    "--data", help="Text source; repeat for several, each optionally weighted SOURCE:WEIGHT (e.g. --data code.jsonl:0.5 "
                   "--data docs/:0.5): a text file, a folder of text files, .jsonl (--field, or chat 'messages'), "
                   ".parquet, a hub dataset id hf:org/name[:split] (needs the network), sample:mix (the default "
                   "calibration mix), sample:shakespeare[:REGION] or sample:unseen:{code,readme,licenses}.",
    show_default=False)]
FieldOpt = Annotated[str, typer.Option("--field", help="Text field of JSONL/parquet records.")]
MaxShardOpt = Annotated[Optional[str], typer.Option("--max-shard-size", help="Largest safetensors shard, e.g. 2GB.")]
DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", help="Where the model runs: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps "
                     "[env: SLMCTL_DEVICE]. Layer-by-layer methods hold one decoder layer on the device at a time.",
    show_default="auto")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", help="CPU threads for torch [env: SLMCTL_THREADS] (default: torch's, one per physical core).",
    show_default=False)]


# the quality report's options and gates; the reference is the verb's input model (merge: the base model,
# distill: the teacher, eval: --reference)
_REF = " (the input model; merge: the base; distill: the teacher; eval: --reference)"
EvalDataOpt = Annotated[Optional[list[str]], typer.Option(
    "--eval-data", help="Report domains, repeatable (a sample's eval region). Default: the calibration text's "
                        "held-out region (merge: sample:mix) and a domain it did not see (sample:unseen:readme).",
    show_default=False)]
EvalCtxOpt = Annotated[int, typer.Option("--eval-ctx", help="Tokens per report window.")]
EvalWindowsOpt = Annotated[int, typer.Option("--eval-windows", help="Windows of the quality report (perplexity "
                                                                    "before/after, KL, top-1), 0 for none where "
                                                                    "the report is optional.")]
MaxPplOpt = Annotated[Optional[float], typer.Option("--max-ppl-increase", help="Gate: largest perplexity rise over "
                                                    "the reference in %; exit 3 when crossed (the output is kept)."
                                                    + _REF)]
MaxKldOpt = Annotated[Optional[float], typer.Option("--max-kld", help="Gate: largest mean KL divergence from the "
                                                    "reference." + _REF)]
MinTop1Opt = Annotated[Optional[float], typer.Option("--min-top1", help="Gate: smallest top-1 agreement with the "
                                                     "reference, in %." + _REF)]


@dataclass(frozen=True)
class Run:
    """The shell-contract options of a verb (those it declares; the others keep their defaults)."""

    force: bool = False
    json: bool = False
    quiet: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    device: Optional[str] = None
    threads: Optional[int] = None
    max_shard_size: Optional[str] = None
    # the verb runs a model: --device / --threads (or their environment variables) apply to it
    runtime: bool = False

    def output(self):
        """The verb's output sink; --device / --threads are applied first (a bad device is a usage error)."""
        from .output import Output

        if self.runtime:
            apply_runtime(self.device, self.threads)
        return Output(self.json, self.quiet)


@dataclass(frozen=True)
class Report:
    """The quality report's options and gates a verb declares: ``fields`` goes into its recipe as given."""

    fields: dict[str, Any] = field(default_factory=dict)


# name -> (annotation, default, pack): what ``verb_options`` adds to a command's signature
_SHARED: dict[str, tuple[Any, Any, type]] = {
    "max_shard_size": (MaxShardOpt, None, Run), "force": (ForceOpt, False, Run), "json": (JsonOpt, False, Run),
    "quiet": (QuietOpt, False, Run), "allow_pickle": (AllowPickleOpt, False, Run),
    "trust_remote_code": (TrustRemoteCodeOpt, False, Run), "device": (DeviceOpt, None, Run),
    "threads": (ThreadsOpt, None, Run), "eval_data": (EvalDataOpt, None, Report), "eval_ctx": (EvalCtxOpt, 256, Report),
    "eval_windows": (EvalWindowsOpt, 8, Report), "max_ppl_increase": (MaxPplOpt, None, Report),
    "max_kld": (MaxKldOpt, None, Report), "min_top1": (MinTop1Opt, None, Report),
}
RUN_ALL = ("force", "json", "quiet", "allow_pickle", "trust_remote_code", "device", "threads")
GATES = ("max_ppl_increase", "max_kld", "min_top1")


def _in_panel(annotation: Any, panel: str) -> Any:
    """``annotation`` (Annotated[T, typer.Option(...)]) shown under the --help panel ``panel``."""
    import copy
    import typing

    base, info = typing.get_args(annotation)[:2]
    info = copy.copy(info)
    info.rich_help_panel = panel
    return Annotated[base, info]


def verb_options(*names: str, report_panel: Optional[str] = None, **defaults: Any) -> Callable:
    """Add the shared options ``names`` (and ``defaults``' names, with those defaults) to a command.

    The command declares ``run: Run`` (and ``report: Report`` when it names report options) in place of
    them: Typer sees one option per name, spelt and documented the same way in every verb, and the
    command gets them packed. The options come last in --help, in the order named; ``report_panel`` puts
    the report's options under that --help panel.
    """
    order = list(names) + [n for n in defaults if n not in names]
    unknown = [n for n in order if n not in _SHARED]
    if unknown:
        raise ValueError(f"no shared option {unknown}")

    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)  # a __signature__ is taken as it is: no strings in it
        packs = {p.name for p in sig.parameters.values() if p.name in ("run", "report")}
        kept = [p for p in sig.parameters.values() if p.name not in packs]
        ann = {n: _in_panel(_SHARED[n][0], report_panel) if report_panel and _SHARED[n][2] is Report else _SHARED[n][0]
               for n in order}
        added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=ann[n],
                                   default=defaults.get(n, _SHARED[n][1])) for n in order]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            given = {n: kwargs.pop(n) for n in order if n in kwargs}
            run = Run(**{n: v for n, v in given.items() if _SHARED[n][2] is Run}, runtime="device" in order)
            report = Report({n: given.get(n, defaults.get(n, _SHARED[n][1])) for n in order if _SHARED[n][2] is Report})
            return fn(*args, **kwargs, **({"run": run} if "run" in packs else {}),
                      **({"report": report} if "report" in packs else {}))

        command.__signature__ = sig.replace(parameters=kept + added)  # type: ignore[attr-defined]
        command.__annotations__ = {**{k: v for k, v in fn.__annotations__.items() if k not in packs},
                                   **ann}
        return command

    return deco


def apply_runtime(device: str | None, threads: int | None) -> None:
    """--device / --threads for this process (slmctl.device.configure): a bad device is a usage error."""
    from ..device import configure

    configure(device, threads)
