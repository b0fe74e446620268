"""distill(): train a student to match a teacher's next-token distributions (and optionally its hidden states).

The same function runs in one process or in several data-parallel ones: under ``torchrun`` or
``accelerate launch`` (which set RANK/WORLD_SIZE) it joins a process group (gloo on the CPU, nccl on
GPUs), each process takes its share of every global batch, and gradients are averaged before each
optimiser step. Only rank 0 writes checkpoints, the output and the report.

Determinism: the data order is a pure function of (seed, epoch), the data position is the step
count, and a checkpoint holds the weights, optimiser, scheduler and RNG states, so a run resumed
from a checkpoint ends with the same weights, bit for bit, as one that never stopped.
"""

from __future__ import annotations

import os
import time
import dataclasses
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any, Callable

from .. import provenance
from ..errors import InputError, UnsupportedError, UsageError
from ..eval.compare import check_gates
from ..recipe import DistillRecipe

Log = Callable[[str], None]


def _nolog(msg: str) -> None:
    pass


def _check_names(r: DistillRecipe) -> None:
    """The recipe's loss, schedule and selector names against their registries (close-match hints)."""
    from ..methods.distill import HIDDEN_LOSSES, LOSSES, SCHEDULES, SELECTORS

    LOSSES.get(r.loss)
    SCHEDULES.get(r.schedule)
    if r.hidden_loss:
        HIDDEN_LOSSES.get(r.hidden_loss)
    if r.select:
        SELECTORS.get(r.select)


# ---------------------------------------------------------------- process group
class Dist:
    """The data-parallel world: one process unless torchrun / accelerate launch set WORLD_SIZE > 1."""

    def __init__(self):
        import torch

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.started = False
        from ..device import current

        dev = current()  # --device / $SLMCTL_DEVICE (auto: CUDA, then MPS, then the CPU)
        if dev.type == "cuda":  # one GPU per process: torchrun / accelerate give each its local rank
            self.device = torch.device("cuda", self.local_rank if self.world > 1 else dev.index or 0)
            torch.cuda.set_device(self.device)
        else:
            self.device = dev
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
                self.started = True
            self.dist = dist

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier()

    def mean_grads(self, params) -> None:
        """Average gradients over processes: one flat all-reduce."""
        if self.world == 1:
            return
        import torch

        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.dist.all_reduce(flat)
        flat /= self.world
        off = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[off:off + n].view_as(g))
            off += n

    def mean(self, x: float) -> float:
        if self.world == 1:
            return x
        import torch

        t = torch.tensor([x], dtype=torch.float64)
        self.dist.all_reduce(t)
        return float(t.item() / self.world)

    def close(self) -> None:
        if self.started:
            self.dist.destroy_process_group()


# ---------------------------------------------------------------- helpers
def _load_model(art, trust_remote_code: bool, *, trainable: bool, role: str):
    from ..hf import load_model

    p = art.path
    kw: dict[str, Any] = {}
    if art.format == "gguf":
        if trainable:
            raise UnsupportedError(f"{p}: the {role} is a GGUF file, which cannot be trained",
                                   hint=f"import it first: slmctl export {p} --format hf -o {p.stem}-hf")
        folder, kw["gguf_file"] = p.parent, p.name
    elif art.format in ("hf", "safetensors"):
        folder = p if p.is_dir() else p.parent
        if art.config is None:
            raise InputError(f"{p}: the {role} has no config.json, so transformers cannot build it",
                             hint="give the HF folder of the model")
    else:
        raise UnsupportedError(f"{p}: the {role} is {art.format}; distillation needs an HF folder",
                               hint="distil the HF model and export it afterwards")
    model = load_model(folder, trust_remote_code=trust_remote_code, what=f"the {role}", **kw)
    return model, Path(folder)


