"""Pure distill methods on tensors/modules, one file per method, each a registry entry."""

from .losses import HIDDEN_LOSSES, LOSSES  # noqa: F401
from .schedules import SCHEDULES  # noqa: F401
from .selection import SELECTORS  # noqa: F401
