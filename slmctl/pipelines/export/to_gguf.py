"""HF folder -> GGUF: metadata from the family's spec, tokenizer, tensors converted and written one at a time.

``--outtype`` f32, f16, bf16 and the legacy block types (q8_0, q4_0, q4_1, q5_0, q5_1) are written by
slmctl itself; k-quants (q2_k ... q6_k) go through llama.cpp's own quantiser
(``llama_model_quantize``) from an f16 GGUF, optionally with an importance matrix.
Reference: https://github.com/ggml-org/llama.cpp/blob/master/convert_hf_to_gguf.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from ... import provenance
from ...errors import UnsupportedError, UsageError
from ...io.gguf_types import file_types
from .gguf_build import KQUANTS, LLAMA_TYPES, normalise_outtype, write_gguf
from .formats import EXPORTERS

Log = Callable[[str], None]


@EXPORTERS.register("gguf")
def export_gguf(art, ref: str, out: Path, *, dtype: str, max_shard_size, force: bool, log: Log, progress=None,
                outtype: str | None = None, imatrix: str | None = None, data: str | None = None,
                vocab_pre: str | None = None, modelfile: bool = False, method: str | None = None) -> Path:
    """One GGUF file that llama.cpp runs: f32/f16/bf16/q8_0/q4_0/q4_1/q5_0/q5_1 here, k-quants via llama.cpp."""
    from ...io.atomic import atomic_path
    from ...io.convert import write_provenance_file
    from ...io.libllama import model_quantize

    if max_shard_size:
        raise UsageError("--max-shard-size does not apply to GGUF (one file)")
    t = normalise_outtype(outtype, dtype)
    if (art.config or {}).get("quantization_config") and art.format != "gguf":
        from .gguf_view import gguf_view

        # GPTQ/AWQ/RTN output: its grid maps onto the nearest GGUF type, or it is dequantised and requantised
        art, t, _ = gguf_view(art, t if (outtype or dtype != "auto") else None, log=log)
    recipe: dict[str, Any] = {"format": "gguf", "outtype": t}
    if imatrix or data:
        recipe["imatrix"] = str(imatrix) if imatrix else {"data": data}
    if (imatrix or data or method) and t in ("f32", "f16", "bf16"):
        raise UsageError(f"--method/--imatrix/--data only matter for quantised types, not {t}", hint="e.g. --outtype q4_k_m")
    if art.format in ("hf", "safetensors") and not (art.config or {}).get("quantization_config") \
            and (t in KQUANTS or imatrix or data or method):
        from ..gguf_quant import to_gguf  # slmctl's own quantisers on llama.cpp's grids and type mixture

        to_gguf(art, ref, out, t, method=method, data=data, imatrix=imatrix, force=force, vocab_pre=vocab_pre,
                log=log, progress=progress, verb="export")
        return _with_modelfile(out, modelfile, force, log)
    if art.format in ("hf", "safetensors"):  # hashed while the tensors convert; write_gguf puts the digest in the header
        rec, finish = provenance.input_record_later(ref, art.path, art)
    else:
        rec, finish = provenance.input_record(ref, art.path, art), None
    prov = provenance.build("export", recipe, [rec])
    if art.format == "gguf":  # GGUF -> GGUF: requantise with llama.cpp
        if t not in LLAMA_TYPES:
            raise UnsupportedError(f"{art.path}: GGUF -> {t} is not supported")
        quantized = {lt.dtype for lt in art.tensors.values()} - {"F32", "F16", "BF16"}
        if quantized:
            log(f"warning: {art.path.name} is already quantised ({', '.join(sorted(quantized))}); requantising to "
                f"{t} loses quality twice. Export from the HF model when you have it.")
        from ..gguf_quant import quantize_gguf

        quantize_gguf(art.path, out, t, imatrix=imatrix, force=force, log=log, allow_requantize=bool(quantized))
        write_provenance_file(out.with_name(out.name + ".slmctl.json"), prov)
        return _with_modelfile(out, modelfile, force, log)
    if art.format not in ("hf", "safetensors"):
        raise UnsupportedError(f"{art.path}: {art.format} -> GGUF is not supported", hint="export from the HF folder")
    with atomic_path(out, force=force) as tmp:
        if t in KQUANTS:
            im = _imatrix_for(art, imatrix, data, log=log, progress=progress)
            with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.f16-") as td:
                f16 = Path(td) / "model-f16.gguf"
                log(f"writing an f16 GGUF, then {t.upper()} with llama.cpp's quantiser")
                write_gguf(art, f16, "f16", prov, vocab_pre=vocab_pre, log=log, progress=progress, finish=finish)
                model_quantize(f16, tmp, file_types()[t], t, im)
        else:
            info = write_gguf(art, tmp, t, prov, vocab_pre=vocab_pre, log=log, progress=progress, finish=finish)
            log(f"GGUF {info['arch']}, {info['tensors']} tensors, outtype {t}, tokenizer pre {info['pre']!r}")
    write_provenance_file(out.with_name(out.name + ".slmctl.json"), prov)
    return _with_modelfile(out, modelfile, force, log)


def _with_modelfile(out: Path, modelfile: bool, force: bool, log: Log) -> Path:
    """With --modelfile: an Ollama Modelfile beside the GGUF (template and stops from its tokenizer metadata)."""
    if modelfile:
        from ...io.modelfile import modelfile_path, write_modelfile

        mf, style = write_modelfile(out, modelfile_path(out), force=force)
        log(f"wrote {mf}" + (f" (chat template: {style.name})" if style else
                              " (warning: no chat template recognised; Ollama will pass prompts as they are)"))
    return out


# ---------------------------------------------------------------- k-quants and imatrix
def _imatrix_for(art, imatrix, data, *, log, progress=None):
    """{gguf tensor name: mean squared input activation per column} or None."""
    from ...io.imatrix import read_imatrix, write_imatrix

    if imatrix and (not data or Path(imatrix).is_file()):
        return read_imatrix(Path(imatrix))
    if data:
        from ...calib import as_list, label
        from ..importance import CHUNKS, CTX, compute_imatrix

        log(f"computing the importance matrix on {label(data)} (calib region, {CHUNKS} x {CTX} tokens)")
        sums, n = compute_imatrix(art, data=data, ctx=CTX, chunks=CHUNKS, progress=progress)
        if imatrix:  # --imatrix FILE with --data: keep what was computed
            write_imatrix(Path(imatrix), sums, datasets=as_list(data), chunk_size=CTX, chunk_count=n)
            log(f"importance matrix written to {imatrix}")
        return {k: s / max(c, 1) for k, (s, c) in sums.items()}
    return None
