"""GGUF export: slmctl vs llama.cpp's convert_hf_to_gguf.py, side by side on the sample, f16 and q8_0.

The peer runs from the llama-cpp-python source package (vendor/llama.cpp) with the gguf-py next to
it on PYTHONPATH, not the installed gguf package. Each run is one child process; wall time and peak
RSS from GNU time. The outputs are compared tensor by tensor. Writes bench/results/gguf.md.

BENCH_LLAMA_CPP_SRC points at a vendor/llama.cpp folder; otherwise the sdist is fetched with
``pip download --no-deps --no-binary :all: llama-cpp-python==<installed>`` into .peers/src.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

from timing import PEERS, results_dir  # noqa: E402  (bench/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(os.environ.get("BENCH_PEERS", str(PEERS / "src")))
REPEATS = int(os.environ.get("BENCH_GGUF_REPEATS", "1"))


def llama_cpp_src() -> Path:
    if os.environ.get("BENCH_LLAMA_CPP_SRC"):
        return Path(os.environ["BENCH_LLAMA_CPP_SRC"])
    ver = metadata.version("llama-cpp-python")
    folder = PEERS / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"
    if not folder.is_dir():
        PEERS.mkdir(parents=True, exist_ok=True)
        sdist = PEERS / f"llama_cpp_python-{ver}.tar.gz"
        if not sdist.is_file():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={ver}", "-d", str(PEERS)], check=True)
        with tarfile.open(sdist) as tf:
            tf.extractall(PEERS, filter="data")
    return folder


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in MiB, exit code) of one child process.

    The child is started by GNU time when present: a child forked from this (large) process would
    report this process's RSS as its own peak, since Linux carries the peak across fork and exec.
    """
    rss_file = Path(tempfile.mkstemp(prefix="bench-rss-")[1])
    gnu_time = Path("/usr/bin/time")
    full = [str(gnu_time), "-f", "%M", "-o", str(rss_file), *cmd] if gnu_time.is_file() else cmd
    t = time.perf_counter()
    p = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    rc = os.waitstatus_to_exitcode(status)
    if rc:
        print(err[-2000:], file=sys.stderr)
    try:
        rss_kb = int(rss_file.read_text().split()[-1]) if gnu_time.is_file() else ru.ru_maxrss
    except (ValueError, IndexError):
        rss_kb = ru.ru_maxrss
    rss_file.unlink(missing_ok=True)
    return wall, rss_kb // 1024, rc


def compare(a: Path, b: Path) -> tuple[int, int]:
    import gguf
    import numpy as np

    ta = {t.name: t for t in gguf.GGUFReader(str(a)).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(str(b)).tensors}
    same = sum(1 for n in ta if n in tb and ta[n].tensor_type == tb[n].tensor_type
               and np.asarray(ta[n].data).tobytes() == np.asarray(tb[n].data).tobytes())
    return same, max(len(ta), len(tb))


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from slmctl.io.resolve import resolve

    model = resolve("sample:smollm2-135m")
    src = llama_cpp_src()
    peer_env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-gguf-"))
    rows = []
    for outtype in ("f16", "q8_0"):
        best: dict[str, tuple[float, int]] = {}
        for r in range(REPEATS):
            for tool in ("slmctl", "convert_hf_to_gguf.py"):
                out = tmp / f"{tool.split('.')[0]}-{outtype}.gguf"
                out.unlink(missing_ok=True)
                if tool == "slmctl":
                    cmd = [sys.executable, "-m", "slmctl", "export", str(model), "--format", "gguf", "--outtype",
                           outtype, "-o", str(out), "--force", "--quiet"]
                    wall, rss, rc = measure(cmd)
                else:
                    cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(model), "--outtype", outtype,
                           "--outfile", str(out)]
                    wall, rss, rc = measure(cmd, peer_env)
                if rc:
                    print(f"{tool} {outtype} failed (exit {rc})", file=sys.stderr)
                    return 1
                print(f"{outtype} {tool}: {wall:.1f} s, {rss} MiB", file=sys.stderr)
                w0, r0 = best.get(tool, (float("inf"), 0))
                best[tool] = (min(w0, wall), max(r0, rss))
        same, total = compare(tmp / f"slmctl-{outtype}.gguf", tmp / f"convert_hf_to_gguf-{outtype}.gguf")
        (s_w, s_r), (p_w, p_r) = best["slmctl"], best["convert_hf_to_gguf.py"]
        rows.append((outtype, s_w, p_w, s_r, p_r, same, total))
    lines = ["## gguf: HF -> GGUF export vs llama.cpp's convert_hf_to_gguf.py", "",
             f"`slmctl export sample:smollm2-135m --format gguf --outtype T` against `convert_hf_to_gguf.py` from "
             f"llama-cpp-python {metadata.version('llama-cpp-python')}'s vendored llama.cpp (with its own gguf-py), "
             f"on the same HF fp32 folder; each a fresh process, best wall time of {REPEATS} run(s), peak RSS "
             "from GNU time. Identical tensors: same type and the same bytes in both files.", "",
             "| outtype | slmctl s | peer s | time ratio | slmctl peak MiB | peer peak MiB | RSS ratio | identical tensors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t, s_w, p_w, s_r, p_r, same, total in rows:
        lines.append(f"| {t} | {s_w:.1f} | {p_w:.1f} | {s_w / p_w:.2f} | {s_r} | {p_r} | {s_r / p_r:.2f} | {same}/{total} |")
    (results_dir() / "gguf.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
