#!/usr/bin/env bash
# The release chain of examples/release/Makefile as a plain shell script, for CI jobs that do not
# use Make. Each slmctl call prints only its output path on stdout, so steps chain with $(...).
# The script stops at the first failure and exits with slmctl's code: 3 when a quality gate fails.
set -euo pipefail

BASE=${BASE:-sample:smollm2-135m}
DATA=${DATA:-$(cd "$(dirname "$0")/../release/data" && pwd)}
OUT=${OUT:-build-ci}
PRUNE_LAYERS=${PRUNE_LAYERS:-4}
DISTILL_STEPS=${DISTILL_STEPS:-40}
SEQ_LEN=${SEQ_LEN:-256}
EVAL_WINDOWS=${EVAL_WINDOWS:-8}
MAX_PPL_INCREASE=${MAX_PPL_INCREASE:-150}
MIN_TOP1=${MIN_TOP1:-50}
mkdir -p "$OUT"

base=$(slmctl export "$BASE" --format hf -o "$OUT/base" --force -q)
pruned=$(slmctl prune "$base" --method depth --layers "$PRUNE_LAYERS" --data "$DATA/calib.txt" \
    --eval-data "$DATA/eval.txt" --eval-windows 2 -o "$OUT/pruned" --force -q)
gate() {
    # exit 3 here fails the job: the artifact lost more quality than the release allows.
    # Each artifact is gated as soon as it exists, so a bad step fails fast, before the next exports.
    # The report is kept for the model card.
    slmctl eval "$1" --reference "$base" --data "$DATA/eval.txt" --ctx "$SEQ_LEN" --windows "$EVAL_WINDOWS" \
        --max-ppl-increase "$MAX_PPL_INCREASE" --min-top1 "$MIN_TOP1" --json -q > "$OUT/eval-$2.json"
}

student=$(slmctl distill --teacher "$base" --student "$pruned" --data "$DATA/train.txt" --steps "$DISTILL_STEPS" \
    --seq-len "$SEQ_LEN" --no-report -o "$OUT/distilled" --force -q)
gate "$student" distilled
gguf=$(slmctl export "$student" --format gguf --outtype q4_k_m --data "$DATA/calib.txt" \
    --imatrix "$OUT/imatrix.gguf" -o "$OUT/model-Q4_K_M.gguf" --force -q)
gate "$gguf" gguf
onnx=$(slmctl quantize "$(slmctl export "$student" --format onnx -o "$OUT/onnx" --force -q)" --bits 4 --no-report \
    -o "$OUT/onnx-int4" --force -q)
gate "$onnx" onnx

slmctl inspect "$gguf" --verify >&2
# the model card (README.md) from the provenance and the eval reports; --check exits 3 if it does not match
slmctl card "$student" "$gguf" "$onnx" --eval "$OUT/eval-distilled.json" --eval "$OUT/eval-gguf.json" \
    --eval "$OUT/eval-onnx.json" -o "$OUT/README.md" --force -q >&2
slmctl card --check "$OUT/README.md" "$student" "$gguf" "$onnx" -q >&2
echo "$gguf"
