"""slmctl-openvino: an OpenVINO target for slmctl (a plugin in the entry-point group ``slmctl.targets``).

- ``export``: a transformers model (HF folder) or an ONNX file -> OpenVINO IR (``openvino_model.xml``
  + ``.bin``, with config.json beside it);
- ``load``: exports to IR in a temporary folder, reads the IR back and compiles it for the OpenVINO CPU
  plugin, so what is profiled is exactly what ``export`` writes.

The graph is ``input_ids -> logits`` without a KV cache: each decode step re-runs the sequence, and the
profile says so (``kv_cache: false``). A stateful export with the cache is the next step (optimum-intel
does it with its own patching of each architecture).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from slmctl.errors import InputError, UnsupportedError
from slmctl.targets import Session, Target, hookimpl

__version__ = "0.1.0"
IR_NAME = "openvino_model.xml"


class OpenVINOSession(Session):
    kv_cache = False

    def __init__(self, xml: Path, config: dict | None, device: str = "CPU"):
        import openvino as ov

        core = ov.Core()
        # the IR's own precision: OpenVINO's CPU plugin otherwise computes in bf16 on CPUs that have it
        # (AVX512-BF16, AMX), which moves fp32 logits by about 1% and times a different computation;
        # SLMCTL_OPENVINO_PRECISION=bf16 (or f16) asks for the faster one
        precision = os.environ.get("SLMCTL_OPENVINO_PRECISION", "f32").lower()
        if precision not in ("f32", "bf16", "f16"):
            raise UnsupportedError(f"SLMCTL_OPENVINO_PRECISION={precision!r} is not an OpenVINO inference precision",
                                   hint="use f32, bf16 or f16")
        props = {"INFERENCE_PRECISION_HINT": precision}
        n = os.environ.get("SLMCTL_THREADS")
        if n:
            props["INFERENCE_NUM_THREADS"] = int(n)
        model = core.read_model(str(xml))
        self.compiled = core.compile_model(model, device, props)
        self.request = self.compiled.create_infer_request()
        self.device = device.lower()
        cfg = config or {}
        self.max_tokens = cfg.get("max_position_embeddings") or cfg.get("n_positions")
        out_shape = self.compiled.output(0).get_partial_shape()
        last = out_shape[out_shape.rank.get_length() - 1]
        self.vocab_size = int(last.get_length()) if last.is_static else int(cfg.get("vocab_size", 0))
        # bytes of the weights as the IR stores them (every weight is read each step without a cache too)
        self.weight_bytes = xml.with_suffix(".bin").stat().st_size
        self.parameters = sum(int(np.prod(op.get_output_shape(0))) for op in model.get_ops()
                              if op.get_type_name() == "Constant" and op.get_output_element_type(0).is_real())

    def _next(self, ids: np.ndarray) -> np.ndarray:
        res = self.request.infer({0: ids})
        logits = res[self.compiled.output(0)]
        return logits[:, -1].argmax(-1).astype(np.int64)

    def prefill(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        return {"ids": ids, "next": self._next(ids)}

    def decode_step(self, state):
        ids = np.concatenate([state["ids"], state["next"][:, None]], axis=1)
        return {"ids": ids, "next": self._next(ids)}

    def close(self):
        self.request = None
        self.compiled = None


class OpenVINOTarget(Target):
    """OpenVINO runtime on the CPU (IR converted from the transformers model or from ONNX)."""

    name = "openvino"
    formats = ("hf", "onnx")
    exports = "openvino-ir"

    def available(self):
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "the openvino package is not installed"
        return None

    def devices(self):
        import openvino as ov

        return [d.lower() for d in ov.Core().available_devices]

    def export(self, artifact, out: Path, *, force: bool = False, log=lambda m: None, compress_to_fp16: bool = False) -> Path:
        """Write OpenVINO IR (openvino_model.xml/.bin) and the model's config/tokenizer files into folder ``out``."""
        import openvino as ov

        from slmctl.io.atomic import atomic_path

        ov_model = _convert(artifact, log)
        src = artifact.path if artifact.path.is_dir() else artifact.path.parent
        with atomic_path(out, force=force, is_dir=True) as tmp:
            ov.save_model(ov_model, str(tmp / IR_NAME), compress_to_fp16=compress_to_fp16)
            for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                         "special_tokens_map.json"):
                if (src / name).is_file():
                    shutil.copyfile(src / name, tmp / name)
            (tmp / "slmctl.json").write_text(json.dumps(
                {"verb": "export", "format": "openvino-ir", "source": str(artifact.path),
                 "plugin": f"slmctl-openvino {__version__}", "openvino": ov.__version__}, indent=2) + "\n")
        return out

    def load(self, artifact, *, device=None, log=lambda m: None) -> Session:
        work = Path(tempfile.mkdtemp(prefix="slmctl-openvino-"))
        try:
            out = self.export(artifact, work / "ir", log=log)
            return OpenVINOSession(out / IR_NAME, artifact.config, (device or "CPU").upper())
        finally:
            shutil.rmtree(work, ignore_errors=True)  # the compiled model no longer needs the files


def _convert(artifact, log):
    import openvino as ov

    if artifact.format == "onnx":
        from slmctl.io.onnx import model_file

        return ov.convert_model(str(model_file(artifact.path)))
    if artifact.format != "hf":
        raise UnsupportedError(f"{artifact.path}: the openvino target converts HF folders and ONNX, not "
                               f"{artifact.format}", hint="slmctl export MODEL --format hf -o DIR first")
    import torch
    from transformers import AutoModelForCausalLM

    from slmctl.hf import quiet_transformers

    quiet_transformers()
    if artifact.config is None:
        raise InputError(f"{artifact.path}: no config.json")
    model = AutoModelForCausalLM.from_pretrained(str(artifact.path), dtype=torch.float32).eval()

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            # an explicit mask keeps transformers off its packed-sequence check (aten::diff has no OV rule)
            return self.m(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits

    log(f"converting {artifact.path} to OpenVINO IR")
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return ov.convert_model(Logits(model), example_input=torch.ones(1, 8, dtype=torch.long),
                                input=[ov.PartialShape([-1, -1])])


@hookimpl
def register_targets(register):
    register(OpenVINOTarget)
