"""slmctl quantize at w4 g128 (symmetric) on the sample: RTN, GPTQ and AWQ, side by side with
llm-compressor's GPTQ W4A16 g128 when its environment exists (.peers/llmcompressor/bin/python,
or $BENCH_LLMCOMPRESSOR_PYTHON), on the same calibration and evaluation windows.

Writes bench/results/quantize.md: perplexity before/after (the same held-out windows for every
artifact), wall time and peak RSS of each quantisation run. Settings via environment:
BENCH_Q_SAMPLES (32), BENCH_Q_SEQLEN (512), BENCH_Q_WINDOWS (8), BENCH_Q_CTX (512), BENCH_Q_METHODS,
BENCH_Q_OUT (outputs kept under it, default bench/out), BENCH_Q_GROUP (one pass at that group size
instead of g128 and then g64 side by side with llm-compressor, which cannot do g128 on this model).

The sample's weights come from a Q4_1 GGUF, so an asymmetric g32 grid reproduces them almost
exactly: methods are compared at symmetric group size 128, never at g32-asymmetric.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import shutil
import time
from pathlib import Path

from timing import PEERS, timed, results_dir  # noqa: E402  (bench/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = os.environ.get("BENCH_Q_SAMPLES", "32")
SEQLEN = os.environ.get("BENCH_Q_SEQLEN", "512")
WINDOWS = os.environ.get("BENCH_Q_WINDOWS", "8")
CTX = os.environ.get("BENCH_Q_CTX", "512")
METHODS = os.environ.get("BENCH_Q_METHODS", "rtn,gptq,awq").split(",")
# llm-compressor needs in_features divisible by the group size; SmolLM2-135M's hidden size 576 is
# 4.5 x 128, so its W4A16 (g128) cannot run on the sample: a second pass compares both GPTQs at
# g64 (bench/results/quantize_g64.md). BENCH_Q_GROUP=N runs only one pass, at group size N.
GROUPS = [int(os.environ["BENCH_Q_GROUP"])] if os.environ.get("BENCH_Q_GROUP") else [128, 64]
MODEL = "sample:smollm2-135m"
PEER = Path(os.environ.get("BENCH_LLMCOMPRESSOR_PYTHON", str(PEERS / "llmcompressor/bin/python")))
OUT_ROOT = Path(os.environ.get("BENCH_Q_OUT", Path(__file__).resolve().parent / "out"))

# llm-compressor's own one-shot GPTQ on the same windows slmctl draws (passed as token ids)
PEER_SCRIPT = r'''
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier
src, out, ids_file, group = sys.argv[1:5]
extra = {} if int(group) == 128 else {"config_groups": {"group_0": {"targets": ["Linear"], "weights": {
    "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": int(group)}}}}
if extra:  # the W4A16 preset with another group size
    from llmcompressor.modifiers.quantization import GPTQModifier as _G
    GPTQModifier = lambda scheme=None, **kw: _G(**kw)
ids = json.load(open(ids_file))
from datasets import Dataset
ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]})
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(src)
oneshot(model=model, dataset=ds, recipe=GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"], **extra),
        max_seq_length=len(ids[0]), num_calibration_samples=len(ids), shuffle_calibration_samples=False)
model.save_pretrained(out, save_compressed=True)
tok.save_pretrained(out)
'''


def slm(*args: str) -> list[str]:
    return [sys.executable, "-m", "slmctl", *args]


def ppl(ref: str) -> float | None:
    r = subprocess.run(slm("eval", ref, "--windows", WINDOWS, "--ctx", CTX, "--json"), capture_output=True, text=True)
    if r.returncode:
        print(f"eval failed for {ref}: {r.stderr.strip()[-400:]}", file=sys.stderr)
        return None
    return json.loads(r.stdout)["ppl"]


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    ok = True
    for group in GROUPS:
        result = "quantize" if group == 128 else f"quantize_g{group}"
        # the g64 pass exists for the side-by-side with llm-compressor: RTN for the ratio, GPTQ against it
        methods = METHODS if group == GROUPS[0] else [m for m in METHODS if m in ("rtn", "gptq")]
        ok = bench(group, methods, result, OUT_ROOT / result) and ok
    return 0 if ok else 1


def bench(GROUP: int, METHODS: list[str], RESULT: str, OUT: Path) -> bool:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    load_start, t_start = _load(), time.time()
    base = ppl(MODEL)
    print(f"fp32: ppl {base}", file=sys.stderr)
    rows = []
    for m in METHODS:
        out = OUT / m
        r, wall, rss = timed(slm("quantize", MODEL, "--method", m, "-g", str(GROUP), "--sym", "-o", str(out),
                                 "--data", "sample:shakespeare", "--samples", SAMPLES, "--seq-len", SEQLEN,
                                 "--no-report", "--quiet"))
        if r.returncode:
            print(f"slmctl {m} failed: {r.stderr.strip()[-600:]}", file=sys.stderr)
            continue
        p = ppl(str(out))
        rows.append((f"slmctl {m}", p, wall, rss))
        print(f"slmctl {m}: ppl {p}, {wall:.0f} s, {rss:.0f} MiB", file=sys.stderr)
    peer = None
    peer_error = None
    if PEER.is_file():
        from slmctl.api import load_artifact
        from slmctl.eval.backends import load_tokenizer
        from slmctl.pipelines.quantize import calibration_windows

        art, path = load_artifact(MODEL)
        tok = load_tokenizer(art)
        wins, _ = calibration_windows(tok, data="sample:shakespeare", field="text", samples=int(SAMPLES),
                                      seq_len=int(SEQLEN), seed=0)
        (OUT / "ids.json").write_text(json.dumps(wins))
        (OUT / "peer.py").write_text(PEER_SCRIPT)
        r, wall, rss = timed([str(PEER), str(OUT / "peer.py"), str(path), str(OUT / "llmc"), str(OUT / "ids.json"),
                              str(GROUP)],
                             cwd=OUT)
        if r.returncode == 0:
            peer = (ppl(str(OUT / "llmc")), wall, rss)
            rows.append(("llm-compressor GPTQ W4A16", *peer))
            print(f"llm-compressor: ppl {peer[0]}, {wall:.0f} s, {rss:.0f} MiB", file=sys.stderr)
        else:
            own = r.stderr.split("Command exited with non-zero status")[0].split("\tCommand being timed")[0].strip()
            errs = [ln for ln in own.splitlines() if re.match(r"[A-Za-z_.]*(Error|Exception)\b", ln)]
            peer_error = errs[-1:] or own.splitlines()[-1:] or [f"exit status {r.returncode}"]
            print(f"llm-compressor failed: {own[-600:]}", file=sys.stderr)
    minutes = (time.time() - t_start) / 60
    lines = [f"## quantize: w4 g{GROUP} symmetric on SmolLM2-135M" + ("" if GROUP == 128 else
                                                                       ", side by side with llm-compressor"), ""]
    if GROUP != 128:
        lines += ["llm-compressor cannot run W4A16 g128 on this model (see the g128 section), so the two GPTQs",
                  f"are compared at group size {GROUP}.", ""]
    lines += [
             (f"`slmctl quantize sample:smollm2-135m --method M -g {GROUP} --sym --samples {SAMPLES} --seq-len {SEQLEN}`, "
              f"then `slmctl eval OUT --windows {WINDOWS} --ctx {CTX}` on the evaluation region (the tragedies); "
              f"fp32 perplexity {base:.4f}. llm-compressor: `oneshot` with `GPTQModifier(targets=\"Linear\", "
              + ("scheme=\"W4A16\"" if GROUP == 128 else
                 f"config_groups={{group_0: {{targets: [Linear], weights: {{num_bits: 4, type: int, symmetric: true, "
                 f"strategy: group, group_size: {GROUP}}}}}}}")
              + f", ignore=[\"lm_head\"])` (group {GROUP}, symmetric, static act-order, damping 0.01, "
              f"as slmctl's defaults) on the same {SAMPLES} token windows, evaluated by the same `slmctl eval`.")
             if base else "fp32 evaluation failed.", "",
             "| run | perplexity | increase over fp32 | vs RTN increase | wall s | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    rtn_inc = next(((p / base - 1) for n, p, _, _ in rows if n == "slmctl rtn" and p and base), None)
    for name, p, wall, rss in rows:
        inc = (p / base - 1) if (p and base) else None
        rel = f"{inc / rtn_inc:.2f}x" if (inc is not None and rtn_inc) else "-"
        lines.append(f"| {name} | {p:.4f} | {inc * 100:+.2f}% | {rel} | {wall:.0f} | {rss:.0f} |"
                     if p else f"| {name} | failed | | | {wall:.0f} | {rss:.0f} |")
    got = {n: (p, w, r) for n, p, w, r in rows}
    checks = []
    g, a, rt = got.get("slmctl gptq"), got.get("slmctl awq"), got.get("slmctl rtn")
    if g and rt and g[0] and rt[0] and base:
        ratio = (g[0] / base - 1) / (rt[0] / base - 1)
        checks.append(f"GPTQ's increase is {ratio:.2f}x RTN's (target <= 0.6): {'met' if ratio <= 0.6 else 'MISSED'}")
    if a and rt and a[0] and rt[0]:
        checks.append(f"AWQ {a[0]:.4f} vs RTN {rt[0]:.4f}: {'beats RTN' if a[0] < rt[0] else 'does NOT beat RTN'}")
    if g and peer and g[0] and peer[0]:
        rel = g[0] / peer[0] - 1
        checks.append(f"slmctl GPTQ perplexity vs llm-compressor's: {rel * 100:+.2f}% (target <= +1%): "
                      f"{'met' if rel <= 0.01 else 'MISSED'}")
        checks.append(f"wall time ratio slmctl/llm-compressor {g[1] / peer[1]:.2f} (target <= 1.0): "
                      f"{'met' if g[1] <= peer[1] else 'MISSED'}")
        checks.append(f"peak RSS ratio slmctl/llm-compressor {g[2] / peer[2]:.2f} (target <= 1.0): "
                      f"{'met' if g[2] <= peer[2] else 'MISSED'}")
    if checks:
        lines += [""] + [f"- {c}" for c in checks]
    if peer is None and peer_error:
        why = " ".join(peer_error)[:300].replace("`", "'")
        lines += ["", f"llm-compressor GPTQ W4A16 g{GROUP} failed on the sample: `{why}`"
                  + (" (its group quantisation needs in_features divisible by the group size; the sample's hidden "
                     "size 576 is 4.5 x 128: the g64 section compares both tools)" if GROUP == 128 else "")]
    elif peer is None:
        lines += ["", "llm-compressor was not run: it needs its own environment (it pins transformers <= 5.17) at "
                  f"{PEER}; see docs/quantize.md."]
    lines += ["", f"Shared 2-core machine, run under the heavy-job lock (one benchmark at a time); load average "
              f"(1/5/15 min) {load_start} at the start and {_load()} at the end of this {minutes:.0f}-minute run. "
              "Wall times are only comparable within one run."]
    (results_dir() / f"{RESULT}.md").write_text("\n".join(lines) + "\n")
    return bool(rows)


if __name__ == "__main__":
    sys.exit(main())
