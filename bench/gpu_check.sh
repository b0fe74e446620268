#!/usr/bin/env bash
# GPU check (issue 21): the calibration methods, eval and a short distill with --device cuda against the
# CPU's results on the sample, and the time of a 1.5B shape on the GPU.
#
#   bench/gpu_check.sh                 # both halves when torch sees a CUDA device, else the CPU half only
#   GPU_CHECK_CPU_ONLY=1 bench/gpu_check.sh   # the CPU half (what `make test-slow` runs)
#
# Per device it runs on $MODEL (default the sample, SmolLM2-135M): Wanda 50% (prune), GPTQ and AWQ w4 g128
# (quantize), the importance matrix (quantize --format gguf --type q4_k_m --method imatrix), eval, and a
# short distill (the Wanda output as student). Then it compares (compare step below):
#   Wanda: the same masks (every zero in the same place);
#   GPTQ / AWQ: perplexity of the CUDA output within 0.5% of the CPU output's (both scored on the CPU);
#   importance matrix: perplexity of the two GGUF files within 0.5% (llama.cpp scores both);
#   eval: perplexity within 0.1%; distill: final held-out KL within 5% (different kernels, same recipe).
# With a GPU it then times Wanda and GPTQ on the Qwen2.5-1.5B shape (bench/shapes.py, random weights) on
# the GPU, with the device's peak memory from the verbs' reports.
# Everything lands in $WORK (default bench/out/gpu_check): one JSON per step and summary.json; the exit
# status is 1 when a comparison fails. Sizes are small on purpose (SAMPLES, SEQ, WIN, CTX, STEPS).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SLMCTL=${SLMCTL:-.venv/bin/slmctl}
WORK=${WORK:-bench/out/gpu_check}
MODEL=${MODEL:-sample:smollm2-135m}
SAMPLES=${SAMPLES:-8}
SEQ=${SEQ:-256}
WIN=${WIN:-8}
CTX=${CTX:-256}
STEPS=${STEPS:-5}
BIG=${BIG:-qwen2.5-1.5b}

if [ "${GPU_CHECK_CPU_ONLY:-0}" = 1 ]; then
  GPU=0
else
  GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
fi
DEVICES="cpu"
[ "$GPU" = 1 ] && DEVICES="cpu cuda"
mkdir -p "$WORK"
echo "gpu_check: devices: $DEVICES; model $MODEL; $SAMPLES x $SEQ calibration tokens; eval $WIN x $CTX" >&2

# step NAME DEVICE CMD...: runs CMD (its stdout, one JSON document, goes to $WORK/DEVICE/NAME.json) and
# records the wall time in $WORK/DEVICE/NAME.seconds
step() {
  local name=$1 dev=$2
  shift 2
  mkdir -p "$WORK/$dev"
  echo "gpu_check: $dev $name" >&2
  local t0 t1
  t0=$(date +%s.%N)
  "$@" > "$WORK/$dev/$name.json"
  t1=$(date +%s.%N)
  "$PY" -c "print(round($t1 - $t0, 2))" > "$WORK/$dev/$name.seconds"
}

COMMON=(--force --json --quiet)
for dev in $DEVICES; do
  D="$WORK/$dev"
  step wanda "$dev" "$SLMCTL" prune "$MODEL" -m wanda --sparsity 0.5 --samples "$SAMPLES" --seqlen "$SEQ" \
    --eval-windows 0 --device "$dev" -o "$D/wanda" "${COMMON[@]}"
  for m in gptq awq; do
    step "$m" "$dev" "$SLMCTL" quantize "$MODEL" -m "$m" --samples "$SAMPLES" --seq-len "$SEQ" --no-report \
      --device "$dev" -o "$D/$m" "${COMMON[@]}"
    # every output scored the same way, on the CPU
    "$SLMCTL" eval "$D/$m" --ctx "$CTX" --windows "$WIN" --device cpu --json --quiet > "$D/$m-eval.json"
  done
  step imatrix "$dev" "$SLMCTL" quantize "$MODEL" --format gguf --type q4_k_m --method imatrix --data sample:mix \
    --samples "$SAMPLES" --seq-len "$SEQ" --no-report --device "$dev" -o "$D/imatrix.gguf" "${COMMON[@]}"
  if "$PY" -c "import llama_cpp" 2>/dev/null; then
    "$SLMCTL" eval "$D/imatrix.gguf" --ctx "$CTX" --windows "$WIN" --json --quiet > "$D/imatrix-eval.json"
  fi
  step eval "$dev" "$SLMCTL" eval "$MODEL" --ctx "$CTX" --windows "$WIN" --device "$dev" "${COMMON[@]:1}"
  step distill "$dev" "$SLMCTL" distill -t "$MODEL" -s "$D/wanda" --steps "$STEPS" --seq-len 128 --batch-size 2 \
    --heldout 4 --no-report --device "$dev" -o "$D/distill" "${COMMON[@]}"
