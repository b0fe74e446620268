"""The onnxruntime target: ONNX on the CPU execution provider (CUDA/others when installed).

It runs decoder graphs with a KV cache (inputs ``past_key_values.N.key|value``, outputs ``present.N.*``,
as optimum and torch.onnx exports name them) and plain ``input_ids -> logits`` graphs, where each decode
step re-runs the sequence (the report says so).
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import UnsupportedError
from .target import Log, Session, Target, _nolog

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
       "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def _present_name(past: str) -> str:
    return past.replace("past_key_values", "present", 1) if past.startswith("past_key_values") else \
        past.replace("past", "present", 1)


class OrtSession(Session):
    def __init__(self, artifact, providers: list[str]):
        import onnxruntime as ort

        from ..io.onnx import model_file

        so = ort.SessionOptions()
        n = os.environ.get("SLMCTL_THREADS")
        if n:
            so.intra_op_num_threads = int(n)
        so.log_severity_level = 3
        f = model_file(artifact.path)
        self.sess = ort.InferenceSession(str(f), sess_options=so, providers=providers)
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"
        self.inputs = {i.name: i for i in self.sess.get_inputs()}
        self.outputs = [o.name for o in self.sess.get_outputs()]
        if "input_ids" not in self.inputs:
            raise UnsupportedError(f"{f}: the graph has no input_ids input (inputs: {', '.join(self.inputs)})",
                                   hint="profile a decoder exported with slmctl export --format onnx")
        self.logits_name = "logits" if "logits" in self.outputs else self.outputs[0]
        self.past = [n for n in self.inputs if n.startswith("past")]
        self.kv_cache = bool(self.past)
        cfg = artifact.config or {}
        self.max_tokens = cfg.get("max_position_embeddings") or cfg.get("n_positions")
        out_shape = self.sess.get_outputs()[self.outputs.index(self.logits_name)].shape
        self.vocab_size = int(out_shape[-1]) if isinstance(out_shape[-1], int) else int(cfg.get("vocab_size", 0))
        self._cfg = cfg
        tensors = artifact.tensors
        total = sum(t.nbytes for t in tensors.values())
        emb = [t for n, t in tensors.items() if n.endswith("embed_tokens.weight") or n.endswith("wte.weight")]
        untied = any("lm_head" in n for n in tensors)
        self.weight_bytes = total - emb[0].nbytes if emb and untied else total
        self.parameters = sum(t.numel for t in tensors.values())

    def _feed(self, ids: np.ndarray, past_len: int, past: dict | None) -> dict:
        b, n = ids.shape
        feed = {"input_ids": ids.astype(_NP.get(self.inputs["input_ids"].type, np.int64))}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((b, past_len + n), dtype=_NP.get(self.inputs["attention_mask"].type, np.int64))
        if "position_ids" in self.inputs:
            pos = np.arange(past_len, past_len + n, dtype=np.int64)[None].repeat(b, 0)
            feed["position_ids"] = pos
        if "use_cache_branch" in self.inputs:
            feed["use_cache_branch"] = np.array([past_len > 0])
        for name in self.past:
            if past is not None:
                feed[name] = past[_present_name(name)]
            else:
                feed[name] = self._empty(self.inputs[name], b)
        return feed

    def _empty(self, inp, batch: int) -> np.ndarray:
        cfg = self._cfg
        heads = cfg.get("num_key_value_heads") or cfg.get("num_attention_heads") or cfg.get("n_head")
        head_dim = cfg.get("head_dim") or ((cfg.get("hidden_size") or cfg.get("n_embd") or 0) // (
            cfg.get("num_attention_heads") or cfg.get("n_head") or 1))
        shape = []
        for i, d in enumerate(inp.shape):
            if isinstance(d, int):
                shape.append(d)
            elif i == 0:
                shape.append(batch)
            elif i == len(inp.shape) - 2:
                shape.append(0)  # past sequence length
            elif i == 1:
                shape.append(int(heads or 1))
            else:
                shape.append(int(head_dim or 1))
        return np.zeros(shape, dtype=_NP.get(inp.type, np.float32))

    def _run(self, feed):
        outs = self.sess.run(None, feed)
        by = dict(zip(self.outputs, outs))
        nxt = by[self.logits_name][:, -1].argmax(-1).astype(np.int64)
        return nxt, by

    def prefill(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        nxt, by = self._run(self._feed(ids, 0, None))
        if self.kv_cache:
            return {"next": nxt, "past": by, "len": ids.shape[1]}
        return {"next": nxt, "ids": ids}

    def decode_step(self, state):
        x = state["next"][:, None]
        if self.kv_cache:
            nxt, by = self._run(self._feed(x, state["len"], state["past"]))
            return {"next": nxt, "past": by, "len": state["len"] + 1}
        ids = np.concatenate([state["ids"], x], axis=1)
        nxt, _ = self._run(self._feed(ids, 0, None))
        return {"next": nxt, "ids": ids}

    def close(self):
        self.sess = None


class OnnxRuntimeTarget(Target):
    """onnxruntime: the CPU execution provider, CUDA and others when installed."""

    name = "onnxruntime"
    formats = ("onnx",)
    requires = (("onnxruntime", "onnxruntime"),)

    def devices(self):
        import onnxruntime as ort

        prov = ort.get_available_providers()
        # Azure is a remote endpoint, not a device
        return [p.removesuffix("ExecutionProvider").lower() for p in prov if p != "AzureExecutionProvider"]

    def load(self, artifact, *, device=None, log: Log = _nolog) -> Session:
        import onnxruntime as ort

        avail = ort.get_available_providers()
        if device in (None, "cpu"):
            providers = ["CPUExecutionProvider"]
        else:
            want = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
                    "openvino": "OpenVINOExecutionProvider"}.get(device, device)
            if want not in avail:
                raise UnsupportedError(f"onnxruntime has no {want} here", hint=f"available: {', '.join(avail)}")
            providers = [want, "CPUExecutionProvider"]
        return OrtSession(artifact, providers)
