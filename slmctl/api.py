"""The public Python API: the verbs' pipeline functions, re-exported with their real signatures.

This module is a face only; nothing below it imports it (see docs/architecture.md). The CLI is a thin
layer over these functions.
"""

from __future__ import annotations

from .io.resolve import load_artifact
from .pipelines.card import card, check_card
from .pipelines.distill import distill
from .pipelines.evaluate import eval_verb, evaluate, evaluate_domains
from .pipelines.export import DTYPES, EXPORTERS, export
from .pipelines.inspect import inspect
from .pipelines.merge import merge, merge_verb
from .pipelines.profile import profile
from .pipelines.prune import prune
from .pipelines.quantize import quantize

__all__ = ["DTYPES", "EXPORTERS", "card", "check_card", "distill", "eval_verb", "evaluate", "evaluate_domains", "export",
           "inspect", "load_artifact", "merge", "merge_verb", "profile", "prune", "quantize"]
