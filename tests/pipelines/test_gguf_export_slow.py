"""The real sample (SmolLM2-135M): GGUF perplexity against the HF folder, k-quants with slmctl's imatrix,
and a synthetic 2 GB model exported with memory near its largest tensor. ``make test-slow`` runs these."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp")

WINDOWS = int(os.environ.get("SLMCTL_TEST_WINDOWS", "8"))


@pytest.fixture(scope="module")
def sample_ppl():
    from slmctl import api

    return api.evaluate("sample:smollm2-135m", windows=WINDOWS)["ppl"]


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf_sample")


def _ppl(path) -> float:
    from slmctl import api

    return api.evaluate(str(path), windows=WINDOWS)["ppl"]


@pytest.mark.parametrize("outtype,tol", [("f16", 0.001), ("q8_0", 0.005)])
def test_sample_gguf_perplexity_matches_hf(outtype, tol, sample_ppl, outdir):
    from slmctl import api

    out = api.export("sample:smollm2-135m", outdir / f"s-{outtype}.gguf", "gguf", outtype=outtype)
    ppl = _ppl(out)
    assert abs(ppl / sample_ppl - 1) <= tol, f"{outtype}: {ppl:.4f} vs HF {sample_ppl:.4f}"


def test_sample_q4_k_m_with_imatrix_no_worse(outdir):
    from slmctl import api

    plain = api.export("sample:smollm2-135m", outdir / "q4km.gguf", "gguf", outtype="q4_k_m")
    imat = api.export("sample:smollm2-135m", outdir / "q4km-im.gguf", "gguf", outtype="q4_k_m",
                      data="sample:shakespeare", imatrix=str(outdir / "smol.imatrix"))
    p0, p1 = _ppl(plain), _ppl(imat)
    assert (outdir / "smol.imatrix").is_file()
    assert p1 <= p0 * 1.001, f"imatrix {p1:.4f} vs plain {p0:.4f}"


SYNTH = """
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
d = Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True)
import conftest  # found through PYTHONPATH (tests/)
conftest._tokenizer(d)
H, L, F, V = 2048, 8, 8192, 320
cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=H, num_hidden_layers=L,
           num_attention_heads=16, num_key_value_heads=16, intermediate_size=F, vocab_size=V,
           max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
(d / "config.json").write_text(json.dumps(cfg))
for i in range(L):  # one shard per layer: each about 268 MB of fp32
    g = torch.Generator().manual_seed(i)
    p = f"model.layers.{i}."
    t = {p + "input_layernorm.weight": torch.ones(H), p + "post_attention_layernorm.weight": torch.ones(H)}
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        t[p + f"self_attn.{n}.weight"] = torch.randn(H, H, generator=g) * 0.02
    t[p + "mlp.gate_proj.weight"] = torch.randn(F, H, generator=g) * 0.02
    t[p + "mlp.up_proj.weight"] = torch.randn(F, H, generator=g) * 0.02
    t[p + "mlp.down_proj.weight"] = torch.randn(H, F, generator=g) * 0.02
    save_file(t, str(d / f"model-{i:05d}.safetensors"))
save_file({"model.embed_tokens.weight": torch.randn(V, H) * 0.02, "model.norm.weight": torch.ones(H),
           "lm_head.weight": torch.randn(V, H) * 0.02}, str(d / "model-head.safetensors"))
"""


@pytest.mark.skipif(not Path("/usr/bin/time").is_file(), reason="needs GNU time for the child's peak RSS")
def test_streaming_2gb_model_peak_memory(tmp_path):
    """A ~2.2 GB fp32 model exports to q8_0 with peak RSS far below the model size (near its largest tensor)."""
    src = tmp_path / "synth"
    subprocess.run([sys.executable, "-c", SYNTH, str(src)], check=True, timeout=900,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    assert size > 2e9
    out = tmp_path / "synth.gguf"
    rss = tmp_path / "rss.txt"
    # GNU time starts the child: a child forked from pytest would report pytest's RSS as its own peak
    r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss), sys.executable, "-m", "slmctl", "export",
                        str(src), "--format", "gguf", "--outtype", "q8_0", "-o", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr
    peak = int(rss.read_text().split()[-1]) * 1024
    largest = 8192 * 2048 * 4
    print(json.dumps({"model_bytes": size, "peak_rss": peak, "largest_tensor": largest}))
    assert out.stat().st_size > size / 4  # q8_0 is about 1/3.8 of fp32
    assert peak < 0.25 * size, f"peak RSS {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB model"
