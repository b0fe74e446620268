"""Verification of an ONNX export: the PyTorch reference (greedy tokens, logits) and onnxruntime's run of the
exported graph, compared within a dtype's tolerance; a mismatch raises ``ExportMismatch`` (exit 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import SlmctlError

VERIFY_PROMPT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
                 "the slings and arrows of outrageous fortune.")


GREEDY_TOKENS = 32


DECODE_STEPS = 8


class ExportMismatch(SlmctlError):
    """The ONNX graph does not compute what the PyTorch model computes (exit 1)."""


def _prompt_ids(folder: Path, vocab: int, n: int = 12) -> list[int]:
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
        ids = tok(VERIFY_PROMPT, add_special_tokens=False)["input_ids"]
        if len(ids) >= 4 and max(ids) < vocab:
            return ids[:n]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return [int(x) for x in np.random.default_rng(0).integers(0, vocab, n)]


def reference_decoder(model, prompt: list[int], new_tokens: int = GREEDY_TOKENS) -> dict[str, Any]:
    """PyTorch's logits on the prompt and on each greedy step through its own KV cache."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt]), use_cache=True)
        prefill = out.logits[0].float().numpy()
        cache = out.cache
        tokens, steps = [int(prefill[-1].argmax())], []
        for _ in range(new_tokens - 1):
            out = model(input_ids=torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True)
            cache = out.cache
            step = out.logits[0, -1].float().numpy()
            steps.append(step)
            tokens.append(int(step.argmax()))
    return {"prompt": prompt, "prefill": prefill, "steps": np.stack(steps), "tokens": tokens}


def compare_decoder(onnx_file: Path, ref: dict[str, Any], decode_steps: int = DECODE_STEPS) -> dict[str, Any]:
    """Run the ONNX graph on the reference's prompt, then feed PyTorch's greedy tokens one at a time through
    present -> past: max abs logit diff (prompt, decode steps), top-1 agreement, and whether greedy generation
    is identical (ONNX's argmax equals PyTorch's at every step, so free-running generation matches too)."""
    from ...eval.backend_onnx import OrtCausalLM

    lm = OrtCausalLM(onnx_file)
    logits, past = lm.run(np.asarray([ref["prompt"]]))
    prefill = logits[0].astype(np.float32)
    steps = []
    toks = ref["tokens"]
    for t in toks[:-1]:
        logits, past = lm.run(np.asarray([[t]]), past)
        steps.append(logits[0, -1].astype(np.float32))
    steps = np.stack(steps)
    greedy = [int(prefill[-1].argmax())] + [int(s.argmax()) for s in steps]
    all_ort = np.concatenate([prefill, steps])
    all_ref = np.concatenate([ref["prefill"], ref["steps"]])
    return {
        "prompt_tokens": len(ref["prompt"]),
        "max_abs_diff_prompt": float(np.abs(prefill - ref["prefill"]).max()),
        "max_abs_diff_decode": float(np.abs(steps[:decode_steps] - ref["steps"][:decode_steps]).max()),
        "max_abs_diff_all": float(np.abs(all_ort - all_ref).max()),
        "top1_agreement_pct": float((all_ort.argmax(-1) == all_ref.argmax(-1)).mean() * 100.0),
        "greedy_tokens": len(toks),
        "greedy_identical": greedy == toks,
        "logit_scale": float(np.abs(all_ref).max()),
    }


def tolerance(dtype_name: str, scale: float) -> float:
    """Largest max-abs logit diff accepted: 1e-3 in fp32 (relaxed for logits far above 10), wider in fp16."""
    if dtype_name == "float16":
        return 0.05 + 0.02 * scale
    return 1e-3 * max(1.0, scale / 10.0)


def check(report: dict[str, Any], dtype_name: str, where: Path) -> None:
    tol = tolerance(dtype_name, report["logit_scale"])
    report["tolerance"] = tol
    problems = []
    if not np.isfinite(report["max_abs_diff_all"]) or report["max_abs_diff_all"] > tol:
        problems.append(f"max abs logit diff {report['max_abs_diff_all']:.3g} > {tol:.3g}")
    if dtype_name == "float16":
        if report["top1_agreement_pct"] < 90.0:
            problems.append(f"top-1 agreement {report['top1_agreement_pct']:.1f}% < 90%")
    elif report.get("greedy_identical") is False:
        problems.append(f"greedy generation of {report['greedy_tokens']} tokens differs")
    if problems:
        raise ExportMismatch(f"{where}: the ONNX export does not match PyTorch ({'; '.join(problems)}; "
                             f"top-1 agreement {report['top1_agreement_pct']:.1f}%)",
                             hint="nothing was written; report this with SLMCTL_DEBUG=1 output "
                                  "(an unsupported config key, such as a RoPE variant, is the usual cause)")


def reference_encoder(model, folder: Path) -> dict[str, Any]:
    import torch

    vocab = model.config.vocab_size
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
        enc = tok([VERIFY_PROMPT, "A shorter second sentence."], padding=True, return_tensors="np")
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    except (OSError, ValueError, KeyError, TypeError):
        ids = np.random.default_rng(0).integers(0, vocab, (2, 12)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[1, 8:] = 0
    types = np.zeros_like(ids)
    kw = {"token_type_ids": torch.from_numpy(types)} if getattr(model.config, "type_vocab_size", 0) > 0 else {}
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), **kw)
    y = (out.logits if hasattr(out, "logits") else out.last_hidden_state).float().numpy()
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "output": y}


def compare_encoder(onnx_file: Path, ref: dict[str, Any]) -> dict[str, Any]:
    from ...eval.backend_onnx import session

    sess = session(onnx_file)
    feed = {i.name: ref[i.name] for i in sess.get_inputs()}
    y = sess.run(None, feed)[0].astype(np.float32)
    mask = ref["attention_mask"].astype(bool)
    r = ref["output"]
    if y.ndim == 3:  # hidden states: padded positions are don't-care
        diff = np.abs(y - r)[mask]
    else:
        diff = np.abs(y - r)
    rep = {"max_abs_diff_all": float(diff.max()), "logit_scale": float(np.abs(r).max()),
           "top1_agreement_pct": 100.0}
    if y.ndim == 2:
        rep["top1_agreement_pct"] = float((y.argmax(-1) == r.argmax(-1)).mean() * 100.0)
    else:
        a, b = y[mask], r[mask]
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
        rep["min_cosine"] = float(cos.min())
    return rep
