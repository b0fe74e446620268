"""Plots (matplotlib, when installed): a sweep's latency against depth, and a profile's curves.

``out`` names the PNG; an SVG is written beside it. Both go through atomic_path.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UnsupportedError


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UnsupportedError("plots need matplotlib", hint="pip install matplotlib (or drop --plot)") from None
    return plt


def _paths(out: Path) -> list[Path]:
    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg"):
        out = out.with_suffix(".png")
    return [out.with_suffix(".png"), out.with_suffix(".svg")]


def _save(fig, out: Path, force: bool) -> list[Path]:
    from ..io.atomic import atomic_path

    written = []
    for p in _paths(out):
        with atomic_path(p, force=force) as tmp:
            fig.savefig(tmp, format=p.suffix[1:], dpi=120, bbox_inches="tight")
        written.append(p)
    return written


def plot_sweep(rep: dict, out: Path, *, force: bool = False) -> list[Path]:
    """Left: decode ms/step against depth, one line per batch size, Pareto shapes starred.
    Right: batch-1 against large-batch latency, with the Pareto front."""
    plt = _plt()
    cs = sorted(rep["configs"], key=lambda c: c["layers"])
    batches = [str(b) for b in rep["settings"]["batch"]]
    fig, axes = plt.subplots(1, 2 if len(batches) > 1 else 1, figsize=(11 if len(batches) > 1 else 6, 4.2))
    axes = list(axes) if len(batches) > 1 else [axes]
    ax = axes[0]
    for b in batches:
        xs = [c["layers"] for c in cs if b in c["decode"]]
        ys = [c["decode"][b]["p50_ms"] for c in cs if b in c["decode"]]
        ax.plot(xs, ys, marker="o", label=f"batch {b}")
        px = [c["layers"] for c in cs if b in c["decode"] and c["pareto"]]
        py = [c["decode"][b]["p50_ms"] for c in cs if b in c["decode"] and c["pareto"]]
        ax.scatter(px, py, marker="*", s=160, color="gold", edgecolor="black", zorder=5)
    ax.set_xscale("log", base=2)
    ax.set_xticks([c["layers"] for c in cs])
    ax.set_xticklabels([f"{c['layers']}\n{c['hidden']}" for c in cs], fontsize=8)
    ax.set_xlabel("layers / hidden size")
    ax.set_ylabel("decode latency, ms per step (p50)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(title="* Pareto front")
    n = rep["params_target"]
    size = f"{n / 1e9:.2g}B" if n >= 1e9 else f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k"
    ax.set_title(f"{size} parameters on {rep['target']} ({rep['device']})")
    if len(batches) > 1:
        lo, hi = batches[0], batches[-1]
        ax2 = axes[1]
        pts = [(c["decode"][lo]["p50_ms"], c["decode"][hi]["p50_ms"], c) for c in cs
               if lo in c["decode"] and hi in c["decode"]]
        ax2.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:blue")
        for x, y, c in pts:
            ax2.annotate(f"{c['layers']}x{c['hidden']}", (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
        front = sorted((p for p in pts if p[2]["pareto"]), key=lambda p: p[0])
        ax2.plot([p[0] for p in front], [p[1] for p in front], color="gold", marker="*", markersize=12,
                 markeredgecolor="black", label="Pareto front")
        if rep.get("budget_ms") is not None:
            ax2.axvline(rep["budget_ms"], color="red", linestyle="--", label=f"budget {rep['budget_ms']} ms")
        ax2.set_xlabel(f"batch {lo}: ms per step")
        ax2.set_ylabel(f"batch {hi}: ms per step")
        ax2.grid(alpha=0.3)
        ax2.legend()
        ax2.set_title("trade-off between batch sizes")
    fig.tight_layout()
    try:
        return _save(fig, out, force)
    finally:
        plt.close(fig)


def plot_profile(rep: dict, out: Path, *, force: bool = False) -> list[Path]:
    """Left: prefill latency against context length. Right: decode tokens/s against batch size."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    pre = rep["prefill"]
    a.errorbar([r["ctx"] for r in pre], [r["p50_ms"] for r in pre],
               yerr=[[0] * len(pre), [r["p95_ms"] - r["p50_ms"] for r in pre]], marker="o", capsize=3)
    a.set_xlabel("context length (tokens)")
    a.set_ylabel("prefill / TTFT, ms (p50, bar to p95)")
    a.grid(alpha=0.3)
    dec = rep["decode"]
    b.plot([r["batch"] for r in dec], [r["tokens_per_s"] for r in dec], marker="o")
    b.set_xlabel("batch size")
    b.set_ylabel("decode tokens/s (p50)")
    b.grid(alpha=0.3)
    fig.suptitle(f"{Path(str(rep['model'])).name} on {rep['target']} ({rep['device']})")
    fig.tight_layout()
    try:
        return _save(fig, out, force)
    finally:
        plt.close(fig)
