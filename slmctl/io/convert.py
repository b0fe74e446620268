"""Conversions between on-disk formats that go through a loader (GGUF -> HF folder)."""

from __future__ import annotations

import os
from pathlib import Path

from .. import provenance
from ..errors import InputError, UnsupportedError
from .atomic import write_provenance_file  # noqa: F401 (its home before io.atomic; callers import it from here)
from .hf_folder import hf_folder


def gguf_to_hf(src: Path, out: Path, *, force: bool, ref: str | None = None, max_shard_size: int | None = None,
               dtype: str | None = None, log=None, extra_recipe: dict | None = None) -> Path:
    """Import a GGUF into an HF folder: dequantised weights, config and tokenizer, with provenance."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from transformers import GgufConfig
        qc = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # older transformers
        qc = {}
    from ..hf import quiet_transformers, unique_state_items
    from .artifact import open_artifact

    quiet_transformers()
    _quiet_gguf_loader()
    art = open_artifact(src)
    arch = art.metadata.get("general.architecture", "?")
    _byte_bpe_tokenizer_for(arch, art.metadata)
    try:
        from .gguf_import import OWN_IMPORT, import_gguf

        if arch in OWN_IMPORT:  # families transformers' GGUF loader lacks or misreads
            model, tok = import_gguf(art)
        else:
            tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
            model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32,
                                                         **qc)
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise UnsupportedError(f"{src}: transformers cannot import GGUF architecture {arch!r} "
                               f"({str(exc).splitlines()[0]})",
                               hint="supported: llama, mistral, qwen2, qwen3, phi3, gemma2, gpt2, ...") from None
    prov = provenance.build("export", {"format": "hf", "dtype": dtype or "float32", **(extra_recipe or {})},
                            [provenance.input_record(ref or str(src), src, art)])
    target = getattr(torch, dtype) if dtype else torch.float32
    _restore_rope(model.config, art, arch)
    with hf_folder(out, src_dir=None, config=None, prov=prov, force=force, max_shard_size=max_shard_size,
                   expected=[name for name, _ in unique_state_items(model)]) as w:
        model.config.dtype = target
        model.config.architectures = [type(model).__name__]  # save_pretrained sets it; config alone does not
        model.config.save_pretrained(w.folder)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(w.folder)
        tok.save_pretrained(w.folder)
        for name, t in unique_state_items(model):  # tied weights are stored once, as transformers does
            w.add(name, t.to(target))
    return out


def _byte_bpe_tokenizer_for(arch: str, meta: dict) -> None:
    """transformers' GGUF tokenizer table lists architectures, not tokenizer kinds: an architecture it loads
    weights for (LFM2) but has no entry for gets the byte-level BPE converter its GGUF's vocab ('gpt2') needs."""
    if meta.get("tokenizer.ggml.model") != "gpt2":
        return
    try:
        from transformers.integrations.ggml import GGUF_TO_FAST_CONVERTERS, GGUFGPTConverter
    except ImportError:  # pragma: no cover
        return
    if arch == "lfm2":
        GGUF_TO_FAST_CONVERTERS.setdefault(arch, GGUFGPTConverter)


def _restore_rope(config, art, arch: str) -> None:
    """Put back the RoPE settings transformers' GGUF loader drops (LongRoPE, partial rotation, llama3
    divisors): without them the imported model computes different logits (see arch.rope_from_gguf)."""
    from ..arch import rope_from_gguf

    names = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
    tensors = {n: art.tensors[n].load().float().numpy() for n in names if n in art.tensors}
    if arch not in ("llama", "phi3") and not tensors:
        return
    fix = rope_from_gguf(arch, art.metadata, tensors, config.to_dict())
    for k, v in fix.items():
        setattr(config, k, v)


def _quiet_gguf_loader() -> None:
    """transformers' GGUF loader draws its own tqdm bar unconditionally: silence it (slmctl reports progress
    itself), unless SLMCTL_DEBUG=1."""
    if os.environ.get("SLMCTL_DEBUG") == "1":
        return
    try:
        import functools

        from transformers import modeling_gguf_pytorch_utils as m
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return
    if getattr(m, "tqdm", None) is tqdm:
        m.tqdm = functools.partial(tqdm, disable=True)
