"""``slmctl inspect --check``: run an artifact in the runtime its users load it with.

Three stages, each reported: **load** (the runtime builds the model from the files), **run** (greedy
generation of a few tokens from a short prompt), **logits** (the runtime's logits on the prompt
against a reference slmctl computes itself from the stored weights):

==========================  =======================================  ================================
artifact                    runtime                                  reference for the logits
==========================  =======================================  ================================
HF folder, float            transformers ``from_pretrained``         none (it is the reference)
compressed-tensors          transformers + compressed-tensors        slmctl's dequantised model
GPTQ layout                 GPTQModel (torch kernel), if installed   slmctl's dequantised model
GGUF                        llama.cpp (llama-cpp-python)             transformers' dequantised import
ONNX                        onnxruntime                              the HF folder it was exported
                                                                     from, when its path still exists
==========================  =======================================  ================================

The exact-grid runtimes (transformers, GPTQModel) must agree within 1e-3 of the logit scale; llama.cpp
and onnxruntime quantise activations or reorder sums, so for them the top-1 token must agree on at
least 90 % of the positions (and the largest difference is reported).
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
EXACT_TOL = 1e-3
TOP1_MIN = 90.0


def _stage(fn):
    """(status, value) of one stage; the runtime's own progress bars and prints stay off stderr."""
    import contextlib
    import io
    import os

    t = time.perf_counter()
    quiet = (contextlib.nullcontext() if os.environ.get("SLMCTL_DEBUG") == "1"
             else contextlib.redirect_stderr(io.StringIO()))
    try:
        with quiet:
            value = fn()
        return {"ok": True, "seconds": round(time.perf_counter() - t, 3)}, value
    except Exception as exc:  # noqa: BLE001 - a runtime's failure is the result being reported
        msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if os.environ.get("SLMCTL_DEBUG") == "1":
            traceback.print_exc()
        return {"ok": False, "error": msg, "seconds": round(time.perf_counter() - t, 3)}, None


class _Torch:
    """A transformers-style model (also GPTQModel's inner model): logits and greedy tokens."""

    def __init__(self, model):
        self.model = model

    def logits(self, ids):
        import torch

        with torch.inference_mode():
            return self.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float().numpy()

    def generate(self, ids, n):
        import torch

        with torch.inference_mode():
            out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=n, do_sample=False, min_new_tokens=n)
        return out[0, len(ids):].tolist()


class _Llama:
    def __init__(self, path):
        from ..io.libllama import open_llama
        from .backends import _quiet_stderr

        with _quiet_stderr():
            self.llm = open_llama(path, n_ctx=256, logits_all=True, verbose=False, seed=0, n_threads=2)

    def tokenize(self, text):
        return self.llm.tokenize(text.encode(), add_bos=True)

    def logits(self, ids):
        import numpy as np

        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def generate(self, ids, n):
        self.llm.reset()
        self.llm.eval(ids)
        out = []
        for _ in range(n):
            tok = int(self.llm.scores[self.llm.n_tokens - 1].argmax())
            out.append(tok)
            self.llm.eval([tok])
        return out


class _Ort:
    def __init__(self, path):
        from .backend_onnx import OrtCausalLM

        self.lm = OrtCausalLM(path)

    def logits(self, ids):
        import numpy as np

        return self.lm.run(np.asarray([ids], dtype=np.int64))[0][0].astype(np.float32)

    def generate(self, ids, n):
        """Greedy, through the KV cache (prefill, then one token per step) as an application runs it."""
        import numpy as np

        logits, past = self.lm.run(np.asarray([ids], dtype=np.int64))
        out = []
        for _ in range(n):
            out.append(int(logits[0, -1].argmax()))
            logits, past = self.lm.run(np.asarray([[out[-1]]], dtype=np.int64), past)
        return out


def _gptqmodel(folder: Path):
    import torch

    try:
        from gptqmodel import BACKEND, GPTQModel
    except ImportError:
        raise RuntimeError("GPTQModel is not installed in this environment (pip install gptqmodel==7.6.0, or run "
                           "tests/peers/test_quantize_gptqmodel.py FOLDER with its own environment)") from None

    m = GPTQModel.load(str(folder), device="cpu", backend=BACKEND.GPTQ_TORCH, dtype=torch.float16)
    return _Torch(m.model)


def plan(art) -> tuple[str, Any, Any]:
    """(runtime name, loader -> runner, reference loader -> runner or None)."""
    from ..io.quantized_formats import load_dequantized_model, quant_format

    folder = art.path if art.path.is_dir() else art.path.parent
    if art.format == "gguf":
        def ref():
            import tempfile

            from ..io.artifact import open_artifact
            from ..io.convert import gguf_to_hf

            with tempfile.TemporaryDirectory(prefix="slmctl-check-") as td:
                out = gguf_to_hf(art.path, Path(td) / "hf", force=False)
                return _Torch(_from_pretrained(open_artifact(out)))
        return "llama.cpp (llama-cpp-python)", lambda: _Llama(art.path), ref
    if art.format == "onnx":
        src = _recorded_hf_input(art)
        ref = (lambda: _Torch(_from_pretrained(src))) if src is not None else None
        from ..io.onnx import model_file

        return "onnxruntime", lambda: _Ort(model_file(art.path)), ref
    fmt = quant_format(art.config)
    if fmt == "compressed-tensors":
        return ("transformers + compressed-tensors", lambda: _Torch(_from_pretrained(art)),
                lambda: _Torch(load_dequantized_model(art)))
    if fmt == "gptq":
        return ("GPTQModel (torch kernel)", lambda: _gptqmodel(folder),
                lambda: _Torch(load_dequantized_model(art, dtype=_f16())))
    return "transformers", lambda: _Torch(_from_pretrained(art)), None


