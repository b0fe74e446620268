"""Hash the tensors of every verb's output on the sample: a refactor must leave them byte-identical.

Runs each case below through the CLI (small calibration so the whole set takes minutes), then records
one sha256 per tensor payload: safetensors tensors (raw bytes, dtype, shape), GGUF tensors (type, shape,
data) and ONNX initializers (plus the sequence of node op types). Provenance, dates and file layout are
left out on purpose: only what a runtime computes with is compared.

    python bench/output_hashes.py -o hashes.json                 # every case
    python bench/output_hashes.py --only prune quantize          # cases whose name starts so
    python bench/output_hashes.py --compare base.json            # exit 1 when any tensor differs

Use `--slmctl` to point at another checkout's CLI (e.g. a worktree of the commit before a refactor).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

S = "sample:smollm2-135m"
CAL = ["--samples", "4"]

# name -> (argv after `slmctl`, output name); `{w}` is the work folder. Order matters: later cases read
# earlier outputs (the merge partner, the distill student, the ONNX model).
CASES: list[tuple[str, list[str], str]] = [
    ("prune-magnitude", ["prune", S, "-m", "magnitude", "--sparsity", "0.5", "--eval-windows", "0"], "prune-magnitude"),
    ("prune-wanda", ["prune", S, "-m", "wanda", "--sparsity", "0.5", *CAL, "--seqlen", "64", "--eval-windows", "0"],
     "prune-wanda"),
    ("prune-sparsegpt-2of4", ["prune", S, "-m", "sparsegpt", "--pattern", "2:4", *CAL, "--seqlen", "64",
                              "--eval-windows", "0"], "prune-sparsegpt"),
    ("prune-wanda-adaptive", ["prune", S, "-m", "wanda", "--sparsity", "0.5", "--adaptive", *CAL, "--seqlen", "64",
                              "--eval-windows", "0"], "prune-wanda-adaptive"),
    ("prune-depth", ["prune", S, "-m", "depth", "--layers", "4", *CAL, "--seqlen", "64", "--eval-windows", "0"],
     "prune-depth"),
    ("prune-width", ["prune", S, "-m", "width", "--heads-ratio", "0.25", "--mlp-ratio", "0.25", *CAL,
                     "--seqlen", "64", "--eval-windows", "0"], "prune-width"),
    ("quantize-rtn", ["quantize", S, "-m", "rtn", "--no-report"], "q-rtn"),
    ("quantize-gptq", ["quantize", S, "-m", "gptq", *CAL, "--seq-len", "64", "--no-report"], "q-gptq"),
    ("quantize-awq", ["quantize", S, "-m", "awq", *CAL, "--seq-len", "64", "--no-report"], "q-awq"),
    ("quantize-gguf-q4_0-gptq", ["quantize", S, "--format", "gguf", "--type", "q4_0", "-m", "gptq", *CAL,
                                "--seq-len", "64", "--no-report"], "q-gguf-q4_0.gguf"),
    ("export-gguf-f16", ["export", S, "--format", "gguf", "--outtype", "f16"], "e-f16.gguf"),
    ("export-gguf-q8_0", ["export", S, "--format", "gguf", "--outtype", "q8_0"], "e-q8_0.gguf"),
    ("export-gguf-q4_k_m-rtn", ["export", S, "--format", "gguf", "--outtype", "q4_k_m", "-m", "rtn"],
     "e-q4_k_m.gguf"),
    ("export-onnx", ["export", S, "--format", "onnx"], "e-onnx"),
    ("quantize-onnx-int8", ["quantize", "{w}/e-onnx/model.onnx", "--bits", "8", "--no-report"], "q-onnx-int8"),
    ("merge-linear", ["merge", S, "{w}/prune-magnitude", "-m", "linear"], "m-linear"),
    ("merge-slerp", ["merge", S, "{w}/prune-magnitude", "-m", "slerp", "--t", "0.3"], "m-slerp"),
    ("merge-ties", ["merge", "{w}/prune-magnitude", "{w}/prune-wanda", "-m", "ties", "--base", S,
                    "--density", "0.5"], "m-ties"),
    ("merge-dare", ["merge", "{w}/prune-magnitude", "{w}/prune-wanda", "-m", "dare_ties", "--base", S,
                    "--density", "0.5", "--seed", "1"], "m-dare"),
    ("distill", ["distill", "-t", S, "-s", "{w}/prune-depth", "--steps", "2", "--batch-size", "1", "--seq-len", "64",
                 "--max-tokens", "4096", "--heldout", "1", "--no-report"], "d-student"),
]


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:16]


def hash_safetensors(path: Path) -> dict[str, str]:
    out = {}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        base = 8 + n
        for name, meta in sorted(header.items()):
            if name == "__metadata__":
                continue
            a, b = meta["data_offsets"]
            f.seek(base + a)
            out[name] = _sha(f"{meta['dtype']}{meta['shape']}".encode(), f.read(b - a))
    return out


def hash_gguf(path: Path) -> dict[str, str]:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    return {t.name: _sha(f"{t.tensor_type.name}{list(t.shape)}".encode(), bytes(t.data.tobytes()))
            for t in sorted(r.tensors, key=lambda t: t.name)}


def hash_onnx(path: Path) -> dict[str, str]:
    import onnx

    m = onnx.load(str(path), load_external_data=True)
    out = {}
    for init in m.graph.initializer:
        arr = onnx.numpy_helper.to_array(init)
        out[init.name] = _sha(f"{arr.dtype}{list(arr.shape)}".encode(), arr.tobytes())
    out["<graph ops>"] = _sha(" ".join(n.op_type for n in m.graph.node).encode())
    return out


def hash_output(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    out: dict[str, str] = {}
    for f in files:
        rel = f.name if path.is_file() else str(f.relative_to(path))
        if f.suffix == ".safetensors":
            out.update({f"{rel}:{k}": v for k, v in hash_safetensors(f).items()})
        elif f.suffix == ".gguf":
            out.update({f"{rel}:{k}": v for k, v in hash_gguf(f).items()})
        elif f.suffix == ".onnx":
            out.update({f"{rel}:{k}": v for k, v in hash_onnx(f).items()})
    if not out:
        raise SystemExit(f"no tensor payload found in {path}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=[], help="case name prefixes")
    ap.add_argument("-o", "--output", help="write the hashes as JSON here")
    ap.add_argument("--compare", help="a JSON written before: exit 1 on any difference")
    ap.add_argument("--slmctl", default=str(Path(sys.executable).with_name("slmctl")),
                    help="the slmctl executable to run (default: beside this Python)")
    ap.add_argument("--python-path", default=None, help="PYTHONPATH for the runs (a checkout to test)")
    ap.add_argument("--keep", help="keep the outputs in this folder")
    ap.add_argument("--hash-only", action="store_true",
                    help="hash the outputs already in --keep instead of running the cases")
    a = ap.parse_args()

    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="slmctl-hashes-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if a.python_path:
        env["PYTHONPATH"] = a.python_path
    env.setdefault("SLMCTL_THREADS", "2")
    result: dict[str, dict[str, str]] = {}
    try:
        for name, argv, outname in CASES:
            if a.only and not any(name.startswith(p) for p in a.only):
                # a later case may need an earlier output: build it quietly when missing
                continue
            out = work / outname
            if a.hash_only:
                if out.exists():
                    result[name] = hash_output(out)
                continue
            argv = [x.replace("{w}", str(work)) for x in argv]
            for dep in [x for x in argv if x.startswith(str(work))]:
                dep_name = Path(dep).relative_to(work).parts[0]
                if not (work / dep_name).exists():
                    _run(a.slmctl, next(c for c in CASES if c[2] == dep_name), work, env)
            t0 = time.time()
            _run(a.slmctl, (name, argv, outname), work, env)
            result[name] = hash_output(out)
            print(f"{name}: {len(result[name])} tensors, {time.time() - t0:.0f} s", file=sys.stderr)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        if a.output:  # what was hashed, even when a later case failed
            Path(a.output).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    if a.compare:
        base = json.loads(Path(a.compare).read_text())
        bad = 0
        for name, tensors in result.items():
            if name not in base:
                print(f"{name}: not in the baseline", file=sys.stderr)
                continue
            ref = base[name]
            diff = sorted(k for k in set(ref) | set(tensors) if ref.get(k) != tensors.get(k))
            status = "identical" if not diff else f"{len(diff)} of {len(ref)} tensors differ, e.g. {diff[:3]}"
            print(f"{name}: {status}")
            bad += bool(diff)
        return 1 if bad else 0
    return 0


def _run(exe: str, case, work: Path, env) -> None:
    name, argv, outname = case
    argv = [x.replace("{w}", str(work)) for x in argv]
    cmd = [exe, *argv, "-o", str(work / outname), "--force"]
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode:
        raise SystemExit(f"{name} failed (exit {p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")


if __name__ == "__main__":
    sys.exit(main())
