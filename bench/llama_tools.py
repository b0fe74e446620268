"""llama.cpp's command-line tools (llama-imatrix, ...) built from the llama-cpp-python source package.

The Python package ships the library only; its source package vendors the whole llama.cpp tree
(bench_gguf.llama_cpp_src fetches and unpacks it into .peers/src). This builds the named CMake
targets from that tree into .peers/llama-build-VERSION with the settings llama-cpp-python's own build
uses on this machine (Release, GGML_NATIVE: the CPU's own instruction set), once; later calls reuse it.
Needs cmake and a C++ compiler (the same ones `make setup` needs for llama-cpp-python).

    python bench/llama_tools.py llama-imatrix     # build, print the binary's path
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import PEERS  # noqa: E402

JOBS = os.environ.get("JOBS", str(os.cpu_count() or 1))


def build_dir() -> Path:
    return PEERS / f"llama-build-{metadata.version('llama-cpp-python')}"


def tool(name: str) -> Path:
    """The path of llama.cpp's ``name`` (e.g. llama-imatrix), built first when it is not there yet."""
    out = build_dir()
    exe = out / "bin" / name
    if exe.is_file():
        return exe
    for need in ("cmake", "c++"):
        if shutil.which(need) is None:
            raise RuntimeError(f"building {name} needs {need} on PATH (the same toolchain llama-cpp-python builds with)")
    from bench_gguf import llama_cpp_src

    src = llama_cpp_src()
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(src), "-B", str(out), *gen, "-DCMAKE_BUILD_TYPE=Release",
                    "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON",
                    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
                    "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF"],
                   check=True, stdout=sys.stderr)
    subprocess.run(["cmake", "--build", str(out), "--target", name, "-j", JOBS], check=True, stdout=sys.stderr)
    if not exe.is_file():
        found = sorted(out.rglob(name))
        if not found:
            raise RuntimeError(f"the llama.cpp build in {out} made no {name}")
        exe.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(found[0], exe)
    return exe


if __name__ == "__main__":
    for n in sys.argv[1:] or ["llama-imatrix"]:
        print(tool(n))
