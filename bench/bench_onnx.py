"""ONNX export and onnxruntime speed on the SmolLM2-135M sample, side by side in one run.

Rows: PyTorch (transformers, fp32, its own KV cache); slmctl's ONNX export (fp32); optimum-cli's ONNX
export (optimum-onnx in its own environment, .peers/optimum, transformers 4.57, from a copy of
the sample whose config.json carries ``rope_theta``); slmctl's export quantised by onnxruntime to
dynamic int8 and to 4-bit MatMulNBits. Figures: decode tokens/s (greedy, batch 1, KV cache carried
present -> past after the 1x512 prompt), 1x512 prefill latency, and for the builds wall time and peak
RSS of the building process (slmctl export vs optimum-cli export). optimum's export is checked
against PyTorch with the same prompt + greedy-decode comparison slmctl's export runs on itself.

Every runtime gets the same threads (BENCH_ONNX_THREADS, default: all cores) and runs alone, one
after the other, in this process, for BENCH_ONNX_ROUNDS rounds (default 3) in a rotating order; the
fragment gives medians and ranges. BENCH_ONNX_DECODE (default 128) decode tokens, BENCH_ONNX_PREFILL
(default 512) prompt tokens, BENCH_ONNX_WORK the work folder. Writes bench/results/onnx.md.
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

from timing import PEERS, alternate, compare, fmt, fmt_ratio, hot_path, hot_path_note, load_note, portable, ratio, \
    write_results  # noqa: E402  (bench/ is on sys.path when run as a script)

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = os.environ.get("BENCH_ONNX_MODEL", "sample:smollm2-135m")
PREFILL = int(os.environ.get("BENCH_ONNX_PREFILL", "512"))
DECODE = int(os.environ.get("BENCH_ONNX_DECODE", "128"))
REPEATS = int(os.environ.get("BENCH_ONNX_REPEATS", "1"))
ROUNDS = int(os.environ.get("BENCH_ONNX_ROUNDS", "3"))
# the export (slmctl vs optimum-cli) alternates over this many rounds, each a fresh process
BUILD_ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
THREADS = int(os.environ.get("BENCH_ONNX_THREADS", "0") or 0) or os.cpu_count() or 1
PEER = Path(os.environ.get("BENCH_ONNX_OPTIMUM", str(PEERS / "optimum")))
SLMCTL = [sys.executable, "-m", "slmctl"]


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


class OrtRunner:
    """An onnxruntime session on one export, warmed up; each call to ``measure`` is one round."""

    def __init__(self, model_file: Path, ids: list[int]):
        from slmctl.eval.backend_onnx import OrtCausalLM

        self.lm = OrtCausalLM(model_file, threads=THREADS)
        self.x = np.asarray([ids])
        self.lm.run(self.x[:, :16])  # warm-up

    def measure(self) -> dict:
        pre = []
        for _ in range(REPEATS):
            t = time.perf_counter()
            logits, past = self.lm.run(self.x)
            pre.append(time.perf_counter() - t)
        tok = int(logits[0, -1].argmax())
        t = time.perf_counter()
        for _ in range(DECODE):
            logits, past = self.lm.run(np.asarray([[tok]]), past)
            tok = int(logits[0, -1].argmax())
        return {"prefill_ms": 1000 * min(pre), "decode_tps": DECODE / (time.perf_counter() - t)}


class TorchRunner:
    """transformers on the same prompt, its own KV cache; each call to ``measure`` is one round."""

    def __init__(self, folder: Path, ids: list[int]):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(THREADS)
        self.torch = torch
        m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        # transformers 5 leaves the weights in the safetensors file's memory map; read through it, every
        # decode step was 7x slower here (measured: 0.6 -> 4.2 tok/s): copy them out, as onnxruntime does
        with torch.no_grad():
            for p in m.parameters():
                p.data = p.data.clone()
        self.m, self.x = m, torch.tensor([ids])
        with torch.inference_mode():
            m(input_ids=self.x[:, :16])

    def measure(self) -> dict:
        m, x = self.m, self.x
        with self.torch.inference_mode():
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
        return {"prefill_ms": 1000 * min(pre), "decode_tps": dec}


def measure_rounds(runners: dict, log) -> dict[str, dict]:
    """ROUNDS rounds; in each, every runtime runs once (prefill, then decode), in an order that rotates
    from round to round so no runtime always runs first or right after the same neighbour. Returns per
    runtime the median and the range of each figure, and the raw rounds."""
    names = list(runners)
    raw = {n: [] for n in names}
    for r in range(ROUNDS):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            raw[n].append(runners[n].measure())
        log(f"round {r + 1}/{ROUNDS}: " + ", ".join(f"{n} {raw[n][-1]['decode_tps']:.1f} tok/s" for n in names))
    out = {}
    for n in names:
        d = [x["decode_tps"] for x in raw[n]]
        p = [x["prefill_ms"] for x in raw[n]]
        out[n] = {"decode_tps": float(np.median(d)), "decode_min": min(d), "decode_max": max(d),
                  "prefill_ms": float(np.median(p)), "prefill_min": min(p), "prefill_max": max(p),
                  "rounds": raw[n]}
    return out


def verify(hf: Path, model_file: Path) -> dict:
    """The check slmctl's exporter runs on its own output, on any graph of the same layout."""
    import torch
    from transformers import AutoModelForCausalLM

    from slmctl.pipelines.export.onnx_verify import _prompt_ids, compare_decoder, reference_decoder

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
    commands: dict[str, str] = {}
    peer_cli = PEER / "bin" / "optimum-cli"
    peer_note, peer_check = "", None
    cold, warm = work / "cache-cold", work / "cache-warm"
    base_env = {"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    # the resolved folder, not the sample's name: a fresh SLMCTL_CACHE would import the sample again
    cmds = {"slmctl": [*SLMCTL, "export", str(hf), "--format", "onnx", "-o", str(work / "fp32"), "-q"],
            "slmctl-warm": [*SLMCTL, "export", str(hf), "--format", "onnx", "-o", str(work / "fp32-warm"), "-q"]}
    envs = {"slmctl": {**base_env, "SLMCTL_CACHE": str(cold)}, "slmctl-warm": {**base_env, "SLMCTL_CACHE": str(warm)}}
    outs = {"slmctl": work / "fp32", "slmctl-warm": work / "fp32-warm", "optimum": work / "optimum"}
    if peer_cli.exists():
        src = optimum_source(hf, work / "optimum-src")
        cmds["optimum"] = [str(peer_cli), "export", "onnx", "-m", str(src), "--task", "text-generation-with-past",
                           str(work / "optimum")]
        # optimum runs in its own venv: none of this process's Python settings
        envs["optimum"] = {**base_env, "PATH": f"{PEER / 'bin'}:{os.environ.get('PATH', '')}"}
    else:
        peer_note = f"optimum-cli is not installed in its own environment ({portable(PEER)}; `make peers`)."
    # the warm hash cache is filled once before the rounds (provenance hashing then skipped)
    subprocess.run([*SLMCTL, "inspect", str(hf), "--json"], env=dict(os.environ, SLMCTL_CACHE=str(warm)),
                   capture_output=True, check=False)

    def before(name: str) -> None:
        shutil.rmtree(outs[name], ignore_errors=True)
        shutil.rmtree(cold, ignore_errors=True)  # slmctl pays for hashing its input every time

    unset = ["-u", "PYTHONPATH", "-u", "PYTHONHOME"]
    wrapped = {k: ["env", *(unset if k == "optimum" else []), *(f"{a}={b}" for a, b in envs[k].items()), *c]
               for k, c in cmds.items()}
    log(f"export rounds ({BUILD_ROUNDS}): " + ", ".join(cmds))
    try:
        export_runs = alternate(wrapped, rounds=BUILD_ROUNDS, before=before, cwd=ROOT)
    except RuntimeError as exc:  # the peer failing leaves slmctl's figures; slmctl failing fails the section
        if "optimum" not in str(exc).split(" failed", 1)[0]:
            raise
        peer_note = f"optimum-cli export failed: {str(exc).strip().splitlines()[-1][:300]}"
        log(peer_note)
        cmds.pop("optimum")
        wrapped.pop("optimum")
        export_runs = alternate(wrapped, rounds=BUILD_ROUNDS, before=before, cwd=ROOT)
    export = compare(export_runs, "slmctl", "optimum" if "optimum" in cmds else "slmctl")
    export["time_ratio_warm"] = ratio(export_runs["slmctl-warm"], export_runs["optimum"]) if "optimum" in cmds else None
    if "optimum" not in cmds:
        export["time_ratio"] = export["rss_ratio"] = None
    for k, c in cmds.items():
        commands[k] = portable(" ".join(str(x) for x in c))
    verification = json.loads((work / "fp32" / "slmctl.json").read_text())["verification"]
    if export["time_ratio"] is not None and export["time_ratio"] > 1.0:  # over the target: where does the time go
        before("slmctl")
        export["hot_path"] = hot_path(cmds["slmctl"], cwd=ROOT, env={**os.environ, **envs["slmctl"]})
        log(hot_path_note(export["hot_path"]))
    if "optimum" in cmds:
        peer_check = verify(hf, work / "optimum" / "model.onnx")
        log(f"optimum export vs PyTorch: {peer_check}")
    builds: dict[str, tuple[float, float]] = {"fp32": (export["wall"]["slmctl"]["median"],
                                                       export["rss"]["slmctl"]["median"])}
    if "optimum" in cmds:
        builds["optimum"] = (export["wall"]["optimum"]["median"], export["rss"]["optimum"]["median"])
    for name, extra in (("int8", "int8"), ("int4", "int4")):
        c = [*SLMCTL, "quantize", str(work / "fp32"), "--type", extra, "--no-report", "-o", str(work / name), "-q"]
        r = alternate({name: c}, rounds=1, before=lambda _n, d=work / name: shutil.rmtree(d, ignore_errors=True))
        builds[name] = (r[name][0]["wall_s"], r[name][0]["peak_rss_mib"])
        commands[name] = portable(" ".join(c))

    specs = [("PyTorch fp32 (transformers)", None), ("slmctl ONNX fp32", "fp32"), ("optimum-cli ONNX fp32", "optimum"),
             ("slmctl ONNX int8 (dynamic)", "int8"), ("slmctl ONNX int4 (MatMulNBits, block 32)", "int4")]
    specs = [(n, sub) for n, sub in specs if sub is None or (work / sub / "model.onnx").is_file()]
    log("loading every runtime: " + ", ".join(n for n, _ in specs))
    runners = {n: TorchRunner(hf, ids) if sub is None else OrtRunner(work / sub / "model.onnx", ids) for n, sub in specs}
    res = measure_rounds(runners, log)
    del runners
    gc.collect()
    load1 = os.getloadavg()
    rows = [(n, res[n], builds.get(sub) if sub else None, _size(work / sub) if sub else None) for n, sub in specs]

    fp32 = res["slmctl ONNX fp32"]
    lines = ["## ONNX export (onnxruntime, CPU)\n",
             f"Model `{MODEL}`. One run of `python bench/bench_onnx.py` builds every row, loads every runtime, then runs "
             f"{ROUNDS} rounds; in each round every runtime runs alone, one after the other (the order rotates from "
             f"round to round), with {THREADS} thread(s): prefill of 1x{PREFILL} tokens"
             f"{f' (best of {REPEATS})' if REPEATS > 1 else ''}, then "
             f"greedy decode of {DECODE} tokens with the KV cache carried present -> past (batch 1, context "
             f"{PREFILL}-{PREFILL + DECODE}). Figures are medians over the rounds, with the range in brackets. "
             f"onnxruntime {_version('onnxruntime')}, torch {_version('torch')}, transformers {_version('transformers')}; "
             f"{os.cpu_count()} CPU cores shared with other jobs (load average {load0[0]:.1f} at the start, "
             f"{load1[0]:.1f} at the end).\n",
             f"| runtime | decode tok/s | prefill 1x{PREFILL} ms | decode vs slmctl fp32 | build wall s | build peak RSS MiB | size MiB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r, b, size in rows:
        lines.append(f"| {name} | {r['decode_tps']:.1f} [{r['decode_min']:.1f}-{r['decode_max']:.1f}] | "
                     f"{r['prefill_ms']:.0f} [{r['prefill_min']:.0f}-{r['prefill_max']:.0f}] | "
                     f"{r['decode_tps'] / fp32['decode_tps']:.2f} | "
                     f"{'' if b is None else f'{b[0]:.1f}'} | {'' if b is None else f'{b[1]:.0f}'} | "
                     f"{'' if size is None else f'{size:.1f}'} |")
    lines.append("\nPyTorch runs on weights copied out of the safetensors memory map (read through the map, decode "
                 "was 7x slower on this machine).\n")
    lines.append("Graph difference behind the decode figures: slmctl exports attention through its own eager function "
                 "(query heads of one KV head folded into the query axis, K^T as a last-two-axes Transpose that "
                 "onnxruntime folds into FusedMatMul) and writes RMSNorm's rsqrt as Div, so onnxruntime fuses it into "
                 "SimplifiedLayerNormalization; optimum's graph repeats K and V for grouped-query attention with "
                 "Expand every step. Op counts of the two files: "
                 + "; ".join(f"{k} {_ops(work / sub / 'model.onnx')}" for k, sub in (("slmctl", "fp32"), ("optimum", "optimum"))
                            if (work / sub / "model.onnx").is_file()) + ".\n")
    lines.append(f"Checked against PyTorch (prompt of {verification['prompt_tokens']} tokens, then greedy decode through "
                 "present -> past):\n")
    lines.append("| export | max abs logit diff, prompt | max abs diff, 8 decode steps | top-1 agreement | greedy 32 tokens |")
    lines.append("|---|---:|---:|---:|---|")
    for name, v in (("slmctl", verification), ("optimum-cli", peer_check)):
        if v:
            lines.append(f"| {name} | {v['max_abs_diff_prompt']:.2g} | {v['max_abs_diff_decode']:.2g} | "
                         f"{v['top1_agreement_pct']:.1f}% | {'identical' if v['greedy_identical'] else 'DIFFERENT'} |")
    opt = res.get("optimum-cli ONNX fp32")
    int4 = res.get("slmctl ONNX int4 (MatMulNBits, block 32)")
    lines.append("\nTargets:")
    if opt:
        ok = fp32["decode_tps"] >= opt["decode_tps"]
        wins = sum(a["decode_tps"] >= b["decode_tps"] for a, b in zip(fp32["rounds"], opt["rounds"]))
        lines.append(f"- decode at least as fast as optimum's export: {'met' if ok else 'NOT met'} "
                     f"(median {fp32['decode_tps']:.1f} vs {opt['decode_tps']:.1f} tok/s, "
                     f"{fp32['decode_tps'] / opt['decode_tps']:.2f}x; slmctl at least as fast in {wins} of {ROUNDS} rounds; "
                     f"prefill {fp32['prefill_ms']:.0f} vs {opt['prefill_ms']:.0f} ms).")
    else:
        lines.append("- decode against optimum's export: not measured (" + peer_note + ")")
    if int4:
        ok = int4["decode_tps"] > fp32["decode_tps"]
        lines.append(f"- int4 faster than fp32: {'met' if ok else 'NOT met'} "
                     f"({int4['decode_tps']:.1f} vs {fp32['decode_tps']:.1f} tok/s decode).")
    lines.append("\nBuild commands (each a fresh process through bench/timing.py: wall time with start-up, peak RSS from wait4):\n")
    for name, c in commands.items():
        lines.append(f"- {name}: `{c}`")
    if peer_note and opt is None:
        lines.append(f"\n{peer_note}")
    lines.append(f"\nExport time, slmctl vs optimum-cli (fp32, the same sample): {BUILD_ROUNDS} alternating rounds, each "
                 "command a fresh process, start-up included; `slmctl` hashes its input each time (empty hash cache), "
                 "`slmctl, warm` has it cached (provenance hashing skipped). slmctl's export includes its own check "
                 "against PyTorch (prompt + greedy decode), which optimum-cli's does not run. Ratio: slmctl / optimum.\n")
    lines.append("| command | wall s | peak RSS MiB |")
    lines.append("|---|---:|---:|")
    for k in export["wall"]:
        lines.append(f"| {k} | {fmt(export['wall'][k])} | {export['rss'][k]['median']:.0f} |")
    lines.append(f"\nExport time ratio slmctl / optimum-cli: {fmt_ratio(export['time_ratio'])} (warm hash cache "
                 f"{fmt_ratio(export['time_ratio_warm'])}; target <= 1.0: "
                 + ("not judged" if export["time_ratio"] is None else "met" if export["time_ratio"] <= 1.0 else "NOT met")
                 + f"); peak RSS ratio {fmt_ratio(export['rss_ratio'])}. " + load_note([export]))
    if export.get("hot_path"):
        lines.append(f"\nWhy slmctl's export is over its target: {hot_path_note(export['hot_path'])}.")
    md = "\n".join(lines)
    write_results("onnx", {"model": MODEL, "threads": THREADS, "rounds": ROUNDS, "build_rounds": BUILD_ROUNDS,
                           "decode": {n: {k: v for k, v in r.items()} for n, r in res.items()}, "export": export,
                           "builds": builds, "commands": commands, "verification": {"slmctl": verification,
                                                                                     "optimum": peer_check}},
                  md, packages=("onnxruntime", "onnx", "onnxscript"))
    print(md)
    return 0


def _ops(model_file: Path) -> str:
    """The op types that differ most between exports, counted in the file (before onnxruntime's fusions)."""
    import collections

    import onnx

    m = onnx.load(str(model_file), load_external_data=False)
    c = collections.Counter(n.op_type for n in m.graph.node)
    return ", ".join(f"{k} {c.get(k, 0)}" for k in ("MatMul", "Transpose", "Expand", "Reciprocal", "Div", "Where"))


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
