"""Shared by the bench scripts: fresh-process measurement, alternating rounds, machine facts, results.

Every command is measured the same way for slmctl and for its peer: started as a fresh process through
bench/launch.py (so its peak RSS is its own, read from wait4's rusage; GNU time is not needed), wall time
end to end with start-up included, the load average before and after, and how many cores' worth of CPU
other processes took while it ran. Dirty pages are written out (``sync``) before each command, so no command
pays for the previous one's writes. A pair measured while something else used more than
``CONTENDED_CORES`` is rerun, and marked if it stays contended; ratios come from uncontended rounds only.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = Path(__file__).resolve().parent / "launch.py"
# peer tools' venvs, built by `make peers` (project-relative .peers/, or $SLMCTL_PEERS)
PEERS = Path(os.environ.get("SLMCTL_PEERS", ROOT / ".peers"))
CORES = os.cpu_count() or 1
CONTENDED_CORES = float(os.environ.get("BENCH_CONTENDED_CORES", "0.5"))


def portable(text: str) -> str:
    """A command or path as the committed results show it: the project folder relative, the home folder
    and the temporary folder as variables, so no path of this machine lands in a committed file."""
    text = str(text).replace(sys.executable, "python")
    text = text.replace(str(ROOT) + "/", "").replace(str(ROOT), ".")
    text = text.replace(tempfile.gettempdir() + "/", "$TMPDIR/")
    return text.replace(str(Path.home()) + "/", "~/")


def measure(cmd: list[str], cwd=None, env: dict | None = None, capture: bool = True) -> dict:
    """Run ``cmd`` once as a fresh process: {"rc", "wall_s", "cpu_s", "peak_rss_mib", "load_before",
    "load_after", "other_cores", "contended", "stdout", "stderr"}."""
    with tempfile.TemporaryDirectory(prefix="slmctl-bench-") as d:
        rep = Path(d) / "report.json"
        pipe = subprocess.PIPE if capture else None
        r = subprocess.run([sys.executable, "-S", "-E", str(LAUNCH), str(rep), *map(str, cmd)], cwd=cwd, env=env,
                           stdout=pipe, stderr=pipe, text=True)
        if not rep.is_file():
            raise RuntimeError(f"bench launcher failed to start {cmd[0]}: {r.stderr[-2000:] if r.stderr else r.returncode}")
        m = json.loads(rep.read_text())
    other = m["other_cores"]
    m.update(stdout=r.stdout or "", stderr=r.stderr or "",
             contended=(other is not None and other > CONTENDED_CORES) or m["load_before"][0] > CORES)
    return m


def timed(cmd: list[str], cwd=None, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """One fresh-process run: (result with stdout/stderr, wall seconds, peak RSS MiB)."""
    m = measure(cmd, cwd=cwd, env=env)
    return subprocess.CompletedProcess(cmd, m["rc"], m["stdout"], m["stderr"]), m["wall_s"], m["peak_rss_mib"]


def alternate(cmds: dict[str, list[str]], rounds: int = 3, before=None, cwd=None, env: dict | None = None,
              retries: int | None = None) -> dict[str, list[dict]]:
    """Measure each named command ``rounds`` times, alternating, the first tool rotating each round.
    ``before(name)`` runs before every measurement (e.g. to remove the previous output, so caches and outputs
    are the same for both sides). A round in which any command was contended is rerun up to ``retries`` times
    (default $BENCH_RETRIES or 2), then kept and marked. A failing command raises with its stderr."""
    if retries is None:  # BENCH_RETRIES=0 for smoke runs on a busy machine
        retries = int(os.environ.get("BENCH_RETRIES", "2"))
    names = list(cmds)
    out: dict[str, list[dict]] = {n: [] for n in names}
    for i in range(rounds):
        order = names[i % len(names):] + names[:i % len(names)]
        for attempt in range(retries + 1):
            got = {}
            for n in order:
                if before:
                    before(n)
                # the previous command's dirty pages (a peer that does not fsync leaves gigabytes of them) are
                # written out before the next command starts, not during it: each side starts from a clean cache
                os.sync()
                m = measure(cmds[n], cwd=cwd, env=env)
                if m["rc"] != 0:
                    raise RuntimeError(f"{n} failed (exit {m['rc']}): {' '.join(map(str, cmds[n]))}\n{m['stderr'][-3000:]}")
                m.update(round=i, attempt=attempt)
                got[n] = m
            if not any(m["contended"] for m in got.values()) or attempt == retries:
                break
            print(f"round {i}: contended (other cores {[round(m['other_cores'] or 0, 2) for m in got.values()]}), rerun",
                  file=sys.stderr)
        for n, m in got.items():
            out[n].append(m)
    return out


def hot_path(cmd: list[str], top: int = 6, cwd=None, env: dict | None = None) -> dict:
    """Why a command is slow: run it once under cProfile (``cmd`` starts ``python -m MODULE``) and return the
    share of its self time by top-level package and its ``top`` functions by self time. For a target a
    section did not meet, so the page says where the time goes instead of only that it is over."""
    import pstats

    if len(cmd) < 3 or cmd[1] != "-m":
        raise ValueError(f"hot_path needs a `python -m MODULE ...` command, got {cmd[:3]}")
    with tempfile.TemporaryDirectory(prefix="slmctl-prof-") as d:
        prof = Path(d) / "run.prof"
        r = subprocess.run([cmd[0], "-m", "cProfile", "-o", str(prof), *cmd[1:]], cwd=cwd, env=env,
                           capture_output=True, text=True)
        if r.returncode or not prof.is_file():
            return {"error": f"exit {r.returncode}: {(r.stderr or '')[-500:]}"}
        st = pstats.Stats(str(prof))
    total = sum(v[2] for v in st.stats.values()) or 1.0  # self time of every function
    by_pkg: dict[str, float] = {}
    rows = []
    for (file, line, func), (_, _, tt, ct, _) in st.stats.items():
        pkg = _package(file, func)
        by_pkg[pkg] = by_pkg.get(pkg, 0.0) + tt
        rows.append((tt, f"{pkg}:{Path(file).name}:{func}" if file != "~" else func))
    rows.sort(reverse=True)
    return {"total_s": round(total, 2),
            "packages": {k: round(v / total, 3) for k, v in sorted(by_pkg.items(), key=lambda kv: -kv[1])[:top]},
            "functions": [{"function": n, "self_s": round(t, 2), "share": round(t / total, 3)} for t, n in rows[:top]]}


def _package(file: str, func: str = "") -> str:
    """The top-level package a profiled function's file belongs to; C functions (file ``~``) by the module their
    name shows (``<built-in method torch._C...>``), else ``builtins``."""
    if file == "~" or file.startswith("<"):
        for lib in ("torch", "numpy", "onnxruntime", "onnx", "safetensors", "llama_cpp", "_io", "posix"):
            if lib in func:
                return f"{lib} (C)"
        return "builtins"
    parts = Path(file).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return parts[parts.index(marker) + 1].removesuffix(".py")
    if "slmctl" in parts:
        return "slmctl"
    return "python"


def hot_path_note(h: dict) -> str:
    """One sentence for the page: where the profiled command's time goes."""
    if "error" in h:
        return f"profile failed ({h['error']})"
    pk = ", ".join(f"{k} {v * 100:.0f}%" for k, v in h["packages"].items())
    fn = "; ".join(f"{f['function']} {f['share'] * 100:.0f}%" for f in h["functions"][:4])
    return f"cProfile of one run ({h['total_s']:.0f} s of self time): by package {pk}; hottest functions {fn}"


