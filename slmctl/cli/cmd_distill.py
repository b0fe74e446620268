from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import FieldOpt, OutOpt, Report, Run, verb_options

_T = "Training"
_L = "Loss"
_D = "Data and cache"
_C = "Checkpoints and report"


@verb_options("max_ppl_increase", "max_kld", "min_top1", "force", "json", "quiet", "allow_pickle",
              "trust_remote_code", "device", "threads", report_panel=_C)
def distill(
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="Teacher model (HF folder, .safetensors, .gguf, "
                                         "sample:smollm2-135m).", show_default=False)],
    student: Annotated[str, typer.Option("--student", "-s", help="Student to train: an HF folder sharing the "
                                         "teacher's tokenizer (e.g. the output of slmctl prune).", show_default=False)],
    output: OutOpt,
    data: Annotated[str, typer.Option("--data", help="Training text: .txt/.md, .jsonl, .parquet or "
                                      "sample:shakespeare[:REGION] (default region: train).", rich_help_panel=_D)] = "sample:shakespeare",
    field: FieldOpt = "text",
    steps: Annotated[int, typer.Option("--steps", help="Optimiser steps.", rich_help_panel=_T)] = 200,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per packed block.", rich_help_panel=_D)] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Blocks per micro-batch per process.", rich_help_panel=_T)] = 4,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Micro-batches per step.", rich_help_panel=_T)] = 1,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).", rich_help_panel=_T)] = 2e-4,
    weight_decay: Annotated[float, typer.Option("--weight-decay", rich_help_panel=_T)] = 0.0,
    warmup: Annotated[Optional[int], typer.Option("--warmup", help="Warmup steps (default: 5% of steps, at most 100).",
                                                  rich_help_panel=_T)] = None,
    schedule: Annotated[str, typer.Option("--schedule", help="cosine or wsd (warmup-stable-decay).", rich_help_panel=_T)] = "cosine",
    decay_frac: Annotated[float, typer.Option("--decay-frac", help="wsd: share of steps spent decaying.", rich_help_panel=_T)] = 0.2,
    clip: Annotated[float, typer.Option("--clip", help="Gradient-norm clip (0: off).", rich_help_panel=_T)] = 1.0,
    freeze_embeddings: Annotated[bool, typer.Option("--freeze-embeddings", help="Keep the token embeddings (and a "
                                                    "tied output head) fixed: faster steps when the vocabulary "
                                                    "dominates a small model.", rich_help_panel=_T)] = False,
    seed: Annotated[int, typer.Option("--seed", rich_help_panel=_T)] = 0,
    loss: Annotated[str, typer.Option("--loss", help="fkl (forward KL), rkl (reverse KL) or jsd (generalised JSD).",
                                      rich_help_panel=_L)] = "fkl",
    beta: Annotated[float, typer.Option("--beta", help="jsd: weight of the teacher in the mixture.", rich_help_panel=_L)] = 0.5,
    temperature: Annotated[float, typer.Option("--temperature", help="Softmax temperature of both models.", rich_help_panel=_L)] = 1.0,
    kd_weight: Annotated[float, typer.Option("--kd-weight", help="Weight of the distillation loss (0: plain fine-tuning).",
                                             rich_help_panel=_L)] = 1.0,
    ce_weight: Annotated[float, typer.Option("--ce-weight", help="Weight of the next-token cross-entropy.", rich_help_panel=_L)] = 0.0,
    hidden_loss: Annotated[Optional[str], typer.Option("--hidden-loss", help="mse or cosine on hidden states (learned "
                                                       "projection when widths differ).", rich_help_panel=_L)] = None,
    hidden_weight: Annotated[float, typer.Option("--hidden-weight", rich_help_panel=_L)] = 1.0,
    select: Annotated[Optional[str], typer.Option("--select", help="Sample selection: llkd (teacher confident, "
                                                  "student uncertain).", rich_help_panel=_L)] = None,
    select_keep: Annotated[float, typer.Option("--select-keep", help="Share of each batch kept by --select.",
                                               rich_help_panel=_L)] = 0.5,
    heldout: Annotated[int, typer.Option("--heldout", help="Blocks held out for evaluation during training.", rich_help_panel=_D)] = 8,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Use at most this many tokens of the data.",
                                                      rich_help_panel=_D)] = None,
    teacher_cache: Annotated[Optional[Path], typer.Option("--teacher-cache", help="Folder for the teacher's top-k "
                                                          "logits, computed once and reused by later runs.", rich_help_panel=_D)] = None,
    topk: Annotated[int, typer.Option("--topk", help="Logits kept per token in the teacher cache.", rich_help_panel=_D)] = 64,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Held-out KL every N steps (0: start and end only).",
                                            rich_help_panel=_C)] = 0,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Checkpoint every N steps (0: never).",
                                                  rich_help_panel=_C)] = 0,
    checkpoint_dir: Annotated[Optional[Path], typer.Option("--checkpoint-dir", help="Where checkpoints go "
                                                           "(default: OUTPUT.ckpt).", rich_help_panel=_C)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint; the result equals an "
                                         "uninterrupted run.", rich_help_panel=_C)] = False,
    report_on: Annotated[bool, typer.Option("--report/--no-report", help="Evaluate teacher, starting and distilled "
                                         "student at the end.", rich_help_panel=_C)] = True,
    eval_data: Annotated[str, typer.Option("--eval-data", help="Text for the final report (default: the sample's "
                                           "eval region).", rich_help_panel=_C)] = "sample:shakespeare",
    eval_windows: Annotated[int, typer.Option("--eval-windows", rich_help_panel=_C)] = 20,
    eval_ctx: Annotated[Optional[int], typer.Option("--eval-ctx", help="Window of the final report (default: --seq-len).",
                                                    rich_help_panel=_C)] = None,
    run: Run = Run(),
    report: Report = Report(),
) -> int:
    """Knowledge distillation: train a student (often a pruned model) to match a teacher.

    Losses: forward/reverse KL or generalised JSD on the logits at a temperature, plus optional
    cross-entropy and hidden-state terms. AdamW with a cosine or WSD schedule, gradient accumulation
    and clipping, seeded. Runs unchanged under torchrun / accelerate launch (data-parallel; gloo on
    CPUs). Prints the output folder (or, with --json, the run report).
    """
    import os

    from .. import api
    from ..eval.compare import enforce
    from ..recipe import DistillRecipe

    out = run.output()
    recipe = DistillRecipe(data=data, field=field, steps=steps, seq_len=seq_len, batch_size=batch_size,
                           grad_accum=grad_accum, lr=lr, weight_decay=weight_decay, warmup=warmup, schedule=schedule,
                           decay_frac=decay_frac, loss=loss, beta=beta, temperature=temperature, kd_weight=kd_weight,
                           ce_weight=ce_weight, hidden_loss=hidden_loss, hidden_weight=hidden_weight, topk=topk,
                           select=select, select_keep=select_keep, clip=clip, freeze_embeddings=freeze_embeddings,
                           seed=seed, heldout=heldout, max_tokens=max_tokens, eval_every=eval_every, report=report_on,
                           eval_data=eval_data, eval_windows=eval_windows, eval_ctx=eval_ctx, **report.fields)
    rep = api.distill(teacher, student, output, recipe, teacher_cache=teacher_cache,
                      checkpoint_every=checkpoint_every, checkpoint_dir=checkpoint_dir, resume=resume, force=run.force,
                      allow_pickle=run.allow_pickle, trust_remote_code=run.trust_remote_code, log=out.log,
                      progress=out.progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # other data-parallel processes print nothing
    out.result(rep, human=str(rep["output"]))
    enforce(rep)
    return 0
