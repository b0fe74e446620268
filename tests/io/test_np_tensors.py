"""slmctl/io/np_tensors.py: safetensors tensors read as float32 numpy arrays without torch."""

from __future__ import annotations

import numpy as np


def test_bf16_widens_bit_exactly_whole_and_by_rows(tmp_path):
    import torch
    from safetensors.torch import save_file

    from slmctl.io.artifact import open_artifact
    from slmctl.io.np_tensors import load_float32

    # every bf16 bit pattern (NaNs and infinities included), as a 256 x 256 tensor
    t = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).reshape(256, 256)
    save_file({"w": t}, str(tmp_path / "m.safetensors"))
    lazy = open_artifact(tmp_path / "m.safetensors").tensors["w"]
    want = t.float().numpy().view(np.uint32)
    assert np.array_equal(load_float32(lazy).view(np.uint32), want)
    assert np.array_equal(load_float32(lazy, rows=(17, 42)).view(np.uint32), want[17:42])
