"""Pure prune methods on tensors/modules, one file per method, each a registry entry.

``UNSTRUCTURED`` holds the weight pruners (magnitude, wanda, sparsegpt): each takes one weight
matrix (out, in), the calibration statistics it ``needs`` (None, "norm": sum of x² per input
feature, "hessian": XᵀX), a sparsity and an optional N:M pattern, and returns the pruned matrix.
Structured methods (depth, width) and the adaptive allocation live in their own modules.
"""

from __future__ import annotations

from .pruner import UNSTRUCTURED, Pruner  # noqa: F401  (the registry; re-exported)
from . import magnitude, sparsegpt, wanda  # noqa: E402,F401  (they register themselves)
