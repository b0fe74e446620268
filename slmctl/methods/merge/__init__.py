"""Pure merge methods on tensors, one file per method, each a registry entry.

A method never opens files: the pipeline (slmctl.pipelines.merge) hands it one tensor per input
model for one output tensor, with the parameters already resolved for that tensor and layer.
"""

from .base import METHODS, MergeMethod, REQUIRED  # noqa: F401
from . import linear, slerp, task_arithmetic, passthrough, model_stock, nearswap, lora  # noqa: F401,E402

__all__ = ["METHODS", "MergeMethod", "REQUIRED"]