done

if [ "$GPU" = 1 ]; then
  SHAPE=$("$PY" bench/shapes.py "$BIG")
  step "$BIG-wanda" cuda "$SLMCTL" prune "$SHAPE" -m wanda --sparsity 0.5 --samples "$SAMPLES" --seqlen 512 \
    --eval-windows 0 --device cuda -o "$WORK/cuda/$BIG-wanda" "${COMMON[@]}"
  step "$BIG-gptq" cuda "$SLMCTL" quantize "$SHAPE" -m gptq --samples "$SAMPLES" --seq-len 512 --no-report \
    --device cuda -o "$WORK/cuda/$BIG-gptq" "${COMMON[@]}"
fi

WORK="$WORK" DEVICES="$DEVICES" BIG="$BIG" "$PY" - <<'EOF'
"""Compare each CUDA output with the CPU's; write summary.json; exit 1 when a check fails."""
import json
import os
import platform
import sys
from pathlib import Path

work = Path(os.environ["WORK"])
devices = os.environ["DEVICES"].split()


def doc(dev, name):
    p = work / dev / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() and p.stat().st_size else None


def seconds(dev, name):
    p = work / dev / f"{name}.seconds"
    return float(p.read_text()) if p.is_file() else None


def ppl(d):
    return None if d is None else d.get("ppl", (d.get("domains") or [{}])[0].get("ppl"))


def rel(a, b):
    return abs(a - b) / abs(b) if a is not None and b else None


summary = {"machine": platform.node(), "python": sys.version.split()[0], "devices": devices, "load": os.getloadavg(),
           "steps": {}, "checks": [], "failed": []}
try:
    import torch

    summary["torch"] = torch.__version__
    if torch.cuda.is_available():
        summary["gpu"] = torch.cuda.get_device_name(0)
except ImportError:
    pass
for dev in devices:
    for name in ("wanda", "gptq", "awq", "imatrix", "eval", "distill"):
        d = doc(dev, name)
        if d is None:
            summary["failed"].append(f"{dev} {name}: no result")
            continue
        row = {"seconds": seconds(dev, name)}
        dr = d.get("device") or (d.get("stats") or {}).get("device")
        if dr:
            row["device"] = dr
        summary["steps"][f"{dev}/{name}"] = row
# the CPU half checks that every output is there and reads back
if "cuda" in devices:
    from safetensors.torch import load_file

    a = load_file(str(work / "cpu" / "wanda" / "model.safetensors"))
    b = load_file(str(work / "cuda" / "wanda" / "model.safetensors"))
    differ = [k for k in a if not torch.equal(a[k] == 0, b[k] == 0)]
    summary["checks"].append({"check": "wanda masks", "tensors": len(a), "masks_differ": len(differ),
                              "ok": not differ})
    for m, limit in (("gptq", 0.005), ("awq", 0.005), ("imatrix", 0.005), ("eval", 0.001)):
        name = m if m == "eval" else f"{m}-eval"
        pc, pg = ppl(doc("cpu", name)), ppl(doc("cuda", name))
        r = rel(pg, pc)
        summary["checks"].append({"check": f"{m} perplexity", "cpu": pc, "cuda": pg, "relative": r, "limit": limit,
                                  "ok": r is not None and r <= limit})
    def held_kl(d):
        return (((d or {}).get("heldout") or {}).get("after") or {}).get("kl")

    kc, kg = held_kl(doc("cpu", "distill")), held_kl(doc("cuda", "distill"))
    r = rel(kg, kc)
    summary["checks"].append({"check": "distill held-out KL", "cpu": kc, "cuda": kg, "relative": r, "limit": 0.05,
                              "ok": r is not None and r <= 0.05})
    big = os.environ["BIG"]
    for name in (f"{big}-wanda", f"{big}-gptq"):
        d = doc("cuda", name)
        summary["steps"][f"cuda/{name}"] = {"seconds": seconds("cuda", name),
                                            "device": d and (d.get("device") or (d.get("stats") or {}).get("device"))}
summary["failed"] += [c["check"] for c in summary["checks"] if not c["ok"]]
(work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
sys.exit(1 if summary["failed"] else 0)
EOF
