"""The conformance matrix: every artifact slmctl writes, loaded by the runtime its users load it with.

One list of cases (``QUANT_CASES``, ``GGUF_CASES``, ``ONNX_CASES``) drives the tests in
tests/test_conformance.py and the table in docs/formats.md, so the page cannot claim more than the
tests check. Regenerate the page with::

    .venv/bin/python tests/conformance.py > docs/formats.md

(``test_formats_doc_is_generated_from_the_matrix`` fails when it is stale.)

The tiny shapes are one decoder layer with the widths of real small models and the shared ~320-token
tokenizer of conftest.py, so each builds in well under a second:
``576`` is SmolLM2-135M's hidden width (FFN 1536), ``896`` Qwen2.5-0.5B's (a qwen2 with q/k/v biases),
``1536`` Qwen2-1.5B's, ``pruned`` the 576 model with its FFN cut to 1000 channels (what a width prune
leaves: not a multiple of 32), ``per-layer`` two layers whose FFNs differ (``slmctl_per_layer``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SHAPES = {
    "576": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                num_key_value_heads=3, tie_word_embeddings=True),
    "896": dict(model_type="qwen2", hidden_size=896, intermediate_size=1152, num_attention_heads=14,
                num_key_value_heads=2, tie_word_embeddings=True),
    "1536": dict(model_type="llama", hidden_size=1536, intermediate_size=640, num_attention_heads=12,
                 num_key_value_heads=2, tie_word_embeddings=False),
    "pruned": dict(model_type="llama", hidden_size=576, intermediate_size=1000, num_attention_heads=9,
                   num_key_value_heads=3, tie_word_embeddings=True),
}
PER_LAYER = {"intermediate_size": [1000, 1536]}  # the "per-layer" shape: 576 wide, two layers


def build_shape(name: str, folder: Path, seed: int = 0) -> Path:
    """A random model of one of SHAPES (``per-layer``: two 576 layers, FFNs 1000 and 1536)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from conftest import _tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(folder)
    # a pad token inside the vocabulary, as real tokenizers have: GPTQModel's tokenizer fix-up otherwise
    # appends one past the embedding rows of a qwen2 model and fails to build it
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.save_pretrained(folder)
    spec = dict(SHAPES["576" if name == "per-layer" else name])
    model_type = spec.pop("model_type")
    layers = 2 if name == "per-layer" else 1
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), bos_token_id=1, eos_token_id=2,
                               pad_token_id=tok.pad_token_id,
                               num_hidden_layers=layers, max_position_embeddings=128, rms_norm_eps=1e-5, **spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # scaled so logits are peaked, as a trained model's are, and top-1 is meaningful
        for n, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0, 1.0 / p.shape[1] ** 0.5 * (8 if "embed" in n or "lm_head" in n else 1))
            else:
                p.add_(torch.randn_like(p) * 0.05)
    if name != "per-layer":
        model.save_pretrained(folder)
        return folder
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    keep = PER_LAYER["intermediate_size"][0]
    p0 = "model.layers.0.mlp."
    for k in ("gate_proj.weight", "up_proj.weight"):
        sd[p0 + k] = sd[p0 + k][:keep].contiguous()
    sd[p0 + "down_proj.weight"] = sd[p0 + "down_proj.weight"][:, :keep].contiguous()
    model.config.save_pretrained(folder)
    c = json.loads((folder / "config.json").read_text())
    c["slmctl_per_layer"] = PER_LAYER
    (folder / "config.json").write_text(json.dumps(c, indent=2))
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


# ---------------------------------------------------------------- quantised safetensors
@dataclass(frozen=True)
class Q:
    """slmctl quantize SHAPE --format FMT -b BITS -g GROUP [--asym] [EXTRA]: loads, or is refused."""

    shape: str
    fmt: str
    bits: int
    group: int
    sym: bool = True
    extra: tuple = ()
    refuse: str | None = None  # a fragment of the refusal message; None: the runtime must load it
    fast: bool = True  # in the default suite (the slow suite runs every case)

    @property
    def id(self) -> str:
        g = "row" if self.group == -1 else self.group
        x = "-".join(e.strip("-") for e in self.extra if e.startswith("--"))
        return f"{self.fmt}-{self.shape}-w{self.bits}g{g}{'' if self.sym else 'a'}{'-' + x if x else ''}"

    def args(self) -> list[str]:
        return ["--format", self.fmt, "-b", str(self.bits), "-g", str(self.group),
                *([] if self.sym else ["--asym"]), *self.extra]


