"""Pure prune methods on tensors/modules, one file per method, each a registry entry."""