def _f16():
    import torch

    return torch.float16


def _from_pretrained(art):
    from ..hf import load_model

    if (art.config or {}).get("slmctl_per_layer"):
        raise RuntimeError("config.json has per-layer widths (slmctl_per_layer), which transformers cannot build; "
                           "export to GGUF (llama.cpp's deci architecture) to run it")
    return load_model(art.path)


def _recorded_hf_input(art):
    """The float HF folder an ONNX model was exported from (through any quantise steps), when its
    provenance names it and it still exists."""
    from ..io.artifact import open_artifact

    todo = [art.provenance()]
    while todo:
        rec = todo.pop()
        for inp in (rec or {}).get("inputs", []):
            p = Path(str(inp.get("path") or ""))
            if p.is_dir() and (p / "config.json").is_file():
                try:
                    a = open_artifact(p)
                except Exception:  # noqa: BLE001 - a folder that no longer opens is no reference
                    continue
                if a.format == "hf" and not (a.config or {}).get("quantization_config"):
                    return a
            todo.append(inp.get("provenance"))
    return None


def check(art, *, tokens: int = 8, log=None) -> dict[str, Any]:
    """Load, run and compare ``art`` in its runtime; {"ok", "runtime", "load", "run", "logits"}."""
    import numpy as np

    runtime, load, ref_load = plan(art)
    if log:
        log(f"check: loading {art.path.name} in {runtime}")
    res: dict[str, Any] = {"runtime": runtime}
    res["load"], runner = _stage(load)
    res["run"] = {"ok": False, "error": "not loaded"}
    res["logits"] = None
    if runner is not None:
        ids = _prompt_ids(art, runner)
        res["prompt_tokens"] = len(ids)
        res["run"], gen = _stage(lambda: runner.generate(ids, tokens))
        if gen is not None:
            res["run"]["generated"] = gen
            stage, got = _stage(lambda: runner.logits(ids))
            if not stage["ok"]:
                res["run"] = stage
            elif ref_load is not None:
                ref_stage, ref = _stage(ref_load)
                if ref_stage["ok"]:
                    want = ref.logits(ids)
                    n = min(want.shape[-1], got.shape[-1])
                    got_, want_ = got[:, :n], want[:, :n]
                    diff = float(np.abs(got_ - want_).max())
                    scale = float(np.abs(want_).max()) or 1.0
                    top1 = float((got_.argmax(-1) == want_.argmax(-1)).mean() * 100)
                    exact = runtime.startswith(("transformers", "GPTQModel"))
                    tol = EXACT_TOL * max(1.0, scale) * (10 if runtime.startswith("GPTQModel") else 1)
                    ok = diff <= tol if exact else top1 >= TOP1_MIN
                    crit = f"max |diff| <= {tol:.3g}" if exact else f"top-1 >= {TOP1_MIN}%"
                    if _quantised_since_reference(art, runtime):
                        # the reference is the float model the quantiser started from: the difference is the
                        # quantisation error, reported, not a runtime disagreement
                        ok, crit = None, "reported only: the reference is the unquantised model"
                    res["logits"] = {"ok": ok, "reference": _ref_name(runtime), "max_abs_diff": diff,
                                     "logit_scale": scale, "top1_agreement_pct": top1, "criterion": crit}
                else:
                    res["logits"] = {"ok": None, "reference": _ref_name(runtime),
                                     "error": f"reference not available: {ref_stage['error']}"}
    res["ok"] = bool(res["load"]["ok"] and res["run"]["ok"] and (res["logits"] or {}).get("ok") is not False)
    return res


def _quantised_since_reference(art, runtime: str) -> bool:
    """An ONNX model quantised after its export: compared with the float HF folder it came from."""
    return runtime == "onnxruntime" and (art.provenance() or {}).get("verb") == "quantize"


def _ref_name(runtime: str) -> str:
    if runtime.startswith("llama.cpp"):
        return "transformers' dequantised import of the GGUF"
    if runtime == "onnxruntime":
        return "the HF folder it was exported from"
    return "slmctl's dequantised model"


def _prompt_ids(art, runner) -> list[int]:
    if isinstance(runner, _Llama):
        return runner.tokenize(PROMPT)
    from .backends import load_tokenizer

    try:
        tok = load_tokenizer(art)
        ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
        if ids:
            return list(ids)
    except Exception:  # noqa: BLE001 - a folder without a tokenizer still runs on fixed ids
        pass
    return [1, 5, 17, 42, 7, 99, 3, 11]


def render(res: dict[str, Any]) -> str:
    def line(name, st):
        if st is None:
            return f"{name:<8} no reference"
        if not st.get("ok") and st.get("ok") is not None:
            return f"{name:<8} FAILED  {st.get('error', '')}".rstrip()
        return f"{name:<8} ok"

    rows = [f"runtime  {res['runtime']}", line("load", res["load"]), line("run", res["run"])]
    if res["run"].get("generated") is not None:
        rows[-1] += f"  ({len(res['run']['generated'])} tokens generated from a {res.get('prompt_tokens')}-token prompt)"
    lg = res.get("logits")
    if lg is None:
        rows.append("logits   not compared (" + ("no reference for this format)" if res["run"].get("ok")
                                                  else "the runtime did not run)"))
    elif "max_abs_diff" in lg:
        verdict = {True: "ok", False: "DISAGREE", None: "--"}[lg["ok"]]
        rows.append(f"logits   {verdict}  vs {lg['reference']}: max |diff| "
                    f"{lg['max_abs_diff']:.3g} (scale {lg['logit_scale']:.3g}), top-1 agreement "
                    f"{lg['top1_agreement_pct']:.1f}% ({lg['criterion']})")
    else:
        rows.append(f"logits   {lg['error']}")
    return "\n".join(rows)
