"""slmctl quantize at w4 g128 (symmetric) on the sample: RTN, GPTQ and AWQ, side by side with
llm-compressor's GPTQ W4A16 g128 when its environment exists (.peers/llmcompressor/bin/python,
or $BENCH_LLMCOMPRESSOR_PYTHON), on the same calibration and evaluation windows.

Writes bench/results/quantize.md: perplexity before/after (the same held-out windows for every
artifact), wall time and peak RSS of each quantisation run. Settings via environment:
BENCH_Q_SAMPLES (16), BENCH_Q_SEQLEN (512), BENCH_Q_WINDOWS (8), BENCH_Q_CTX (512), BENCH_Q_METHODS,
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

from timing import PEERS, alternate, compare, fmt, fmt_ratio, load_note, portable, timed, \
    write_results  # noqa: E402  (bench/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = os.environ.get("BENCH_Q_SAMPLES", "16")  # `make bench` budget; docs/quantize.md's table used 32
SEQLEN = os.environ.get("BENCH_Q_SEQLEN", "512")
WINDOWS = os.environ.get("BENCH_Q_WINDOWS", "8")
CTX = os.environ.get("BENCH_Q_CTX", "512")
METHODS = os.environ.get("BENCH_Q_METHODS", "rtn,gptq,awq").split(",")
# llm-compressor needs in_features divisible by the group size; SmolLM2-135M's hidden size 576 is
# 4.5 x 128, so its W4A16 (g128) cannot run on the sample: a second pass compares both GPTQs at
# g64 (bench/results/quantize_g64.md). BENCH_Q_GROUP=N runs only one pass, at group size N.
GROUPS = [int(os.environ["BENCH_Q_GROUP"])] if os.environ.get("BENCH_Q_GROUP") else [128, 64]
MODEL = "sample:smollm2-135m"
PEER_ROW = "llm-compressor GPTQ W4A16"
PEER = Path(os.environ.get("BENCH_LLMCOMPRESSOR_PYTHON", str(PEERS / "llmcompressor/bin/python")))
OUT_ROOT = Path(os.environ.get("BENCH_Q_OUT", Path(__file__).resolve().parent / "out"))
# the GPTQ side by side with llm-compressor alternates over this many rounds (the other rows run once)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))

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
    t_start = time.time()
    base = ppl(MODEL)
    print(f"fp32: ppl {base}", file=sys.stderr)
    rows, timing = [], {}
    peer_error = None
    cmds = {f"slmctl {m}": slm("quantize", MODEL, "--method", m, "-g", str(GROUP), "--sym", "-o", str(OUT / m),
                               "--data", "sample:shakespeare", "--samples", SAMPLES, "--seq-len", SEQLEN,
                               "--no-report", "--quiet", "--force") for m in METHODS}
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
        peer_cmd = [str(PEER), str(OUT / "peer.py"), str(path), str(OUT / "llmc"), str(OUT / "ids.json"), str(GROUP)]
        # llm-compressor refuses a group size that does not divide every linear's input width: then it runs once,
        # so that the row says why
        cfg = json.loads((Path(path) / "config.json").read_text())
        fits = all(cfg.get(k, 0) % GROUP == 0 for k in ("hidden_size", "intermediate_size"))
        r = None if fits else timed(peer_cmd, cwd=OUT)[0]
        if r is None or r.returncode == 0:
            cmds[PEER_ROW] = peer_cmd
        else:
            own = r.stderr.split("Command exited with non-zero status")[0].strip()
            errs = [ln for ln in own.splitlines() if re.match(r"[A-Za-z_.]*(Error|Exception)\b", ln)]
            peer_error = errs[-1:] or own.splitlines()[-1:] or [f"exit status {r.returncode}"]
            print(f"llm-compressor failed: {own[-600:]}", file=sys.stderr)
    outs = {n: OUT / ("llmc" if n == PEER_ROW else n.split()[-1]) for n in cmds}

    def before(name: str) -> None:
        shutil.rmtree(outs[name], ignore_errors=True)

    pair = [n for n in ("slmctl gptq", PEER_ROW) if n in cmds]
    if len(pair) == 2:  # the comparison with the peer: alternating rounds
        timing["gptq"] = compare(alternate({n: cmds[n] for n in pair}, rounds=ROUNDS, before=before, cwd=OUT),
                                 "slmctl gptq", PEER_ROW)
    for n in cmds:
        if not any(n in t["runs"] for t in timing.values()):  # a row without a peer: one run
            timing[n] = {k: v for k, v in compare(alternate({n: cmds[n]}, rounds=1, before=before, cwd=OUT), n, n).items()
                         if not k.endswith("_ratio")}
    for n in cmds:
        t = next(t for t in timing.values() if n in t["runs"])
        p = ppl(str(outs[n]))
        rows.append((n, p, t["wall"][n], t["rss"][n]))
        print(f"{n}: ppl {p}, {t['wall'][n]['median']:.0f} s, {t['rss'][n]['median']:.0f} MiB", file=sys.stderr)
    peer = next((r for r in rows if r[0] == PEER_ROW), None)
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
             "| run | perplexity | increase over fp32 | vs RTN increase | wall s | peak RSS MiB | rounds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    rtn_inc = next(((p / base - 1) for n, p, _, _ in rows if n == "slmctl rtn" and p and base), None)
    for name, p, wall, rss in rows:
        inc = (p / base - 1) if (p and base) else None
        rel = f"{inc / rtn_inc:.2f}x" if (inc is not None and rtn_inc) else "-"
        lines.append(f"| {name} | {p:.4f} | {inc * 100:+.2f}% | {rel} | {fmt(wall, 0)} | {rss['median']:.0f} | {wall['n']} |"
                     if p else f"| {name} | failed | | | {fmt(wall, 0)} | {rss['median']:.0f} | {wall['n']} |")
    got = {n: (p, w, r) for n, p, w, r in rows}
    checks = []
    g, a, rt = got.get("slmctl gptq"), got.get("slmctl awq"), got.get("slmctl rtn")
    if g and rt and g[0] and rt[0] and base:
        ratio = (g[0] / base - 1) / (rt[0] / base - 1)
        checks.append(f"GPTQ's increase is {ratio:.2f}x RTN's (target <= 0.6): {'met' if ratio <= 0.6 else 'MISSED'}")
    if a and rt and a[0] and rt[0]:
        checks.append(f"AWQ {a[0]:.4f} vs RTN {rt[0]:.4f}: {'beats RTN' if a[0] < rt[0] else 'does NOT beat RTN'}")
    pr = got.get(PEER_ROW)
    if g and pr and g[0] and pr[0]:
        rel = g[0] / pr[0] - 1
        checks.append(f"slmctl GPTQ perplexity vs llm-compressor's: {rel * 100:+.2f}% (target <= +1%): "
                      f"{'met' if rel <= 0.01 else 'MISSED'}")
        tr, rr = timing["gptq"]["time_ratio"], timing["gptq"]["rss_ratio"]
        checks.append(f"wall time ratio slmctl/llm-compressor {fmt_ratio(tr)} (target <= 1.0): "
                      f"{'not judged' if tr is None else 'met' if tr <= 1.0 else 'MISSED'}")
        checks.append(f"peak RSS ratio slmctl/llm-compressor {fmt_ratio(rr)} (target <= 1.0): "
                      f"{'not judged' if rr is None else 'met' if rr <= 1.0 else 'MISSED'}")
    if checks:
        lines += [""] + [f"- {c}" for c in checks]
    if peer is None and peer_error:
        why = " ".join(peer_error)[:300].replace("`", "'")
        lines += ["", f"llm-compressor GPTQ W4A16 g{GROUP} failed on the sample: `{why}`"
                  + (" (its group quantisation needs in_features divisible by the group size; the sample's hidden "
                     "size 576 is 4.5 x 128: the g64 section compares both tools)" if GROUP == 128 else "")]
    elif peer is None:
        lines += ["", "llm-compressor was not run: it needs its own environment (it pins transformers <= 5.17) at "
                  f"{portable(PEER)}; see docs/quantize.md."]
    lines += ["", f"Wall time and peak RSS: each command a fresh process (bench/timing.py), start-up and the "
              f"hashing of its input for the provenance record included; slmctl GPTQ and llm-compressor alternate "
              f"over {ROUNDS} rounds (median [min-max] of the uncontended rounds), the other rows run once "
              f"(`rounds` column). This pass took {minutes:.0f} minutes. " + load_note(list(timing.values()))]
    write_results(RESULT, {"group": GROUP, "samples": int(SAMPLES), "seq_len": int(SEQLEN), "windows": int(WINDOWS),
                           "ctx": int(CTX), "fp32_ppl": base, "rounds": ROUNDS,
                           "rows": [{"run": n, "ppl": p} for n, p, _, _ in rows], "timing": timing,
                           "peer_error": peer_error, "commands": {n: portable(" ".join(c)) for n, c in cmds.items()}},
                  "\n".join(lines), packages=("compressed-tensors",))
    return bool(rows)


if __name__ == "__main__":
    sys.exit(main())
