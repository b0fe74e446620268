"""onnxruntime eval backend, and the small decoder runner that export verification shares with it.

The graph layout is the one Optimum's ORTModelForCausalLM and onnxruntime-genai use: inputs
``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.N.key|value``; outputs ``logits``,
``present.N.key|value``. A graph without past inputs (no KV cache) runs too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import InputError, UnsupportedError
from .backends import BACKENDS, Backend

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
       "tensor(bfloat16)": np.float32}
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


def session(model_file: Path, threads: int | None = None):
    """An onnxruntime CPU session on ``model_file``, after the external-data safety check."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UnsupportedError("running ONNX models needs onnxruntime", hint="pip install 'onnxruntime>=1.22,<1.33'") from None
    from ..io.onnx_writer import check_external_data

    check_external_data(model_file)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    threads = threads or int(os.environ.get("SLMCTL_THREADS", "0") or 0)
    if threads:
        so.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{model_file}: onnxruntime cannot load the model ({msg})",
                         hint="check that the file is a complete export (with its .data file beside it)") from None


class OrtCausalLM:
    """Run a causal-LM graph: prefill and decode steps, carrying present -> past between calls."""

    def __init__(self, model_file: Path, threads: int | None = None):
        self.file = model_file
        self.sess = session(model_file, threads)
        self.inputs = {i.name: i for i in self.sess.get_inputs()}
        self.output_names = [o.name for o in self.sess.get_outputs()]
        if "input_ids" not in self.inputs or "logits" not in self.output_names:
            raise UnsupportedError(f"{model_file}: not a causal-LM graph (needs an input_ids input and a logits output)",
                                   hint="slmctl eval runs decoder exports from `slmctl export --format onnx`")
        past = sorted(((int(m.group(1)), m.group(2)) for n in self.inputs if (m := _PAST.match(n))))
        self.layers = sorted({i for i, _ in past})
        self.past_specs = {}
        for i in self.layers:
            for kv in ("key", "value"):
                spec = self.inputs.get(f"past_key_values.{i}.{kv}")
                if spec is None:
                    raise InputError(f"{model_file}: past_key_values.{i}.{kv} is missing while other layers have it")
                self.past_specs[f"past_key_values.{i}.{kv}"] = spec
        self.vocab_size = self._vocab()

    def _vocab(self) -> int | None:
        for o in self.sess.get_outputs():
            if o.name == "logits" and o.shape and isinstance(o.shape[-1], int):
                return o.shape[-1]
        return None

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        out = {}
        for name, spec in self.past_specs.items():
            shape = list(spec.shape)
            heads, head_dim = shape[1], shape[3]
            if not isinstance(heads, int) or not isinstance(head_dim, int):
                raise InputError(f"{self.file}: {name} has no static head count / head size ({shape})")
            out[name] = np.zeros((batch, heads, 0, head_dim), dtype=_NP.get(spec.type, np.float32))
        return out

    def run(self, ids: np.ndarray, past: dict[str, np.ndarray] | None = None,
            attention_mask: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits for ``ids`` (batch, seq) after ``past`` (a dict from the previous call, or None for none),
        and the new past to feed into the next call."""
        ids = np.asarray(ids, dtype=np.int64)
        b, s = ids.shape
        if past is None and self.past_specs:
            past = self.empty_past(b)
        p = next(iter(past.values())).shape[2] if past else 0
        feed = {"input_ids": ids}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = (np.ones((b, p + s), dtype=np.int64) if attention_mask is None
                                      else np.asarray(attention_mask, dtype=np.int64))
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.broadcast_to(np.arange(p, p + s, dtype=np.int64), (b, s)).copy()
        if past:
            feed.update(past)
        outs = dict(zip(self.output_names, self.sess.run(None, feed)))
        new_past = {}
        for name in self.past_specs:
            pres = name.replace("past_key_values.", "present.")
            if pres in outs:
                new_past[name] = outs[pres]
        return outs["logits"], new_past


@BACKENDS.register("onnxruntime")
class OrtBackend(Backend):
    """onnxruntime on the CPU; feeds an empty KV cache when the graph has past inputs."""

    name = "onnxruntime"

    def __init__(self, artifact, ctx: int, trust_remote_code: bool = False):
        super().__init__(artifact, ctx)
        from ..io.onnx import model_file

        self.lm = OrtCausalLM(model_file(artifact.path))
        cfg = artifact.config or {}
        self.vocab_size = self.lm.vocab_size or cfg.get("vocab_size")
        if self.vocab_size is None:
            raise InputError(f"{artifact.path}: cannot tell the vocabulary size (no static logits width, no config.json)",
                             hint="keep config.json beside the .onnx file")

    def logits(self, ids):
        logits, _ = self.lm.run(np.asarray([ids], dtype=np.int64))
        return logits[0].astype(np.float32)
