"""Edits that keep config.json consistent with the tensors: drop layers, heads, channels.

Pure functions on ``{name: tensor}`` state dicts and config dicts; the pipelines do the IO.
Non-uniform per-layer widths are recorded in config.json as ``slmctl_per_layer``
(lists of length num_hidden_layers, only for the keys that vary), with tensors in their pruned shapes.
"""

from .layers import drop_layers, layer_index, renamed_config  # noqa: F401
from .width import WIDTH_FAMILIES, shrink  # noqa: F401
