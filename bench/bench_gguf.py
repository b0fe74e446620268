"""GGUF export: slmctl vs llama.cpp's convert_hf_to_gguf.py, side by side, at two sizes at least.

Sizes: the real sample (SmolLM2-135M, fp32 folder) and random-weight models of real shapes from
bench/shapes.py (Qwen2.5-0.5B by default; add qwen2.5-1.5b with BENCH_GGUF_SHAPES), so the peer's fixed
start-up cost cannot hide a per-byte difference. Types f16 and q8_0. Each pair alternates over
BENCH_ROUNDS rounds (the first tool rotating), each command a fresh process measured by bench/timing.py
(wall time with start-up, peak RSS from wait4, load, other processes' CPU); medians with the range.
slmctl hashes its inputs for the provenance record: it runs once with an empty hash cache (the figure
compared) and once with a warm one (hashing skipped), so the cost of provenance shows. The outputs are
compared tensor by tensor. The peer is convert_hf_to_gguf.py from the llama-cpp-python source package
(vendor/llama.cpp, with the gguf-py beside it), fetched by ``pip download`` into .peers/src.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import fsynced  # noqa: E402  (bench/ is on sys.path)
from timing import PEERS, ROOT, alternate, cells, compare as compare_runs, fmt, fmt_ratio as _r, hot_path, \
    hot_path_note, load_note, ratio, \
    write_results  # noqa: E402  (bench/ is on sys.path)

OUT = ROOT / "bench" / "out" / "gguf"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SHAPES = os.environ.get("BENCH_GGUF_SHAPES", "sample qwen2.5-0.5b").split()
TYPES = os.environ.get("BENCH_GGUF_TYPES", "f16 q8_0").split()


def llama_cpp_src() -> Path:
    if os.environ.get("BENCH_LLAMA_CPP_SRC"):
        return Path(os.environ["BENCH_LLAMA_CPP_SRC"])
    src = PEERS / "src"
    ver = metadata.version("llama-cpp-python")
    folder = src / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"
    if not folder.is_dir():
        src.mkdir(parents=True, exist_ok=True)
        sdist = src / f"llama_cpp_python-{ver}.tar.gz"
        if not sdist.is_file():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={ver}", "-d", str(src)], check=True)
        with tarfile.open(sdist) as tf:
            tf.extractall(src, filter="data")
    return folder


def compare(a: Path, b: Path) -> tuple[int, int]:
    """(tensors with the same type and bytes in both files, tensors in the larger file)."""
    import gguf
    import numpy as np

    ta = {t.name: t for t in gguf.GGUFReader(str(a)).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(str(b)).tensors}
    same = sum(1 for n in ta if n in tb and ta[n].tensor_type == tb[n].tensor_type
               and np.asarray(ta[n].data).tobytes() == np.asarray(tb[n].data).tobytes())
    return same, max(len(ta), len(tb))


def model_folder(shape: str) -> Path:
    sys.path.insert(0, str(ROOT))
    if shape == "sample":
        from slmctl.io.resolve import resolve

        return Path(resolve("sample:smollm2-135m"))
    from shapes import build  # noqa: E402

    return build(shape)


def main() -> int:
    from shapes import parameters  # noqa: E402

    src = llama_cpp_src()
    OUT.mkdir(parents=True, exist_ok=True)
    slm = [sys.executable, "-m", "slmctl"]
    rows, data = [], []
    for shape in SHAPES:
        model = model_folder(shape)
        params = parameters(model)
        for t in TYPES:
            outs = {k: OUT / f"{shape}-{t}-{k}.gguf" for k in ("slmctl", "slmctl-warm", "convert", "convert-fsynced")}
            cold, warm = OUT / "cache-cold", OUT / "cache-warm"

            def before(name: str) -> None:
                outs[name].unlink(missing_ok=True)
                Path(str(outs[name]) + ".slmctl.json").unlink(missing_ok=True)
                shutil.rmtree(cold, ignore_errors=True)  # slmctl pays for hashing its inputs every time

            cmds = {"slmctl": [*slm, "export", str(model), "--format", "gguf", "--outtype", t, "-o",
                               str(outs["slmctl"]), "--quiet"],
                    "convert": [sys.executable, str(src / "convert_hf_to_gguf.py"), str(model), "--outtype", t,
                                "--outfile", str(outs["convert"])],
                    "slmctl-warm": [*slm, "export", str(model), "--format", "gguf", "--outtype", t, "-o",
                                    str(outs["slmctl-warm"]), "--quiet"]}
            # the converter with its output fsynced, as slmctl's writer does before the rename
            cmds["convert-fsynced"] = fsynced.command([*cmds["convert"][:-1], outs["convert-fsynced"]],
                                                      outs["convert-fsynced"])
            # the warm hash cache is filled once before the rounds
            subprocess.run([*slm, "inspect", str(model), "--json"], env=dict(os.environ, SLMCTL_CACHE=str(warm)),
                           capture_output=True, check=False)
            envs = {"slmctl": {"SLMCTL_CACHE": str(cold)}, "slmctl-warm": {"SLMCTL_CACHE": str(warm)},
                    "convert": {"PYTHONPATH": str(src / "gguf-py")}, "convert-fsynced": {"PYTHONPATH": str(src / "gguf-py")}}
            plain = dict(cmds)
            for name in cmds:  # each command sets its own environment through env(1)
                cmds[name] = ["env", *(f"{k}={v}" for k, v in envs[name].items()), *cmds[name]]
            runs = alternate(cmds, rounds=ROUNDS, before=before)
            same, total = compare(outs["slmctl"], outs["convert"]) if outs["slmctl"].is_file() and \
                outs["convert"].is_file() else (0, 0)
            entry = {"shape": shape, "parameters": params, "outtype": t, "identical_tensors": [same, total],
                     **compare_runs(runs, "slmctl", "convert"),
                     "time_ratio_warm": ratio(runs["slmctl-warm"], runs["convert"]),
                     "time_ratio_fsynced": ratio(runs["slmctl"], runs["convert-fsynced"])}
            if entry["time_ratio"] is not None and entry["time_ratio"] > 0.5:  # over the target: where the time goes
                before("slmctl")
                entry["hot_path"] = hot_path(plain["slmctl"], env={**os.environ, **envs["slmctl"]})
            data.append(entry)
            print(f"{shape} {t}: slmctl {entry['wall']['slmctl']['median']:.1f} s, convert "
                  f"{entry['wall']['convert']['median']:.1f} s", file=sys.stderr, flush=True)
    md = render(data, src)
    write_results("gguf", {"rounds": ROUNDS, "results": data}, md, packages=("llama-cpp-python", "gguf", "numpy"))
    print(md)
    return 0


def render(data: list[dict], src: Path) -> str:
    ver = metadata.version("llama-cpp-python")
    L = ["## gguf: HF -> GGUF export vs llama.cpp's convert_hf_to_gguf.py", "",
         f"`slmctl export MODEL --format gguf --outtype T` against `convert_hf_to_gguf.py MODEL --outtype T` from "
         f"llama-cpp-python {ver}'s vendored llama.cpp (with its own gguf-py), on the same HF folder. Models: the "
         "sample (`sample:smollm2-135m`, fp32) and random-weight bf16 models of real shapes (`bench/shapes.py`, "
         "the sample's tokenizer). Each command a fresh process, start-up included; "
         f"{ROUNDS} alternating rounds, median [min-max] of the uncontended rounds. `slmctl` hashes its inputs "
         "each time (empty hash cache); `slmctl, warm` has them cached (provenance hashing skipped). "
         "Identical tensors: same type and bytes in both files. Ratio: slmctl / converter.", "",
         "| model | params | type | slmctl s | slmctl, warm s | converter s | time ratio (warm) | slmctl MiB | "
         "converter MiB | RSS ratio | identical tensors |",
         "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in data:
        L.append(f"| {e['shape']} | {e['parameters'] / 1e6:.0f}M | {e['outtype']} | {cells(e, 'convert')} | "
                 f"{e['identical_tensors'][0]}/{e['identical_tensors'][1]} |")
    L += ["", "Target: slmctl at most 0.5x the converter's wall time and peak RSS, at every size and type."]
    for e in data:
        t, r = e["time_ratio"], e["rss_ratio"]
        verdict = "not judged (contended)" if t is None or r is None else \
            "met" if t <= 0.5 and r <= 0.5 else "NOT met"
        d = e.get("time_ratio_fsynced")
        L.append(f"- {e['shape']} {e['outtype']}: time {_r(t)}, RSS {_r(r)}: {verdict}"
                 + ("" if d is None else f"; against the converter with its output fsynced (as slmctl's is before "
                    f"the rename; {fmt(e['wall']['convert-fsynced'])} s): time {_r(d)}")
                 + (f". Where slmctl's time goes: {hot_path_note(e['hot_path'])}" if e.get("hot_path") else ""))
    L += ["", load_note(data)]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
