"""What each quantised layout's runtime can load, checked before slmctl writes anything.

Each rule is read from the runtime's own code (versions pinned in pyproject.toml / the Makefile):

- **compressed-tensors** ``pack-quantized``, loaded by transformers with compressed-tensors 0.20:
  the ``group`` strategy dequantises through ``forward_helpers._process_group``, which raises
  "tensor column shape must be divisible by the given group_size" unless every quantised linear's
  input width is a multiple of the group size (``strategy_cdiv`` only warns when the scales are
  built, so the failure comes at the first forward). Per-row (``channel``) grids have no such rule.
  Modules named in ``ignore`` stay ``nn.Linear`` and load their float ``.weight``.
- **GPTQ layout**, loaded by GPTQModel 7.6 (the torch kernel on CPU, ``BACKEND.GPTQ_TORCH``):
  ``SUPPORTS_GROUP_SIZE = [-1, 16, 32, 64, 128, 256, 512, 1024]`` or a group equal to the input
  width; input widths the group does not divide are padded by the kernel (``SUPPORTS_AUTO_PADDING``),
  so they load. slmctl's GPTQ writer packs whole int32 words, so ``in * bits`` and ``out * bits``
  must be multiples of 32 (3-bit needs widths divisible by 32). Modules matched by a negative
  ``dynamic`` rule (``-:regex``) are left as ``nn.Linear``.

A combination a runtime rejects is refused (exit 2) with the runtime, the reason, the first tensor
and width that break it, and the nearest combination that works; ``--skip-incompatible`` instead
leaves those linears unquantised (listed in ``ignore`` / ``dynamic``) and says how many.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError

RUNTIMES = {"compressed-tensors": "transformers + compressed-tensors 0.20",
            "gptq": "GPTQModel 7.6 (torch kernel)"}
#: GPTQModel's TorchLinear.SUPPORTS_GROUP_SIZE (a group equal to the input width also loads)
GPTQMODEL_GROUPS = (-1, 16, 32, 64, 128, 256, 512, 1024)
#: group sizes slmctl suggests, nearest first is picked among these
SUGGESTED_GROUPS = (1024, 512, 256, 128, 64, 32, 16)


@dataclass(frozen=True)
class Problem:
    """One quantised linear (or the whole config, ``prefix`` None) that the runtime cannot load."""

    prefix: str | None
    out_features: int
    in_features: int
    reason: str
    who: str  # the runtime (or writer) that cannot take it


def _layer_problems(fmt: str, bits: int, group: int, out_f: int, in_f: int) -> list[tuple[str, str]]:
    reasons = []
    if fmt == "compressed-tensors" and group > 0 and in_f % group:
        reasons.append((f"{RUNTIMES[fmt]} cannot load", "group quantisation needs the input width divisible by "
                        f"the group size ({in_f} % {group} = {in_f % group}; compressed_tensors raises 'tensor "
                        "column shape must be divisible by the given group_size' at the first forward)"))
    if fmt == "gptq":
        if group not in GPTQMODEL_GROUPS and group != in_f:
            reasons.append((f"{RUNTIMES[fmt]} cannot load", f"group size {group} is not one GPTQModel's kernels "
                            f"take ({', '.join(map(str, GPTQMODEL_GROUPS))}, or the input width)"))
        if (in_f * bits) % 32 or (out_f * bits) % 32:
            reasons.append(("the GPTQ layout cannot hold", f"it packs whole int32 words (and GPTQModel's 3-bit "
                            f"kernel unpacks 32 codes from 3 words): {out_f}x{in_f} at {bits} bits leaves a partial word"))
    return reasons


def check(fmt: str, bits: int, group: int, linears: dict[str, tuple[int, int]]) -> list[Problem]:
    """Problems of quantising ``linears`` {prefix: (out, in)} to ``fmt`` with this grid (empty: all load)."""
    out = []
    for prefix, (out_f, in_f) in linears.items():
        for who, r in _layer_problems(fmt, bits, group, out_f, in_f):
            out.append(Problem(prefix, out_f, in_f, r, who))
    return out


def nearest_working(fmt: str, bits: int, group: int, linears: dict[str, tuple[int, int]]) -> str | None:
    """The closest change of options under which every linear loads: ``-g N`` (largest N below the
    asked group first, then above), ``-g -1``, or ``--bits 4``/``8``; None when none does."""
    def ok(g: int, b: int = bits) -> bool:
        return not check(fmt, b, g, linears)

    below = [g for g in SUGGESTED_GROUPS if (group < 0 or g < group) and ok(g)]
    above = [g for g in reversed(SUGGESTED_GROUPS) if group > 0 and g > group and ok(g)]
    if below or above:
        return f"-g {(below or above)[0]}"
    if ok(-1):
        return "-g -1 (one scale per row)"
    for b in (4, 8):
        if b != bits and ok(group, b):
            return f"--bits {b}"
    return None


def describe(fmt: str, problems: list[Problem]) -> str:
    p = problems[0]
    n = len({q.prefix for q in problems})
    where = f"{p.prefix} ({p.out_features}x{p.in_features}, input width {p.in_features})" if p.prefix else "the model"
    more = f" and {n - 1} other linear(s)" if n > 1 else ""
    return f"{p.who} {where}{more}: {p.reason}"


def refuse_or_skip(fmt: str, bits: int, group: int, linears: dict[str, tuple[int, int]], *,
                   skip: bool, log=None) -> list[str]:
    """Raise a UsageError (exit 2) naming the runtime, the reason, a tensor and the nearest working
    combination; with ``skip``, return the prefixes to leave unquantised instead (logged)."""
    problems = check(fmt, bits, group, linears)
    if not problems:
        return []
    bad = sorted({p.prefix for p in problems if p.prefix})
    per_layer_only = all(not _layer_problems(fmt, bits, group, o, i) for pre, (o, i) in linears.items()
                         if pre not in bad)
    if skip and per_layer_only and len(bad) < len(linears):
        if log:
            log(f"warning: {len(bad)} of {len(linears)} linears left unquantised (float) because "
                f"{describe(fmt, problems)}")
        return bad
    hints = []
    near = nearest_working(fmt, bits, group, linears)
    if near:
        hints.append(f"nearest combination that loads: {near}")
    if len(bad) < len(linears):
        hints.append(f"or --skip-incompatible to leave those {len(bad)} of {len(linears)} linears unquantised")
    if fmt == "compressed-tensors" and not check("gptq", bits, group, linears):
        hints.append("or --format gptq (GPTQModel pads such groups)")
    raise UsageError(describe(fmt, problems), hint="; ".join(hints) or None)


def ignore_entries(fmt: str, prefixes: list[str]) -> list[str]:
    """Config entries that keep ``prefixes`` as float linears: compressed-tensors ``ignore`` names or
    GPTQModel ``dynamic`` negative rules."""
    # both match module names; a checkpoint stored under another prefix (Nemotron-H's backbone.*, which
    # transformers loads as model.*) is named both ways
    prefixes = [q for p in prefixes
                for q in ((p, "model." + p[len("backbone."):]) if p.startswith("backbone.") else (p,))]
    if fmt == "gptq":
        return [f"-:^{re.escape(p)}$" for p in prefixes]
    return list(prefixes)