def stats(runs: list[dict], key: str = "wall_s") -> dict:
    """Median and range of ``key`` over the uncontended runs (all runs, marked, when every one was contended)."""
    clean = [r[key] for r in runs if not r["contended"]]
    vals = clean or [r[key] for r in runs]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals),
            "contended": not clean}


def ratio(a: list[dict], b: list[dict], key: str = "wall_s") -> float | None:
    """Median of a over median of b, uncontended rounds only; None when either side has none."""
    sa, sb = stats(a, key), stats(b, key)
    if sa["contended"] or sb["contended"] or not sb["median"]:
        return None
    return sa["median"] / sb["median"]


def fmt(s: dict, digits: int = 1) -> str:
    """A stats() result as "median [min-max]", marked when every round was contended."""
    star = " (contended)" if s["contended"] else ""
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]{star}"


def fmt_ratio(x: float | None) -> str:
    return "not reported (contended)" if x is None else f"{x:.2f}x"


def compare(runs: dict[str, list[dict]], ours: str, peer: str) -> dict:
    """What a section records for one alternating comparison: the rounds (without their output), wall time and
    peak RSS stats per command, and slmctl / peer ratios (None where the rounds were contended)."""
    return {"runs": {k: [{kk: vv for kk, vv in r.items() if kk not in ("stdout", "stderr")} for r in v]
                     for k, v in runs.items()},
            "wall": {k: stats(v) for k, v in runs.items()},
            "rss": {k: stats(v, "peak_rss_mib") for k, v in runs.items()},
            "time_ratio": ratio(runs[ours], runs[peer]),
            "rss_ratio": ratio(runs[ours], runs[peer], "peak_rss_mib")}