GPTQ_ACT = ("--method", "gptq", "--act-order")  # GPTQ with act-order (static groups: columns keep their group)
GPTQ_DESC = ("--method", "gptq", "--act-order", "--no-static-groups")  # act-order groups (g_idx permuted)

QUANT_CASES = [
    # compressed-tensors -> transformers + compressed-tensors: load, generate, logits == slmctl's dequantised model
    Q("576", "compressed-tensors", 4, 128, refuse="input width divisible by the group size"),  # the case
    Q("576", "compressed-tensors", 4, 64),
    Q("576", "compressed-tensors", 4, 128, extra=("--skip-incompatible",)),
    Q("576", "compressed-tensors", 4, 64, sym=False, refuse="asymmetric"),
    Q("576", "compressed-tensors", 4, 64, extra=GPTQ_ACT),
    Q("576", "compressed-tensors", 4, 64, extra=GPTQ_DESC, refuse="act-order needs static groups"),
    Q("576", "compressed-tensors", 8, 32, fast=False),
    Q("576", "compressed-tensors", 2, -1, fast=False),
    Q("896", "compressed-tensors", 2, 128),
    Q("896", "compressed-tensors", 3, 64, fast=False),
    Q("896", "compressed-tensors", 8, -1, fast=False),
    Q("1536", "compressed-tensors", 3, 32),
    Q("1536", "compressed-tensors", 8, -1, fast=False),
    Q("1536", "compressed-tensors", 4, 128, fast=False),
    Q("pruned", "compressed-tensors", 4, -1),
    Q("pruned", "compressed-tensors", 4, 32, refuse="input width divisible by the group size"),
    Q("pruned", "compressed-tensors", 3, 64, extra=("--skip-incompatible",), fast=False),
    Q("per-layer", "compressed-tensors", 4, 64, refuse="per-layer widths"),
    # GPTQ layout -> GPTQModel (peer test, tests/peers/test_quantize_gptqmodel.py); here: accepted or refused, and
    # slmctl's own reader round-trips it
    Q("576", "gptq", 4, 128),  # GPTQModel pads groups the width does not divide
    Q("576", "gptq", 4, 96, refuse="not one GPTQModel's kernels take"),
    Q("576", "gptq", 4, 128, sym=False, extra=GPTQ_DESC, fast=False),
    Q("576", "gptq", 8, -1, fast=False),
    Q("576", "gptq", 3, 64, sym=False, fast=False),
    Q("896", "gptq", 2, 64, sym=False, fast=False),
    Q("1536", "gptq", 3, 128, fast=False),
    Q("pruned", "gptq", 3, 128, refuse="partial word"),
    Q("pruned", "gptq", 3, 128, extra=("--skip-incompatible",)),
    Q("pruned", "gptq", 2, 64, refuse="partial word", fast=False),
    Q("pruned", "gptq", 4, 32, fast=False),
    Q("per-layer", "gptq", 4, 128, refuse="per-layer widths"),
]


# ---------------------------------------------------------------- GGUF
@dataclass(frozen=True)
class G:
    """slmctl export SHAPE --format gguf --outtype TYPE (or SOURCE quantised first): llama.cpp loads it,
    and its logits match transformers' dequantised import of the same file (per-layer: slmctl's per-layer
    model with the GGUF's weights dequantised by gguf-py)."""

    shape: str
    outtype: str
    fast: bool = True
    source: tuple = ()  # quantise first with these `slmctl quantize` options, then export

    @property
    def id(self) -> str:
        return f"gguf-{self.shape}-{self.outtype}" + ("-from-" + "".join(self.source).replace("-", "") if self.source else "")