def _order(n: int, seed: int, epoch: int):
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class Schedule:
    """Which training blocks each (step, micro-batch, rank) reads: a pure function of the seed."""

    def __init__(self, n: int, seed: int, batch: int, accum: int, world: int):
        self.n, self.seed, self.batch, self.accum, self.world = n, seed, batch, accum, world
        self._orders: dict[int, Any] = {}

    @property
    def rows_per_step(self) -> int:
        return self.batch * self.accum * self.world

    def block(self, pos: int) -> int:
        epoch, i = divmod(pos, self.n)
        if epoch not in self._orders:
            self._orders = {epoch: _order(self.n, self.seed, epoch)}
        return int(self._orders[epoch][i])

    def micro(self, step: int, a: int, rank: int) -> list[int]:
        start = step * self.rows_per_step + (a * self.world + rank) * self.batch
        return [self.block(p) for p in range(start, start + self.batch)]

    def used(self, steps: int) -> set[int]:
        return {self.block(p) for p in range(steps * self.rows_per_step)}


@dataclass
class _Ctx:
    teacher: Any
    student: Any
    vocab: int
    recipe: DistillRecipe
    device: Any
    projector: Any = None
    pairs: list = dc_field(default_factory=list)


def _heldout_metrics(ctx: _Ctx, blocks, batch: int) -> dict[str, float]:
    """Mean KL(teacher || student) per token, student CE and perplexity on the held-out blocks (T = 1)."""
    import math

    import torch
    import torch.nn.functional as F

    if blocks.shape[0] == 0:
        return {}
    was = ctx.student.training
    ctx.student.eval()
    kl_sum = ce_sum = 0.0
    n_kl = n_ce = 0
    with torch.no_grad():
        for s in range(0, blocks.shape[0], batch):
            x = blocks[s:s + batch].to(ctx.device)
            sl = ctx.student(input_ids=x, use_cache=False).logits[..., : ctx.vocab].float()
            tl = ctx.teacher(input_ids=x, use_cache=False).logits[..., : ctx.vocab].float()
            s_lp, t_lp = F.log_softmax(sl, -1), F.log_softmax(tl, -1)
            kl_sum += float((t_lp.exp() * (t_lp - s_lp)).sum())
            n_kl += x.shape[0] * x.shape[1]
            ce_sum += float(F.cross_entropy(sl[:, :-1].reshape(-1, ctx.vocab), x[:, 1:].reshape(-1), reduction="sum"))
            n_ce += x.shape[0] * (x.shape[1] - 1)
    ctx.student.train(was)
    ce = ce_sum / n_ce
    return {"kl": kl_sum / n_kl, "ce": ce, "ppl": math.exp(min(ce, 50.0))}


def _micro_loss(ctx: _Ctx, x, teacher_src, cache, block_ids) -> tuple[Any, dict[str, float], int]:
    """Loss of one micro-batch (mean over its tokens), its parts, and the number of rows kept by selection."""
    import torch

    from ..methods.distill import SELECTORS
    from ..methods.distill.losses import cross_entropy, hidden_loss, kd_loss

    r = ctx.recipe
    need_teacher = r.kd_weight > 0 or r.hidden_loss or r.select
    want_hidden = bool(r.hidden_loss)
    out = ctx.student(input_ids=x, use_cache=False, output_hidden_states=want_hidden)
    sl = out.logits[..., : ctx.vocab]
    teacher = t_hidden = None
    if need_teacher:
        if cache is not None:
            v, i = cache.get(block_ids)
            teacher = (v.to(ctx.device), i.to(ctx.device))
        else:
            with torch.no_grad():
                tout = teacher_src(input_ids=x, use_cache=False, output_hidden_states=want_hidden)
            teacher = tout.logits[..., : ctx.vocab]
            t_hidden = tout.hidden_states if want_hidden else None
    mask = None
    kept = x.shape[0]
    if r.select:
        rows = SELECTORS.get(r.select)(sl, teacher, keep=r.select_keep, temperature=r.temperature)
        kept = int(rows.sum())
        mask = rows[:, None].expand(x.shape[0], x.shape[1])
    parts: dict[str, float] = {}
    total = sl.new_zeros((), dtype=torch.float32)
    if r.kd_weight > 0:
        kd = kd_loss(r.loss, sl, teacher, temperature=r.temperature, beta=r.beta, mask=mask)
        total = total + r.kd_weight * kd
        parts["kd"] = float(kd.detach())
    if r.ce_weight > 0:
        ce = cross_entropy(sl[:, :-1], x[:, 1:], None if mask is None else mask[:, :-1])
        total = total + r.ce_weight * ce
        parts["ce"] = float(ce.detach())
    if want_hidden:
        sh = out.hidden_states
        if mask is not None:
            sel = mask[:, 0]
            sh = [h[sel] for h in sh]
            t_hidden = [h[sel] for h in t_hidden]
        hl = hidden_loss(r.hidden_loss, sh, t_hidden, ctx.pairs, ctx.projector)
        total = total + r.hidden_weight * hl
        parts["hidden"] = float(hl.detach())
    return total, parts, kept


