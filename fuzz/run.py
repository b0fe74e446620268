"""Fuzz slmctl's readers: N malformed inputs per format, each under a 10 s and 1 GiB bound.

    python fuzz/run.py --per-format 10000            # the long run (make fuzz)
    python fuzz/run.py --per-format 100 --json       # a short one; prints the figures as JSON

One worker process per format runs the inputs in a loop (fuzz/harness.py does the work) with
RLIMIT_AS = 1 GiB, so an input that tries to allocate more fails with MemoryError, which counts as a
crash. The driver watches the worker: an input that runs longer than --timeout seconds, or kills the
worker, is a crash too; the worker is restarted at the next input. Crashing inputs are saved under
--crashes with their message, and minimised when --minimise is given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEM_LIMIT = 1 << 30


def _limit_memory() -> None:  # runs in the worker before exec
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))
    os.setsid()


def worker(fmt: str, seed: int, start: int, stop: int, workdir: Path, results: Path, timeout: float,
           cli_every: int, export_every: int) -> None:
    """Run inputs [start, stop) of one format; one JSON line per input in ``results``."""
    sys.path.insert(0, str(ROOT / "fuzz"))
    os.environ["SLMCTL_CACHE"] = str(workdir / "cache")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import harness  # noqa: E402
    import torch

    torch.set_num_threads(1)

    class Timeout(BaseException):
        pass

    def on_alarm(signum, frame):
        raise Timeout()

    signal.signal(signal.SIGALRM, on_alarm)
    fz = harness.Fuzzer(fmt, workdir, seed)
    with open(results, "a") as res:
        for i in range(start, stop):
            (workdir / "current").write_text(str(i))
            try:
                p = fz.make(i)
            except Exception as exc:  # a bug in the mutator, not in slmctl: counted apart
                res.write(json.dumps({"i": i, "outcome": "harness-error", "secs": None,
                                      "msg": f"{type(exc).__name__}: {exc}"[:500]}) + "\n")
                res.flush()
                continue
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                outcome = harness.check(p, workdir, cli=(i % cli_every == 0), export=(i % export_every == 0),
                                        human=(i % export_every == 0))
                msg = ""
            except harness.Crash as exc:
                outcome, msg = "crash", str(exc)
            except Timeout:
                outcome, msg = "crash", f"took more than {timeout} s"
            except MemoryError:
                outcome, msg = "crash", "MemoryError: more than 1 GiB"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            secs = time.perf_counter() - t0
            if outcome == "crash":
                _save_crash(workdir.parent / "crashes", fmt, i, p, msg)
            res.write(json.dumps({"i": i, "outcome": outcome, "secs": round(secs, 4), "msg": msg[:2000],
                                  "exported": outcome == "accepted" and i % export_every == 0}) + "\n")
            res.flush()


def _save_crash(crashes: Path, fmt: str, i: int, p: Path, msg: str) -> None:
    crashes.mkdir(parents=True, exist_ok=True)
    dest = crashes / f"{fmt}-{i:06d}{p.suffix}"
    try:
        dest.write_bytes(p.read_bytes())
        (crashes / f"{fmt}-{i:06d}.txt").write_text(msg + "\n")
    except OSError:
        pass


def signature(msg: str) -> str:
    """A crash message without numbers and paths, to count distinct crashes."""
    first = msg.strip().splitlines()[0] if msg.strip() else "?"
    first = re.sub(r"/[^\s:'\"]+", "<path>", first)
    return re.sub(r"\d+", "N", first)[:200]


def drive(fmt: str, n: int, seed: int, root: Path, timeout: float, cli_every: int, export_every: int,
          log) -> dict:
    workdir = root / fmt
    workdir.mkdir(parents=True, exist_ok=True)
    results = root / f"{fmt}.jsonl"
    results.write_text("")
    done = 0
    start = 0
    t_begin = time.perf_counter()
    peak_rss = 0
    while start < n:
        cur = workdir / "current"
        if cur.exists():
            cur.unlink()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", fmt, "--seed", str(seed),
               "--start", str(start), "--stop", str(n), "--workdir", str(workdir), "--results", str(results),
               "--timeout", str(timeout), "--cli-every", str(cli_every),
               "--export-every", str(export_every)]
        proc = subprocess.Popen(cmd, preexec_fn=_limit_memory, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        last_i, last_change = None, time.monotonic()
        while proc.poll() is None:
            time.sleep(0.2)
            try:
                i = int(cur.read_text())
            except (OSError, ValueError):
                i = None
            if i != last_i:
                last_i, last_change = i, time.monotonic()
            elif i is not None and time.monotonic() - last_change > timeout * 3 + 30:
                os.killpg(proc.pid, signal.SIGKILL)  # a hang the alarm could not break
                proc.wait()
                break
        _, err = proc.communicate()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_rss = max(peak_rss, ru.ru_maxrss * 1024)
        lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        done_is = {r["i"] for r in lines}
        if proc.returncode == 0 and len(done_is) >= n:
            break
        # the worker died on an input: that input is a crash; go on after it
        try:
            bad = int(cur.read_text())
        except (OSError, ValueError):
            bad = max(done_is, default=start - 1) + 1
        if bad not in done_is:
            msg = (f"worker died (exit {proc.returncode}) or hung: "
                   + (err.decode(errors="replace").strip().splitlines() or ["?"])[-1])
            case = next((workdir / "case").glob("*.*"), None) if (workdir / "case").exists() else None
            if case is not None:
                _save_crash(root / "crashes", fmt, bad, case, msg)
            with open(results, "a") as f:
                f.write(json.dumps({"i": bad, "outcome": "crash", "secs": None, "msg": msg}) + "\n")
        start = bad + 1
        log(f"{fmt}: worker restarted at input {start}")
    lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    crashes = [r for r in lines if r["outcome"] == "crash"]
    sigs: dict[str, int] = {}
    for r in crashes:
        sigs[signature(r["msg"])] = sigs.get(signature(r["msg"]), 0) + 1
    secs = [r["secs"] for r in lines if r["secs"] is not None]
    return {
        "format": fmt, "inputs": len(lines),
        "rejected": sum(r["outcome"] == "rejected" for r in lines),
        "accepted": sum(r["outcome"] == "accepted" for r in lines),
        "exported": sum(bool(r.get("exported")) for r in lines),
        "crashes": len(crashes), "distinct_crashes": sigs,
        "harness_errors": sum(r["outcome"] == "harness-error" for r in lines),
        "max_secs": max(secs, default=0.0), "mean_secs": round(sum(secs) / max(1, len(secs)), 4),
        "wall_secs": round(time.perf_counter() - t_begin, 1), "peak_rss_bytes": peak_rss,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-format", type=int, default=10000, help="inputs per format")
    ap.add_argument("--formats", default="safetensors,gguf,onnx")
    ap.add_argument("--seed", type=int, default=20261129)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds one input may take")
    ap.add_argument("--cli-every", type=int, default=1,
                    help="run `slmctl inspect` on every k-th rejected input too (accepted ones always go "
                         "through inspect and export)")
    ap.add_argument("--export-every", type=int, default=1,
                    help="run `slmctl inspect` (--json and not) and `slmctl export` on the accepted inputs whose "
                         "number is a multiple of k (all accepted inputs have every tensor loaded)")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON document")
    # worker mode (internal)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--stop", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.seed, a.start, a.stop, a.workdir, a.results, a.timeout, a.cli_every, a.export_every)
        return 0
    root = a.out or Path(tempfile.mkdtemp(prefix="slmctl-fuzz-"))
    root.mkdir(parents=True, exist_ok=True)
    log = (lambda m: print(m, file=sys.stderr)) if True else None
    figures = []
    for fmt in a.formats.split(","):
        fig = drive(fmt, a.per_format, a.seed, root, a.timeout, a.cli_every, a.export_every, log)
        figures.append(fig)
        log(f"{fmt}: {fig['inputs']} inputs, {fig['rejected']} rejected, {fig['accepted']} accepted, "
            f"{fig['crashes']} crashes, slowest {fig['max_secs']:.2f} s, {fig['wall_secs']} s in all")
    doc = {"seed": a.seed, "per_format": a.per_format, "timeout_s": a.timeout, "memory_limit_bytes": MEM_LIMIT,
           "cli_every": a.cli_every, "export_every": a.export_every, "work": str(root), "formats": figures,
           "crashes": sum(f["crashes"] for f in figures)}
    if a.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{'format':<12} {'inputs':>7} {'rejected':>9} {'accepted':>9} {'crashes':>8} {'harness':>8} "
              f"{'slowest s':>10} {'peak RSS MB':>12}")
        for f in figures:
            print(f"{f['format']:<12} {f['inputs']:>7} {f['rejected']:>9} {f['accepted']:>9} {f['crashes']:>8} "
                  f"{f['harness_errors']:>8} {f['max_secs']:>10.2f} {f['peak_rss_bytes'] / 2**20:>12.0f}")
        for f in figures:
            for sig, k in f["distinct_crashes"].items():
                print(f"  {f['format']}: {k} x {sig}")
        print(f"crashing inputs (if any): {root / 'crashes'}")
    return 1 if doc["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
