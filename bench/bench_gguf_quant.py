"""GGUF quantisation quality: slmctl's GPTQ on llama.cpp's block grids vs llama.cpp's own quantiser, without
and with an importance matrix, side by side on the sample (issue 20).

Every tool gets the same calibration windows (BENCH_GQ_SAMPLES windows of BENCH_GQ_SEQLEN tokens drawn with
seed 0 from the calibration region of sample:shakespeare) and every output is evaluated by the same
`slmctl eval OUT --reference sample:smollm2-135m` on the held-out evaluation region (BENCH_GQ_WINDOWS windows, default 8, of
BENCH_GQ_CTX tokens), GGUFs in llama.cpp: perplexity, mean KL(fp32 || quant), top-1 agreement, file size, wall
time. Rows:

* llama.cpp: llama_model_quantize (llama.cpp's quantiser, from llama-cpp-python) on slmctl's f16 GGUF;
* llama.cpp + imatrix: the same with an importance matrix over the same windows, handed to
  llama_model_quantize (the matrix is slmctl's, computed in one layer-by-layer pass; the time of computing it
  is in the row);
* slmctl gptq: `slmctl quantize MODEL --format gguf --type T --method gptq` on the same windows;
* AutoRound (iters=0, its "optimised RTN"): auto-round's own GGUF export (``format="gguf:T"``) in its own venv
  (.peers/autoround, `make peers`), fed the same windows as token ids; BENCH_GQ_AR_ITERS=0,200 adds its tuned
  rows (sign-gradient descent: many times the time, left out of the default run to keep it near 30 minutes);
* slmctl gptq, AutoRound's mixture: where AutoRound's file differs in size from slmctl's by more than 1% (its
  own tensor-type mixture: another fallback for rows that do not fill 256-wide blocks, Q8_0 embeddings),
  slmctl again with ``--tensor-types-from`` AutoRound's file, so the two are compared at equal size;
* ONNX int4 (with Q4_0's rows): `slmctl quantize MODEL.onnx --bits 4 -g 32` (slmctl's calibrated MatMulNBits: the
  same importance-weighted block-32 scales as Q4_0 and GPTQ codes) on the float ONNX export, beside
  onnxruntime's own MatMulNBits quantiser (`--type default`, RTN) at the same block size; BENCH_GQ_ONNX=0 drops
  them.

Writes bench/results/gguf_quant.{json,md}. Types: BENCH_GQ_TYPES (q4_0,q4_k_m,q3_k_m,q2_k).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from timing import PEERS, heavy, measure, write_results  # noqa: E402  (bench/ is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
MODEL = os.environ.get("BENCH_GQ_MODEL", "sample:smollm2-135m")
DATA = os.environ.get("BENCH_GQ_DATA", "sample:shakespeare")
SAMPLES = int(os.environ.get("BENCH_GQ_SAMPLES", "32"))
SEQLEN = int(os.environ.get("BENCH_GQ_SEQLEN", "512"))
WINDOWS = int(os.environ.get("BENCH_GQ_WINDOWS", "8"))
CTX = int(os.environ.get("BENCH_GQ_CTX", "512"))
TYPES = os.environ.get("BENCH_GQ_TYPES", "q4_0,q4_k_m,q3_k_m,q2_k").split(",")
AR_ITERS = [int(i) for i in os.environ.get("BENCH_GQ_AR_ITERS", "0").split(",") if i.strip()]
# llama.cpp file types AutoRound 0.16 has no preset for, and the preset it has nearest to each (its Q2_K_S is
# llama.cpp's Q2_K_S mixture, smaller than Q2_K: the report says when sizes differ by more than 1%)
AR_TYPES = {"q2_k": "q2_k_s"}
AR_PY = Path(os.environ.get("BENCH_AUTOROUND_PYTHON", str(PEERS / "autoround/bin/python")))
ONNX = os.environ.get("BENCH_GQ_ONNX", "1") != "0"
LOCK = os.environ.get("BENCH_LOCK")  # run each command under this flock (the shared heavy-job lock)
PY = sys.executable

# the importance matrix over the calibration windows slmctl draws, written in llama.cpp's GGUF imatrix format
IMATRIX = r'''
import sys
from pathlib import Path
from slmctl.api import load_artifact
from slmctl.layerwise import LayerwiseModel
from slmctl.pipelines.quantize import calibration_windows
from slmctl.pipelines.gguf_quant import layerwise_imatrix
from slmctl.io.imatrix import write_imatrix
art, _ = load_artifact(sys.argv[1])
lm = LayerwiseModel(art)
wins, info = calibration_windows(lm.tokenizer(), data=sys.argv[3], field="text", samples=int(sys.argv[4]),
                                 seq_len=int(sys.argv[5]), seed=0)
im = layerwise_imatrix(lm, wins)
n = sum(len(w) for w in wins)
write_imatrix(Path(sys.argv[2]), {k: (v * n, n) for k, v in im.items()}, datasets=[sys.argv[3]],
              chunk_size=int(sys.argv[5]), chunk_count=len(wins), force=True)
'''
# llama.cpp's own quantiser (llama_model_quantize), from slmctl's f16 GGUF
LLAMA_Q = r'''
import sys
from slmctl.pipelines.gguf_quant import quantize_gguf
quantize_gguf(sys.argv[1], sys.argv[2], sys.argv[3], imatrix=sys.argv[4] if len(sys.argv) > 4 else None, force=True)
'''

# the calibration windows slmctl draws, as token ids for the peers
WINDOWS_IDS = r'''
import json, sys
from slmctl.api import load_artifact
from slmctl.eval.backends import load_tokenizer
from slmctl.pipelines.quantize import calibration_windows
art, path = load_artifact(sys.argv[1])
wins, _ = calibration_windows(load_tokenizer(art), data=sys.argv[3], field="text", samples=int(sys.argv[4]),
                              seq_len=int(sys.argv[5]), seed=0)
json.dump({"hf": str(path), "ids": wins}, open(sys.argv[2], "w"))
'''
# AutoRound's own GGUF export (run by its venv's python) on the same windows, fed as a loader of token ids
AUTOROUND = r'''
import json, sys, torch
from pathlib import Path
from auto_round import AutoRound
ids_file, out, fmt, iters = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
doc = json.load(open(ids_file))
windows = [torch.tensor([w], dtype=torch.long) for w in doc["ids"]]
ar = AutoRound(doc["hf"], scheme=fmt, iters=iters, nsamples=len(windows), seqlen=len(doc["ids"][0]),
               dataset=windows, batch_size=1, device_map="cpu")
ar.quantize_and_save(str(out), format=fmt)
files = sorted(out.rglob("*.gguf"))
print(files[0])
'''


def run(cmd: list[str]) -> dict:
    with heavy(LOCK):
        m = measure(cmd, cwd=ROOT)
    if m["rc"]:
        raise RuntimeError(f"failed ({m['rc']}): {' '.join(map(str, cmd))}\n{m['stderr'][-3000:]}")
    return m


def evaluate(path: Path) -> dict:
    m = run([PY, "-m", "slmctl", "eval", str(path), "--reference", MODEL, "--ctx", str(CTX), "--windows",
             str(WINDOWS), "--json", "--quiet"])
    r = json.loads(m["stdout"])
    r = r["domains"][0] if "domains" in r else r
    return {"ppl": r["ppl"], "ref_ppl": r["reference_ppl"], "kld": r["kld"]["mean"], "top1": r["top1_agreement_pct"]}


def slmctl_gptq(t: str, path: Path, extra: list[str]) -> dict:
    return run([PY, "-m", "slmctl", "quantize", MODEL, "--format", "gguf", "--type", t, "--method", "gptq",
                "--data", DATA, "--samples", str(SAMPLES), "--seq-len", str(SEQLEN), "--no-report", "-o",
                str(path), "--force", "--quiet", *extra])


def measured_row(t: str, tool: str, path: Path, wall: float, m: dict) -> dict:
    ev = evaluate(path)
    size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.iterdir()
                                                           if f.name.startswith("model.onnx"))
    row = {"type": t, "tool": tool, "bytes": size, "wall_s": round(wall, 1),
           "peak_rss_mib": m["peak_rss_mib"], "load_before": m["load_before"], "contended": m["contended"], **ev}
    print(json.dumps(row), file=sys.stderr)
    return row


def main() -> int:
    out = Path(os.environ.get("BENCH_GQ_OUT", tempfile.mkdtemp(prefix="bench-gguf-quant-")))
    out.mkdir(parents=True, exist_ok=True)
    f16 = out / "f16.gguf"
    t_f16 = run([PY, "-m", "slmctl", "export", MODEL, "--format", "gguf", "--outtype", "f16", "-o", str(f16),
                 "--force", "--quiet"])
    im = out / "calib.imatrix"
    t_im = run([PY, "-c", IMATRIX, MODEL, str(im), DATA, str(SAMPLES), str(SEQLEN)])
    print(f"f16 {t_f16['wall_s']:.1f}s, imatrix {t_im['wall_s']:.1f}s", file=sys.stderr)
    rows: list[dict] = []
    failed: list[dict] = []
    prev = Path(os.environ.get("SLMCTL_BENCH_RESULTS", ROOT / "bench" / "results")) / "gguf_quant.json"
    if os.environ.get("BENCH_GQ_APPEND") and prev.is_file():  # add types to the previous run's rows
        rows = [r for r in json.loads(prev.read_text())["rows"] if r["type"] not in TYPES]
    ids = out / "windows.json"
    have_ar = AR_PY.is_file()
    if have_ar:
        run([PY, "-c", WINDOWS_IDS, MODEL, str(ids), DATA, str(SAMPLES), str(SEQLEN)])
        (out / "autoround.py").write_text(AUTOROUND)
    else:
        print(f"AutoRound rows skipped: no {AR_PY} (make peers)", file=sys.stderr)
    onnx_fp = out / "onnx-fp32"
    t_onnx = None
    if ONNX and "q4_0" in TYPES:
        t_onnx = run([PY, "-m", "slmctl", "export", MODEL, "--format", "onnx", "-o", str(onnx_fp), "--force", "--quiet"])
    for t in TYPES:
        tools = ["llama.cpp", "llama.cpp + imatrix", "slmctl gptq"] + (["slmctl gptq, no act-order"]
                                                                        if os.environ.get("BENCH_GQ_NOACT") else [])
        tools += [f"AutoRound iters={i}" for i in AR_ITERS] if have_ar else []
        tools += ["onnxruntime int4 RTN b32", "slmctl ONNX int4 gptq b32"] if t == "q4_0" and t_onnx else []
        for tool in tools:
            slug = tool.replace(' ', '').replace('+', '-').replace('.', '').replace(',', '').replace('=', '')
            path = out / f"{slug}-{t}.gguf"
            if tool == "llama.cpp":
                m = run([PY, "-c", LLAMA_Q, str(f16), str(path), t])
                wall = m["wall_s"] + t_f16["wall_s"]
            elif tool == "llama.cpp + imatrix":
                m = run([PY, "-c", LLAMA_Q, str(f16), str(path), t, str(im)])
                wall = m["wall_s"] + t_f16["wall_s"] + t_im["wall_s"]
            elif tool.startswith("AutoRound"):
                ar_t = AR_TYPES.get(t, t)
                try:
                    m = run([str(AR_PY), str(out / "autoround.py"), str(ids), str(out / f"{slug}-{t}"), f"gguf:{ar_t}",
                             tool.split("=")[1]])
                except RuntimeError as exc:  # a type this AutoRound does not make: said in the report, not fatal
                    print(f"{tool} {t}: {str(exc)[-400:]}", file=sys.stderr)
                    failed.append({"type": t, "tool": tool, "error": str(exc).strip().splitlines()[-1][-300:]})
                    continue
                path = Path(m["stdout"].strip().splitlines()[-1])
                wall = m["wall_s"]
                if ar_t != t:
                    tool = f"{tool} ({ar_t.upper()})"
            elif "ONNX" in tool or "onnxruntime" in tool:
                path = out / f"{slug}"
                kind = ["--bits", "4"] if "slmctl" in tool else ["--type", "default"]
                m = run([PY, "-m", "slmctl", "quantize", str(onnx_fp), *kind, "-g", "32", "--sym", "--data", DATA,
                         "--samples", str(SAMPLES), "--seq-len", str(SEQLEN), "--no-report", "-o", str(path), "--force",
                         "--quiet"])
                wall = m["wall_s"] + t_onnx["wall_s"]
            else:
                m = slmctl_gptq(t, path, ["--no-act-order"] if "no act-order" in tool else [])
                wall = m["wall_s"]
            row = measured_row(t, tool, path, wall, m)
            rows.append(row)
            mine = next((x for x in rows if x["type"] == t and x["tool"] == "slmctl gptq"), None)
            if tool.startswith("AutoRound") and mine and abs(row["bytes"] / mine["bytes"] - 1) > 0.01:
                # AutoRound's file has another tensor-type mixture: slmctl again with exactly its types, so the
                # two are compared at equal size
                mixed = out / f"slmctlgptq-armix-{t}.gguf"
                m = slmctl_gptq(t, mixed, ["--tensor-types-from", str(path)])
                rows.append({**measured_row(t, f"slmctl gptq, {tool.split(' (')[0]}'s mixture", mixed, m["wall_s"], m),
                             "mixture_of": tool})
        report(rows, t_f16, t_im, failed)
    return 0


def report(rows: list[dict], t_f16: dict, t_im: dict, failed: list[dict] = ()) -> None:
    """bench/results/gguf_quant.{json,md} from the rows measured so far."""
    fp32 = rows[0]["ref_ppl"]
    lines = ["## gguf_quant: GGUF quantisation vs llama.cpp's quantiser (issue 20)", "",
             f"`{MODEL}`, calibration: {SAMPLES} windows of {SEQLEN} tokens drawn (seed 0) from the calibration "
             f"region of `{DATA}`, the same windows for every tool; evaluation: `slmctl eval OUT --reference {MODEL} "
             f"--windows {WINDOWS} --ctx {CTX}` on the held-out evaluation region (GGUFs run in llama.cpp). fp32 "
             f"perplexity {fp32:.3f}. llama.cpp = `llama_model_quantize` from llama-cpp-python on slmctl's f16 GGUF; "
             "its importance matrix is slmctl's over the same windows (the imatrix section compares it with llama-imatrix's). "
             f"Wall time includes the f16 export ({t_f16['wall_s']:.0f} s) and the matrix ({t_im['wall_s']:.0f} s) "
             "where the row needs them. Ratios: this row over llama.cpp + imatrix of the same type.", "",
             "| type | tool | size MB | ppl | ppl rise | mean KL | top-1 % | wall s | KL ratio | rise ratio | load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = next(x for x in rows if x["type"] == r["type"] and x["tool"] == "llama.cpp + imatrix")
        rise, rrise = r["ppl"] - fp32, ref["ppl"] - fp32
        lines.append(f"| {r['type'].upper()} | {r['tool']} | {r['bytes'] / 1e6:.2f} | {r['ppl']:.3f} | {rise:+.3f} | "
                     f"{r['kld']:.5f} | {r['top1']:.1f} | {r['wall_s']:.0f} | {r['kld'] / ref['kld']:.2f} | "
                     f"{rise / rrise if rrise else float('nan'):.2f} | {r['load_before'][0]:.1f} |")
    types = ",".join(dict.fromkeys(r["type"] for r in rows))
    lines += ["", "Targets (issue 20), slmctl gptq against each peer's row of the same type:", ""]
    for t in dict.fromkeys(r["type"] for r in rows):
        mine = next((x for x in rows if x["type"] == t and x["tool"] == "slmctl gptq"), None)
        if mine is None:
            continue
        for peer in [x for x in rows if x["type"] == t and not x["tool"].startswith(("slmctl", "onnxruntime"))]:
            for me in [mine] + [x for x in rows if x["type"] == t and x.get("mixture_of") == peer["tool"]]:
                rise, prise = me["ppl"] - fp32, peer["ppl"] - fp32
                size = me["bytes"] / peer["bytes"]
                lines.append(f"- {t.upper()} vs {peer['tool']}{' (' + me['tool'] + ')' if me is not mine else ''}: "
                             f"KL {me['kld'] / peer['kld']:.2f}x, ppl rise "
                             f"{rise / prise if prise else float('nan'):.2f}x, size {size:.3f}x"
                             + ("" if abs(size - 1) <= 0.01 else " (sizes differ by more than 1%: not an equal-size "
                                "comparison)"))
        onnx = next((x for x in rows if x["type"] == t and x["tool"].startswith("slmctl ONNX")), None)
        if onnx is not None:
            lines.append(f"- slmctl ONNX int4 (block 32) vs slmctl GGUF {t.upper()}: KL {onnx['kld'] / mine['kld']:.2f}x "
                         f"(target <= 1.2x), size {onnx['bytes'] / mine['bytes']:.3f}x")
    for f in failed:
        lines.append(f"- {f['type'].upper()}: {f['tool']} did not run: {f['error']}")
    if any(r["contended"] for r in rows):
        lines += ["", "Wall times were measured on a contended machine (load column): quality columns are not "
                  "affected by load, the wall times are not final."]
    lines += ["", f"Command: `python bench/bench_gguf_quant.py` (under the shared heavy-job lock) with BENCH_GQ_TYPES={types}, "
              f"BENCH_GQ_SAMPLES={SAMPLES}, BENCH_GQ_WINDOWS={WINDOWS}; load = 1-minute load average before the "
              "quantisation run (2-core machine shared with other jobs)."]
    md = "\n".join(lines)
    write_results("gguf_quant", {"rows": rows, "fp32_ppl": fp32, "samples": SAMPLES, "seq_len": SEQLEN,
                                 "windows": WINDOWS, "ctx": CTX, "types": types, "failed": list(failed)}, md,
                  packages=("llama-cpp-python", "numpy", "onnxruntime"))
    print(md)


if __name__ == "__main__":
    sys.exit(main())