def _rng_state() -> dict[str, Any]:
    import random

    import torch

    st: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    import random

    import torch

    torch.set_rng_state(st["torch"])
    random.setstate((3, tuple(st["python"]), None))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ---------------------------------------------------------------- the pipeline
def distill(teacher: str, student: str, out: str | Path, recipe: DistillRecipe | None = None, *,
            teacher_cache: str | Path | None = None, checkpoint_every: int = 0, checkpoint_dir: str | Path | None = None,
            resume: bool = False, keep_checkpoint: bool = True, force: bool = False, allow_pickle: bool = False,
            trust_remote_code: bool = False, log: Log = _nolog, progress=None,
            on_step: Callable[[int, dict], None] | None = None, **options: Any) -> dict[str, Any]:
    """Distil ``teacher`` into ``student`` on ``data``; write the trained student (an HF folder) to ``out``.

    Returns the run's report: output path, training history, held-out KL/perplexity before and after,
    and (with ``report``) an eval of the teacher, the starting student and the result on ``eval_data``.
    ``recipe`` says what to do (slmctl.recipe.DistillRecipe); keyword ``options`` are its fields, building one
    (``distill(t, s, out, steps=50, lr=1e-4)``) or replacing the given recipe's. The other keywords say how
    this run goes (caches, checkpoints, files) and do not change the trained weights.
    """
    import torch

    from ..io.resolve import load_artifact
    from ..eval.backends import load_tokenizer
    from ..eval.run import check_same_tokenizer
    from ..io import distill_data as dd
    from ..io.atomic import check_output
    from ..methods.distill.losses import layer_map, make_projector, teacher_topk
    from ..methods.distill.schedules import lr_lambda

    out = Path(out)
    threads = torch.get_num_threads()
    if os.environ.get("SLMCTL_THREADS"):
        torch.set_num_threads(max(1, int(os.environ["SLMCTL_THREADS"])))
    asked = DistillRecipe.build(recipe, **options)
    steps, seq_len, batch_size, grad_accum, lr = asked.steps, asked.seq_len, asked.batch_size, asked.grad_accum, asked.lr
    weight_decay, warmup, schedule, min_lr_ratio = asked.weight_decay, asked.warmup, asked.schedule, asked.min_lr_ratio
    decay_frac, temperature, kd_weight, hidden_loss = asked.decay_frac, asked.temperature, asked.kd_weight, asked.hidden_loss
    topk, select, clip, freeze_embeddings, seed = asked.topk, asked.select, asked.clip, asked.freeze_embeddings, asked.seed
    heldout, max_tokens, data, field = asked.heldout, asked.max_tokens, asked.data, asked.field
    eval_every, report, eval_data, eval_windows = asked.eval_every, asked.report, asked.eval_data, asked.eval_windows
    if warmup is None:
        warmup = min(100, steps // 20)
    dist = Dist()
    recipe = dataclasses.replace(asked, warmup=warmup)  # what this run trains with
    log = log if dist.main else _nolog
    progress = progress if dist.main else None
    try:
        _check_names(recipe)
        if teacher_cache is not None and hidden_loss:
            raise UsageError("--hidden-loss needs the teacher's hidden states, which the logit cache does not hold",
                             hint="drop --teacher-cache, or the hidden-state loss")
        if dist.main:
            check_output(out, force)  # fail before training, not after it
        ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.name + ".ckpt")

        t_art, t_path = load_artifact(teacher, allow_pickle=allow_pickle, log=log)
        s_art, s_path = load_artifact(student, allow_pickle=allow_pickle, log=log)
        # the tokenizer check comes first: it is cheap and a mismatch makes the whole run meaningless
        t_tok = load_tokenizer(t_art, trust_remote_code)
        s_tok = load_tokenizer(s_art, trust_remote_code)
        from ..calib import load_text

        sample = load_text(data, purpose="train", field=field)[:4000]
        try:
            check_same_tokenizer(t_tok, s_tok, f"teacher {t_path}", f"student {s_path}", sample)
        except InputError as exc:
            raise InputError(exc.message, hint="distillation matches next-token distributions token by token, so "
                             "teacher and student need the same tokenizer; pick a student from the teacher's family "
                             "(e.g. slmctl prune the teacher)") from None

        tokenize = lambda text: t_tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        train, held, tokens_sha = dd.load_blocks(data, tokenize, seq_len, field=field, heldout=heldout,
                                                 max_tokens=max_tokens)
        log(f"data: {train.shape[0]} training block(s) and {held.shape[0]} held-out block(s) of {seq_len} tokens; "
            f"{dist.world} process(es), {recipe.batch_size * grad_accum * dist.world} blocks per step")

        torch.manual_seed(seed)
        t_model, _ = _load_model(t_art, trust_remote_code, trainable=False, role="teacher")
        s_model, s_folder = _load_model(s_art, trust_remote_code, trainable=True, role="student")
        t_model.to(dist.device).eval()
        s_model.to(dist.device).train()
        for p in t_model.parameters():
            p.requires_grad_(False)
        vocab = min(len(t_tok), t_model.config.get_text_config().vocab_size, s_model.config.get_text_config().vocab_size)
        ctx = _Ctx(teacher=t_model, student=s_model, vocab=vocab, recipe=recipe, device=dist.device)
        if hidden_loss:
            n_s = s_model.config.get_text_config().num_hidden_layers
            n_t = t_model.config.get_text_config().num_hidden_layers
            ctx.pairs = layer_map(n_s, n_t)
            ctx.projector = make_projector(s_model.config.get_text_config().hidden_size,
                                           t_model.config.get_text_config().hidden_size, len(ctx.pairs))
            if ctx.projector is not None:
                ctx.projector.to(dist.device)
        if freeze_embeddings:
            # the token embeddings (and the output head when tied to them) stay fixed: on a small model with a
            # large vocabulary their gradient and AdamW update are a large share of a step, and width/depth
            # pruning leaves them untouched
            s_model.get_input_embeddings().weight.requires_grad_(False)
            head = s_model.get_output_embeddings()
            if head is not None and head.weight is s_model.get_input_embeddings().weight:
                head.weight.requires_grad_(False)
        params = [p for p in s_model.parameters() if p.requires_grad]
        if ctx.projector is not None:
            params += list(ctx.projector.parameters())
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(schedule, steps, warmup=warmup, min_ratio=min_lr_ratio,
                                                                 decay_frac=decay_frac))
        plan = Schedule(train.shape[0], seed, batch_size, grad_accum, dist.world)

        # ---- teacher top-k cache
        cache = None
        needs_teacher_logits = kd_weight > 0 or select
        if teacher_cache is not None and needs_teacher_logits:
            from ..io.hashing import artifact_sha256

            cache = dd.TeacherCache(Path(teacher_cache), {"teacher": artifact_sha256(t_path), "tokens": tokens_sha,
                                                          "seq_len": seq_len, "k": topk, "vocab": vocab,
                                                          "temperature": temperature})
            if dist.main:
                have = cache.load()
                missing = sorted(plan.used(steps) - have)
                if missing:
                    log(f"teacher cache: computing top-{topk} logits for {len(missing)} block(s) "
                        f"({len(have)} cached) in {cache.path}")

                    def compute(ids):
                        with torch.no_grad():
                            lg = t_model(input_ids=train[ids].to(dist.device), use_cache=False).logits[..., :vocab]
                        v, i = teacher_topk(lg, topk, temperature)
                        return v.cpu(), i.cpu()

                    cache.extend(missing, compute, batch_size, progress)
                else:
                    log(f"teacher cache: all {len(plan.used(steps))} block(s) found in {cache.path}")
            dist.barrier()
            if not dist.main:
                cache.load()

        # ---- resume
        start = 0
        history: list[dict[str, Any]] = []
        held_start = None
        rdict = {**recipe.training(), "world_size": dist.world}  # a checkpoint records it; a resume must match
        if resume:
            st = dd.load_checkpoint(ckpt_dir)
            if st is None:
                log(f"no checkpoint in {ckpt_dir}: starting from step 0")
            else:
                if st["recipe"] != rdict:
                    diff = sorted(k for k in rdict if st["recipe"].get(k) != rdict[k])
                    raise UsageError(f"the checkpoint in {ckpt_dir} was made with other settings ({', '.join(diff)})",
                                     hint="resume with the same options, or start again without --resume")
                if st.get("tokens") != tokens_sha:
                    raise UsageError(f"the checkpoint in {ckpt_dir} was trained on other data",
                                     hint="resume with the same --data and --seq-len")
                s_model.load_state_dict(st["student"])
                if ctx.projector is not None:
                    ctx.projector.load_state_dict(st["projector"])
                opt.load_state_dict(st["optimizer"])
                sched.load_state_dict(st["scheduler"])
                _set_rng_state(st["rng"])
                start = int(st["step"])
                history = list(st["history"])
                held_start = st.get("held_start")
                log(f"resumed from {ckpt_dir} at step {start} of {steps}")

        if held_start is None and dist.main:
            held_start = _heldout_metrics(ctx, held, batch_size)
            if held_start:
                log(f"held-out before: KL {held_start['kl']:.4f}, ppl {held_start['ppl']:.3f}")

        # ---- train
        tok_per_step = plan.rows_per_step * seq_len
        bar = progress(total=steps, desc="distill", unit="step") if progress else None
        if bar is not None:
            bar.update(start)
        t0 = time.perf_counter()
        trained_tokens = 0
        log_every = max(1, steps // 10)  # progress lines when there is no bar (stderr not a terminal)
        last_ckpt = None
        try:
            for step in range(start, steps):
                opt.zero_grad(set_to_none=True)
                parts_sum: dict[str, float] = {}
                loss_sum = 0.0
                kept = 0
                for a in range(grad_accum):
                    ids = plan.micro(step, a, dist.rank)
                    x = train[ids].to(dist.device)
                    total, parts, k = _micro_loss(ctx, x, t_model, cache, ids)
                    (total / grad_accum).backward()
                    loss_sum += float(total.detach()) / grad_accum
                    for key, v in parts.items():
                        parts_sum[key] = parts_sum.get(key, 0.0) + v / grad_accum
                    kept += k
                dist.mean_grads(params)
                gnorm = float(torch.nn.utils.clip_grad_norm_(params, clip)) if clip > 0 else None
                cur_lr = sched.get_last_lr()[0]
                opt.step()
                sched.step()
                trained_tokens += tok_per_step
                rec = {"step": step + 1, "loss": dist.mean(loss_sum), "lr": cur_lr,
                       **{k: dist.mean(v) for k, v in parts_sum.items()}}
                if gnorm is not None:
                    rec["grad_norm"] = gnorm
                if select:
                    rec["kept"] = kept
                history.append(rec)
                elapsed = time.perf_counter() - t0
                if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps and dist.main:
                    h = _heldout_metrics(ctx, held, batch_size)
                    if h:
                        rec["heldout"] = h
                        log(f"step {step + 1}: loss {rec['loss']:.4f}, held-out KL {h['kl']:.4f}, ppl {h['ppl']:.3f}")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{trained_tokens / elapsed:.0f}")
                if (bar is None or bar.disable) and ((step + 1) % log_every == 0 or step + 1 == steps):
                    eta = elapsed / (step + 1 - start) * (steps - step - 1)
                    log(f"step {step + 1}/{steps}: loss {rec['loss']:.4f}, {trained_tokens / elapsed:.0f} tokens/s, "
                        f"ETA {eta:.0f} s")
                if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                    if dist.main:
                        state = {"step": step + 1, "student": s_model.state_dict(), "optimizer": opt.state_dict(),
                                 "scheduler": sched.state_dict(), "rng": _rng_state(), "recipe": rdict,
                                 "tokens": tokens_sha, "history": history, "held_start": held_start,
                                 "projector": ctx.projector.state_dict() if ctx.projector is not None else {}}
                        last_ckpt = dd.save_checkpoint(ckpt_dir, state, {"step": step + 1, "steps": steps,
                                                                         "rows_consumed": (step + 1) * plan.rows_per_step})
                    dist.barrier()
                if on_step is not None:
                    on_step(step + 1, rec)
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0

        result: dict[str, Any] = {"output": str(out), "steps": steps, "resumed_from": start or None,
                                  "processes": dist.world, "tokens_per_step": tok_per_step,
                                  "train_seconds": seconds,
                                  "tokens_per_s": trained_tokens / seconds if seconds > 0 and trained_tokens else None,
                                  "final_loss": history[-1]["loss"] if history else None,
                                  "first_loss": history[0]["loss"] if history else None, "history": history}
        if not dist.main:
            dist.barrier()
            return result
        held_end = _heldout_metrics(ctx, held, batch_size)
        result["heldout"] = {"before": held_start, "after": held_end, "blocks": int(held.shape[0])}
        result["device"] = {"device": str(dist.device)}
        if dist.device.type == "cuda":  # this process's peak (teacher, student, optimiser state, activations)
            result["device"]["peak_bytes"] = int(torch.cuda.max_memory_allocated(dist.device))
        if held_end:
            log(f"held-out after:  KL {held_end['kl']:.4f}, ppl {held_end['ppl']:.3f}")

        rec_doc = dict(rdict)
        rec_doc["tokens_sha256"] = tokens_sha
        prov = provenance.build("distill", rec_doc, [dict(provenance.input_record(teacher, t_path, t_art), role="teacher"),
                                                     dict(provenance.input_record(student, s_path, s_art), role="student")],
                                typed=asked)
        dd.save_student(s_model, s_folder, out, prov=prov, force=force)
        log(f"wrote {out}")
        if not keep_checkpoint:
            dd.remove_checkpoints(ckpt_dir)
        elif last_ckpt is not None or (ckpt_dir / dd.CKPT_FILE).is_file():
            result["checkpoint"] = str(ckpt_dir)
        if report:
            result["eval"] = ev = eval_report(teacher, student, str(out), data=eval_data,
                                              ctx=asked.eval_ctx or seq_len, windows=eval_windows, log=log)
            d = ev["distilled"]  # the gates compare the distilled student with the teacher
            check_gates(result, {"ppl_before": ev["teacher"]["ppl"], "ppl_after": d["ppl"],
                                 "ppl_increase_pct": 100.0 * (d["ppl"] / ev["teacher"]["ppl"] - 1.0),
                                 "kld_mean": d["kld"], "top1_agreement_pct": d["top1_agreement_pct"]},
                        **asked.gate_limits())
        dist.barrier()
        return result
    finally:
        dist.close()
        torch.set_num_threads(threads)


def eval_report(teacher: str, start: str, final: str, *, data: str, ctx: int, windows: int, log: Log = _nolog) -> dict:
    """Teacher, starting student and distilled student on the same windows of ``data`` (slmctl.pipelines.evaluate)."""
    from .evaluate import evaluate

    before = evaluate(start, data=data, reference=teacher, ctx=ctx, windows=windows)
    after = evaluate(final, data=data, reference=teacher, ctx=ctx, windows=windows)
    t_ppl, s0, s1 = after["reference_ppl"], before["ppl"], after["ppl"]
    gap = s0 - t_ppl
    rep = {"data": data, "ctx": ctx, "windows": after["windows"],
           "teacher": {"ppl": t_ppl},
           "start": {"ppl": s0, "kld": before["kld"]["mean"], "top1_agreement_pct": before["top1_agreement_pct"]},
           "distilled": {"ppl": s1, "kld": after["kld"]["mean"], "top1_agreement_pct": after["top1_agreement_pct"]},
           "gap_recovered_pct": 100.0 * (s0 - s1) / gap if gap > 0 else None}
    log(f"eval on {data}: teacher ppl {t_ppl:.3f}; student ppl {s0:.3f} -> {s1:.3f}"
        + (f" ({rep['gap_recovered_pct']:.1f}% of the gap recovered)" if rep["gap_recovered_pct"] is not None else "")
        + f"; KL {rep['start']['kld']:.4f} -> {rep['distilled']['kld']:.4f}")
    return rep
