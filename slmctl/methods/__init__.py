"""Pure algorithms on tensors/modules: prune/, quantize/, merge/, distill/."""
