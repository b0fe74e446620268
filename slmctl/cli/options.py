"""Shared Annotated option and argument aliases, so every verb spells them the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

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


def apply_runtime(device: str | None, threads: int | None) -> None:
    """--device / --threads for this process (slmctl.device.configure): a bad device is a usage error."""
    from ..device import configure

    configure(device, threads)
