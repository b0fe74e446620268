"""evaluate(): windows of the same tokens through the model (and a reference); the gates are in compare.py."""

from __future__ import annotations

import time
from typing import Callable

from ..errors import InputError, UsageError
from .backends import load_tokenizer, open_backend
from .metrics import Stats


def _tokenize_fn(tok):
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]


def _same_vocab(tok_a, tok_b) -> bool:
    """The same token -> id map, allowing the longer one extra *special* tokens after the shorter one's last id:
    transformers' GGUF tokenizer loader appends ``<|endoftext|>`` to a GPT-2-style vocabulary that lacks it,
    an id no model row holds, so it cannot change any logit compared."""
    if len(tok_a) == len(tok_b):
        return tok_a.get_vocab() == tok_b.get_vocab()
    short, long = sorted((tok_a, tok_b), key=len)
    n = len(short)
    vs, vl = short.get_vocab(), long.get_vocab()
    extra = {t: i for t, i in vl.items() if i >= n}
    special = set(long.all_special_tokens) | {str(t) for t in long.added_tokens_decoder.values() if t.special}
    return ({t: i for t, i in vl.items() if i < n} == vs and len(extra) == len(vl) - n
            and all(t in special for t in extra))


def check_same_tokenizer(tok_a, tok_b, where_a: str, where_b: str, sample: str) -> None:
    """Both models must turn the same text into the same ids; say where they differ."""
    a, b = _tokenize_fn(tok_a)(sample), _tokenize_fn(tok_b)(sample)
    if a != b or not _same_vocab(tok_a, tok_b):
        raise InputError(f"{where_a} and {where_b} do not share a tokenizer "
                         f"(vocab {len(tok_a)} vs {len(tok_b)}; ids differ on the sample text)",
                         hint="KL divergence is only defined between models with the same vocabulary")


def evaluate(model_art, *, text: str | None = None, ctx: int = 512, windows: int | None = 40, reference_art=None,
             backend: str | None = None, reference_backend: str | None = None, trust_remote_code: bool = False,
             progress: Callable | None = None, log: Callable[[str], None] = lambda m: None, data=None,
             field: str = "text") -> dict:
    """Perplexity of ``model_art`` on ``text`` (or on ``data``: sources as slmctl.calib reads them, chat
    rendered through the tokenizer's template, each part its weight's share of the windows); with a
    reference, KL(ref || model) and top-1 agreement."""
    if windows is not None and windows < 1:
        raise UsageError("--windows must be at least 1")
    tok_art = reference_art or model_art
    tok = load_tokenizer(tok_art, trust_remote_code)
    parts = None
    if text is None:
        from ..calib import draw_windows

        wins, parts = draw_windows(tok, data, n=windows, ctx=ctx, purpose="eval", field=field)
        sample = tok.decode(wins[0][:500])
    else:
        wins, sample = None, text[:2000]
    if reference_art is not None:
        check_same_tokenizer(tok, load_tokenizer(model_art, trust_remote_code), str(reference_art.path),
                             str(model_art.path), sample)
    if wins is None:
        wins = token_windows_for(tok, text, ctx, windows)
    log(f"{len(wins)} window(s) of {ctx} tokens")
    m = open_backend(model_art, ctx, backend, trust_remote_code)
    r = open_backend(reference_art, ctx, reference_backend, trust_remote_code) if reference_art is not None else None
    stats = Stats()
    t0 = time.perf_counter()
    t_model = 0.0
    bar = progress(total=len(wins) * ctx, desc="eval", unit="tok") if progress else None
    try:
        for ids in wins:
            if max(ids) >= m.vocab_size:
                raise InputError(f"{model_art.path}: token id {max(ids)} is outside the model's vocabulary ({m.vocab_size})")
            ts = time.perf_counter()
            logits = m.logits(ids)
            t_model += time.perf_counter() - ts
            stats.add(ids, logits, r.logits(ids) if r is not None else None)
            if bar is not None:
                bar.update(len(ids))
                bar.set_postfix(ppl=f"{stats.report()['ppl']:.3f}")
    finally:
        if bar is not None:
            bar.close()
        m.close()
        if r is not None:
            r.close()
    rep = stats.report()
    rep.update({"model": str(model_art.path), "format": model_art.format, "backend": m.name, "ctx": ctx,
                "windows": len(wins), "seconds": time.perf_counter() - t0,
                "tokens_per_s": len(wins) * ctx / t_model if t_model else None})
    if reference_art is not None:
        rep.update({"reference": str(reference_art.path), "reference_backend": r.name})
    if parts is not None:
        rep["text"] = {k: parts[k] for k in ("data", "parts", "chat_template", "sha256")}
    return rep


def token_windows_for(tok, text: str, ctx: int, windows: int | None):
    from ..calib import token_windows

    return token_windows(_tokenize_fn(tok), text, ctx, windows)