GGUF_CASES = [
    G("576", "f16", fast=False), G("576", "q4_0"), G("576", "q4_k_m"), G("576", "q8_0", fast=False),
    G("576", "q2_k", fast=False), G("576", "q3_k_m", fast=False), G("576", "q5_k_m", fast=False),
    G("576", "q6_k", fast=False), G("576", "q4_1", fast=False), G("576", "q5_0", fast=False),
    G("576", "q5_1", fast=False), G("576", "bf16", fast=False), G("576", "f32", fast=False),
    G("576", "q3_k_s", fast=False), G("576", "q3_k_l", fast=False), G("576", "q4_k_s", fast=False),
    G("576", "q5_k_s", fast=False),
    G("896", "q8_0", fast=False), G("896", "q6_k"), G("896", "q4_k_m", fast=False), G("896", "q5_1", fast=False),
    G("1536", "q5_0"), G("1536", "q3_k_m", fast=False), G("1536", "q4_k_m", fast=False), G("1536", "q4_1", fast=False),
    G("pruned", "q4_0"), G("pruned", "q4_k_m", fast=False), G("pruned", "q8_0", fast=False),
    G("per-layer", "q8_0"), G("per-layer", "f16", fast=False), G("per-layer", "q4_0", fast=False),
    G("576", "auto", source=("-g", "64", "--format", "compressed-tensors")),
    G("576", "auto", source=("-g", "128", "--format", "gptq"), fast=False),
]


# ---------------------------------------------------------------- ONNX
@dataclass(frozen=True)
class O:
    """slmctl export SHAPE --format onnx, then slmctl quantize --type TYPE: onnxruntime runs it with its
    KV cache, and its logits follow the float HF model."""

    shape: str
    qtype: str  # fp32 (the export), int8, int4
    fast: bool = True

    @property
    def id(self) -> str:
        return f"onnx-{self.shape}-{self.qtype}"


# the ONNX export itself takes most of a minute on the shared 2-core machine: slow only (tests/pipelines/test_onnx.py
# exports and quantises the tiny llama in the default suite)
ONNX_CASES = [O("576", "fp32", fast=False), O("576", "int8", fast=False), O("576", "int4", fast=False),
              O("896", "int4", fast=False), O("1536", "int8", fast=False)]
# the HF folder converted by the OpenVINO plugin (plugins/slmctl-openvino, its `export` then its CPU session);
# the plugin's own default-suite test (tests/targets/test_targets_openvino.py) installs it and profiles the tiny llama
OPENVINO_CASES = [O("576", "fp32 IR", fast=False), O("896", "fp32 IR", fast=False)]


# ---------------------------------------------------------------- the page
RUNTIME = {"compressed-tensors": "transformers + compressed-tensors", "gptq": "GPTQModel (torch kernel, CPU)",
           "gguf": "llama.cpp (llama-cpp-python)", "onnx": "onnxruntime (CPU)",
           "openvino": "OpenVINO CPU plugin, through slmctl-openvino"}
VERIFIED = {
    "compressed-tensors": "`from_pretrained` + `generate`; logits equal slmctl's dequantised model (max diff <= 1e-3)",
    "gptq": "`GPTQModel.load` (peer test, `make test-peers`); logits equal slmctl's dequantised model "
            "(<= 1e-3); default suite: slmctl reads its own output back",
    "gguf": "`Llama` loads and evaluates; logits agree with transformers' dequantised import of the same "
            "file (per-layer `deci`: with slmctl's per-layer model holding gguf-py's dequantised weights)",
    "onnx": "`InferenceSession` prefill + KV-cache decode; logits follow the float model; onnxruntime-genai "
            "(from `genai_config.json`) generates the same greedy tokens",
    "openvino": "the plugin's `export` (IR) and `load` (compiled CPU model) run; logits equal the float model",
}


def _combo(c) -> str:
    if isinstance(c, Q):
        g = "per-row" if c.group == -1 else f"g{c.group}"
        extra = " ".join(e for e in c.extra if e not in ("--method",))
        return f"`{c.bits}-bit {g}{'' if c.sym else ' asym'}{' ' + extra if extra else ''}`"
    if isinstance(c, G):
        return f"`{c.outtype}`" + (f" (from `quantize {' '.join(c.source)}`)" if c.source else "")
    return f"`{c.qtype}`"