def cells(e: dict, peer: str) -> str:
    """The table cells of one compare() result with a warm-cache slmctl row: slmctl s | slmctl, warm s | peer s |
    time ratio (warm) | slmctl MiB | peer MiB | RSS ratio."""
    w, r = e["wall"], e["rss"]
    return (f"{fmt(w['slmctl'])} | {fmt(w['slmctl-warm'])} | {fmt(w[peer])} | {fmt_ratio(e['time_ratio'])} "
            f"({fmt_ratio(e['time_ratio_warm'])}) | {r['slmctl']['median']:.0f} | {r[peer]['median']:.0f} | "
            f"{fmt_ratio(e['rss_ratio'])}")


def load_note(entries: list[dict]) -> str:
    """One sentence on how quiet the machine was over the recorded rounds of ``entries`` (compare() results)."""
    rs = [x for e in entries for v in e["runs"].values() for x in v]
    if not rs:
        return ""
    loads = [x["load_before"][0] for x in rs] + [x["load_after"][0] for x in rs]
    other = [x["other_cores"] or 0 for x in rs]
    return (f"1-minute load average before/after the commands: {min(loads):.2f}-{max(loads):.2f} ({CORES} cores); "
            f"other processes' CPU during them: {min(other):.2f}-{max(other):.2f} cores (a round above "
            f"{CONTENDED_CORES} is rerun, then marked, and gives no ratio).")


def machine() -> dict:
    """CPU model, cores, memory and OS of this machine."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2 ** 20, 1)
                break
    return {"cpu": cpu, "cores": CORES, "memory_gib": mem, "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version()}


def versions(*packages: str) -> dict:
    from importlib import metadata

    out = {}
    for p in ("slmctl", "torch", "transformers", *packages):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def run_id() -> str:
    """The id of this `make bench` run (bench/run.py sets it for every section), or a new one."""
    rid = os.environ.get("SLMCTL_BENCH_RUN_ID")
    if rid:
        return rid
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    rid = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + (f"-{sha}" if sha else "")
    os.environ["SLMCTL_BENCH_RUN_ID"] = rid  # one id for the whole process (and the commands it starts)
    return rid


def results_dir() -> Path:
    """Where a section writes its results: bench/run.py points this at a staging folder and moves the files
    into bench/results/ only when the section succeeded, so a failed run keeps the previous figures."""
    d = Path(os.environ.get("SLMCTL_BENCH_RESULTS", ROOT / "bench" / "results"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_results(section: str, data: dict, markdown: str | None = None, packages: tuple[str, ...] = ()) -> Path:
    """bench/results/SECTION.json (run id, date, machine, versions, the section's data) and, when given, the
    Markdown fragment SECTION.md that docs/benchmarks.md is built from."""
    d = results_dir()
    doc = {"section": section, "run_id": run_id(),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": machine(), "versions": versions(*packages), **data}
    path = d / f"{section}.json"
    # no path of this machine in a committed file: the project, temporary and home folders as variables
    path.write_text(portable(json.dumps(doc, indent=1, default=str)) + "\n")
    if markdown is not None:
        (d / f"{section}.md").write_text(portable(markdown.rstrip()) + "\n")
    return path


@contextlib.contextmanager
def heavy(lock: str | None):
    """Hold ``lock`` (flock(2), the same lock as `flock FILE cmd`) around one command, so that heavy jobs
    run one at a time and a command's wall time never includes the wait for the lock; no-op without one."""
    if not lock:
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
