"""ONNX export and onnxruntime speed on the SmolLM2-135M sample, side by side in one run.

Rows: PyTorch (transformers, fp32, its own KV cache); slmctl's ONNX export (fp32); optimum-cli's ONNX
export (optimum-onnx in its own environment, /work/peers/optimum, transformers 4.57, from a copy of
the sample whose config.json carries ``rope_theta``); slmctl's export quantised by onnxruntime to
dynamic int8 and to 4-bit MatMulNBits. Figures: decode tokens/s (greedy, batch 1, KV cache carried
present -> past after the 1x512 prompt), 1x512 prefill latency, and for the builds wall time and peak
RSS of the building process (slmctl export vs optimum-cli export). optimum's export is checked
against PyTorch with the same prompt + greedy-decode comparison slmctl's export runs on itself.

Every runtime gets the same threads (BENCH_ONNX_THREADS, default: all cores) and runs alone, one
after the other, in this process. Writes bench/results/onnx.md.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = os.environ.get("BENCH_ONNX_MODEL", "sample:smollm2-135m")
PREFILL = int(os.environ.get("BENCH_ONNX_PREFILL", "512"))
DECODE = int(os.environ.get("BENCH_ONNX_DECODE", "64"))
REPEATS = int(os.environ.get("BENCH_ONNX_REPEATS", "3"))
THREADS = int(os.environ.get("BENCH_ONNX_THREADS", "0") or 0) or os.cpu_count() or 1
PEER = Path(os.environ.get("BENCH_ONNX_OPTIMUM", "/work/peers/optimum"))
SLMCTL = [sys.executable, "-m", "slmctl"]


def timed_run(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB of the child, stdout); the child is measured alone by a small runner."""
    t = time.perf_counter()
    code = (
        "import resource,subprocess,sys,json;"
        "r=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
        "sys.stderr.write(r.stderr);"
        "print(json.dumps({'rc':r.returncode,'out':r.stdout,"
        "'rss':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
    )
    r = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, cwd=ROOT, env=env)
    dt = time.perf_counter() - t
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    if doc["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return dt, doc["rss"] / 1024.0, doc["out"].strip()


def optimum_source(hf: Path, dst: Path) -> Path:
    """A copy of the HF folder for transformers 4.57: the weights linked, config.json with ``rope_theta``
    (transformers 5 writes it inside ``rope_parameters``, which 4.57 does not read: it would use 10000)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in hf.iterdir():
        if f.is_file() and f.name != "config.json":
            (dst / f.name).unlink(missing_ok=True)
            (dst / f.name).symlink_to(f.resolve())
    cfg = json.loads((hf / "config.json").read_text())
    rope = cfg.pop("rope_parameters", None) or {}
    if "rope_theta" not in cfg:
        cfg["rope_theta"] = rope.get("rope_theta", 10000.0)
    if rope.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return dst


def prompt_ids(folder: Path, n: int) -> list[int]:
    from transformers import AutoTokenizer

    from slmctl.calib import load_text

    tok = AutoTokenizer.from_pretrained(str(folder))
    return tok(load_text("sample:shakespeare", purpose="eval")[: n * 8], add_special_tokens=False)["input_ids"][:n]


def bench_ort(model_file: Path, ids: list[int]) -> dict:
    from slmctl.eval.backend_onnx import OrtCausalLM

    lm = OrtCausalLM(model_file, threads=THREADS)
    x = np.asarray([ids])
    lm.run(x[:, :16])  # warm-up
    pre = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        logits, past = lm.run(x)
        pre.append(time.perf_counter() - t)
    tok = int(logits[0, -1].argmax())
    t = time.perf_counter()
    for _ in range(DECODE):
        logits, past = lm.run(np.asarray([[tok]]), past)
        tok = int(logits[0, -1].argmax())
    dec = DECODE / (time.perf_counter() - t)
    del lm
    gc.collect()
    return {"prefill_ms": 1000 * min(pre), "decode_tps": dec}


def bench_torch(folder: Path, ids: list[int]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    # transformers 5 leaves the weights in the safetensors file's memory map; read through it, every
    # decode step was 7x slower here (measured: 0.6 -> 4.2 tok/s): copy them out, as onnxruntime does
    with torch.no_grad():
        for p in m.parameters():
            p.data = p.data.clone()
    x = torch.tensor([ids])
    with torch.inference_mode():
        m(input_ids=x[:, :16])
        pre = []
        for _ in range(REPEATS):
            t = time.perf_counter()
            out = m(input_ids=x, use_cache=True)
            pre.append(time.perf_counter() - t)
        cache, tok = out.cache, out.logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        for _ in range(DECODE):
            out = m(input_ids=tok, cache=cache, use_cache=True)
            cache, tok = out.cache, out.logits[:, -1:].argmax(-1)
        dec = DECODE / (time.perf_counter() - t)
    del m
    gc.collect()
    return {"prefill_ms": 1000 * min(pre), "decode_tps": dec}


def verify(hf: Path, model_file: Path) -> dict:
    """The check slmctl's exporter runs on its own output, on any graph of the same layout."""
    import torch
    from transformers import AutoModelForCausalLM

    from slmctl.pipelines.export_onnx import _prompt_ids, compare_decoder, reference_decoder

    m = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    ref = reference_decoder(m, _prompt_ids(hf, m.config.vocab_size))
    del m
    return compare_decoder(model_file, ref)


def _size(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.glob("*.onnx*")) / 2**20


def main() -> int:
    from slmctl.api import load_artifact

    _, hf = load_artifact(MODEL)
    ids = prompt_ids(hf, PREFILL)
    work = Path(os.environ.get("BENCH_ONNX_WORK") or tempfile.mkdtemp(prefix="bench-onnx-"))
    work.mkdir(parents=True, exist_ok=True)
    for sub in ("fp32", "int8", "int4", "optimum", "optimum-src"):
        shutil.rmtree(work / sub, ignore_errors=True)
    load0 = os.getloadavg()
    log = lambda m: print(f"[bench_onnx {time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)
    builds: dict[str, tuple[float, float]] = {}
    commands: dict[str, str] = {}

    def build(name, cmd, env=None):
        log(f"build {name}: {' '.join(cmd)}")
        t, rss, _ = timed_run(cmd, env)
        builds[name] = (t, rss)
        commands[name] = " ".join(str(c) for c in cmd).replace(sys.executable, "python")
        log(f"  {t:.1f} s, peak RSS {rss:.0f} MiB")

    build("fp32", [*SLMCTL, "export", MODEL, "--format", "onnx", "-o", str(work / "fp32"), "-q"])
    verification = json.loads((work / "fp32" / "slmctl.json").read_text())["verification"]
    build("int8", [*SLMCTL, "quantize", str(work / "fp32"), "--type", "int8", "--no-report", "-o", str(work / "int8"), "-q"])
    build("int4", [*SLMCTL, "quantize", str(work / "fp32"), "--type", "int4", "--no-report", "-o", str(work / "int4"), "-q"])
    peer_cli = PEER / "bin" / "optimum-cli"
    peer_note, peer_check = "", None
    if peer_cli.exists():
        src = optimum_source(hf, work / "optimum-src")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["PATH"] = f"{PEER / 'bin'}:{env.get('PATH', '')}"
        try:
            build("optimum", [str(peer_cli), "export", "onnx", "-m", str(src), "--task", "text-generation-with-past",
                              str(work / "optimum")], env)
            peer_check = verify(hf, work / "optimum" / "model.onnx")
            log(f"optimum export vs PyTorch: {peer_check}")
        except SystemExit as exc:
            peer_note = f"optimum-cli export failed: {str(exc).strip().splitlines()[-1][:300]}"
            log(peer_note)
    else:
        peer_note = f"optimum-cli is not installed in its own environment ({PEER}; `make {PEER}/.ok`)."

    rows = []
    log("measuring PyTorch")
    rows.append(("PyTorch fp32 (transformers)", bench_torch(hf, ids), None, None))
    for name, sub in (("slmctl ONNX fp32", "fp32"), ("optimum-cli ONNX fp32", "optimum"),
                      ("slmctl ONNX int8 (dynamic)", "int8"), ("slmctl ONNX int4 (MatMulNBits, block 32)", "int4")):
        if not (work / sub / "model.onnx").is_file():
            continue
        log(f"measuring {name}")
        rows.append((name, bench_ort(work / sub / "model.onnx", ids), builds.get(sub), _size(work / sub)))
    load1 = os.getloadavg()

    fp32 = next(r for n, r, _, _ in rows if n == "slmctl ONNX fp32")
    lines = ["## ONNX export (onnxruntime, CPU)\n",
             f"Model `{MODEL}`. One run of `python bench/bench_onnx.py` builds every row, then measures each runtime "
             f"alone with {THREADS} thread(s): prefill of 1x{PREFILL} tokens (best of {REPEATS}), then greedy decode "
             f"of {DECODE} tokens with the KV cache carried present -> past (batch 1, context {PREFILL}-"
             f"{PREFILL + DECODE}). onnxruntime {_version('onnxruntime')}, torch {_version('torch')}, "
             f"transformers {_version('transformers')}; {os.cpu_count()} CPU cores shared with other jobs "
             f"(load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end).\n",
             "| runtime | decode tok/s | prefill 1x512 ms | decode vs slmctl fp32 | build wall s | build peak RSS MiB | size MiB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r, b, size in rows:
        lines.append(f"| {name} | {r['decode_tps']:.1f} | {r['prefill_ms']:.0f} | {r['decode_tps'] / fp32['decode_tps']:.2f} | "
                     f"{'' if b is None else f'{b[0]:.1f}'} | {'' if b is None else f'{b[1]:.0f}'} | "
                     f"{'' if size is None else f'{size:.1f}'} |")
    lines.append("\nPyTorch runs on weights copied out of the safetensors memory map (read through the map, decode "
                 "was 7x slower on this machine).\n")
    lines.append(f"Checked against PyTorch (prompt of {verification['prompt_tokens']} tokens, then greedy decode through "
                 "present -> past):\n")
    lines.append("| export | max abs logit diff, prompt | max abs diff, 8 decode steps | top-1 agreement | greedy 32 tokens |")
    lines.append("|---|---:|---:|---:|---|")
    for name, v in (("slmctl", verification), ("optimum-cli", peer_check)):
        if v:
            lines.append(f"| {name} | {v['max_abs_diff_prompt']:.2g} | {v['max_abs_diff_decode']:.2g} | "
                         f"{v['top1_agreement_pct']:.1f}% | {'identical' if v['greedy_identical'] else 'DIFFERENT'} |")
    opt = next((r for n, r, _, _ in rows if n.startswith("optimum")), None)
    int4 = next((r for n, r, _, _ in rows if "int4" in n), None)
    lines.append("\nTargets:")
    if opt:
        ok = fp32["decode_tps"] >= opt["decode_tps"]
        lines.append(f"- decode at least as fast as optimum's export: {'met' if ok else 'NOT met'} "
                     f"({fp32['decode_tps']:.1f} vs {opt['decode_tps']:.1f} tok/s).")
    else:
        lines.append("- decode against optimum's export: not measured (" + peer_note + ")")
    if int4:
        ok = int4["decode_tps"] > fp32["decode_tps"]
        lines.append(f"- int4 faster than fp32: {'met' if ok else 'NOT met'} "
                     f"({int4['decode_tps']:.1f} vs {fp32['decode_tps']:.1f} tok/s decode).")
    lines.append("\nBuild commands (wall time and peak RSS of that process and its children):\n")
    for name, c in commands.items():
        lines.append(f"- {name}: `{c}`")
    if peer_note and opt is None:
        lines.append(f"\n{peer_note}")
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "onnx.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