def _cell(cases) -> str:
    return ", ".join(_combo(c) + ("" if c.fast else "\\*") + (f" ({c.refuse})" if getattr(c, "refuse", None) else "")
                     for c in cases) or "-"


def render_doc() -> str:
    lines = [
        "# Formats and the runtimes that load them",
        "",
        "<!-- generated by tests/conformance.py from the conformance matrix; do not edit by hand:",
        "     .venv/bin/python tests/conformance.py > docs/formats.md -->",
        "",
        "Every format slmctl writes is loaded, in the test suite (tests/test_conformance.py), by the runtime",
        "its users load it with. A combination that runtime cannot load is refused before any work (exit 2,",
        "naming the runtime, the reason, a tensor and its width, and the nearest combination that loads), or,",
        "with `slmctl quantize --skip-incompatible`, the linears it cannot load are left unquantised (float)",
        "and listed in the config (`ignore` for compressed-tensors, negative `dynamic` rules for GPTQ).",
        "`slmctl inspect --check ARTIFACT` runs the same load / generate / logits check on any artifact.",
        "",
        "Shapes: one decoder layer with the widths of real models: `576` (SmolLM2-135M, FFN 1536),",
        "`896` (Qwen2.5-0.5B, FFN 1152 here), `1536` (Qwen2-1.5B, FFN 640 here), `pruned` (576 with FFN",
        "1000, as a width prune leaves it), `per-layer` (two layers, FFN 1000 and 1536, `slmctl_per_layer`).",
        "Combinations marked \\* run in `make test-slow` only; the others in the default suite too.",
        "",
        "| format | runtime | what is verified | shape | loads | refused (exit 2) |",
        "|---|---|---|---|---|---|",
    ]
    shapes = ["576", "896", "1536", "pruned", "per-layer"]
    for fmt in ("compressed-tensors", "gptq"):
        for sh in shapes:
            cs = [c for c in QUANT_CASES if c.fmt == fmt and c.shape == sh]
            if cs:
                lines.append(f"| {fmt} | {RUNTIME[fmt]} | {VERIFIED[fmt]} | {sh} | "
                             f"{_cell([c for c in cs if not c.refuse])} | "
                             f"{_cell([c for c in cs if c.refuse])} |")
    for fmt, cases in (("gguf", GGUF_CASES), ("onnx", ONNX_CASES), ("openvino", OPENVINO_CASES)):
        for sh in shapes:
            cs = [c for c in cases if c.shape == sh]
            if cs:
                lines.append(f"| {fmt} | {RUNTIME[fmt]} | {VERIFIED[fmt]} | {sh} | {_cell(cs)} | - |")
    lines += [
        "",
        "## The rules, from the runtimes' code",
        "",
        "- **compressed-tensors** (transformers 5 with compressed-tensors 0.20): a `group` grid dequantises",
        "  through `_process_group`, which raises *tensor column shape must be divisible by the given",
        "  group_size* unless every quantised linear's input width is a multiple of the group size. The",
        "  sample's 576-wide projections therefore take `-g 64`, `-g 32` or `-g -1`, not the default 128.",
        "  Asymmetric pack-quantized checkpoints do not load (the zero points are built unpacked).",
        "- **GPTQ layout** (GPTQModel 7.6): group sizes -1, 16, 32, 64, 128, 256, 512, 1024 or the input",
        "  width; a width the group does not divide is padded by the kernel and loads. slmctl packs whole",
        "  int32 words, so `in x bits` and `out x bits` must be multiples of 32 (3-bit: widths divisible by 32).",
        "- **Per-layer widths** (`slmctl_per_layer`): neither transformers nor GPTQModel builds them; GGUF",
        "  (llama.cpp's `deci` architecture) runs them.",
        "- **GGUF**: rows that do not fill whole 32-blocks stay f16 in the legacy types; llama.cpp's own",
        "  quantiser picks its fallback for k-quants on rows not divisible by 256 (e.g. q4_k -> q5_0).",
        "- **ONNX int4** (`MatMulNBits`, block 32): onnxruntime's quantiser pads the last block itself.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    sys.stdout.write(render_doc())
