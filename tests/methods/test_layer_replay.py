"""True-sequential calibration replays a finished sub-block (attention, MLP) from its last linear's recorded
inputs instead of running it again (slmctl.layerwise._Replay): the results must be bit for bit those of
running the layer, on every family, and a family whose sub-block does more than its last linear is run."""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES

WINDOWS = [[(i * 7 + j * 3) % 200 + 3 for j in range(12)] for i in range(3)]


def _gptq_all_layers(folder, monkeypatch, replay: bool):
    import slmctl.layerwise as L
    from slmctl.io.artifact import open_artifact
    from slmctl.methods.quantize.common import QuantConfig
    from slmctl.methods.quantize.gptq import quantize_gptq

    monkeypatch.setenv("SLMCTL_REPLAY", "1" if replay else "0")
    lm = L.LayerwiseModel(open_artifact(folder))
    codes, replayed, outs = {}, [], []
    for step in L.iter_layers(lm, WINDOWS, capture=False):
        names = lm.linear_names(step.idx)
        res = quantize_gptq(step.layer, QuantConfig(4, 16), names=names, step=step)
        for k, r in res.items():
            codes[f"{step.idx}.{k}"] = (r.q.clone(), r.scale.clone())
        replayed.append(sorted(step.replays))
        outs.append(step.run())  # the layer's outputs with the replays, as the next layer gets them
    return codes, replayed, outs


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_replay_gives_the_same_codes_and_outputs_as_running_the_layer(tiny_models, monkeypatch, family):
    try:
        plain, none, plain_outs = _gptq_all_layers(tiny_models[family], monkeypatch, replay=False)
    except Exception as exc:  # noqa: BLE001  (a family the layer engine's GPTQ does not cover is not this test's)
        pytest.skip(f"{family}: layer-wise GPTQ does not run ({type(exc).__name__})")
    fast, replayed, fast_outs = _gptq_all_layers(tiny_models[family], monkeypatch, replay=True)
    assert all(not r for r in none)
    assert sorted(plain) == sorted(fast)
    for k in plain:
        assert torch.equal(plain[k][0], fast[k][0]), k
        assert torch.equal(plain[k][1], fast[k][1]), k
    for a, b in zip(plain_outs, fast_outs):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    if family in ("llama", "qwen2", "mistral", "qwen3"):  # o_proj ends the attention, down_proj the MLP
        assert all(r == ["mlp", "self_attn"] for r in replayed), replayed


def test_a_sub_block_that_does_more_after_its_last_linear_is_not_replayed(tiny_llama, monkeypatch):
    import slmctl.layerwise as L
    from slmctl.io.artifact import open_artifact

    lm = L.LayerwiseModel(open_artifact(tiny_llama))
    step = next(L.iter_layers(lm, WINDOWS, capture=False))
    mlp = step.layer.mlp
    plain_forward = type(mlp).forward
    mlp.forward = lambda x: plain_forward(mlp, x) * 1.5  # something after down_proj
    seen = []
    step.recapture(["mlp.down_proj"], on_input=lambda n, x: seen.append(x), stop_early=True, replayable=True)
    assert len(seen) == len(WINDOWS) and "mlp" not in step.replays
    step.recapture(["self_attn.o_proj"], on_input=lambda n, x: None, stop_early=True, replayable=True)
    assert "self_attn" in step.replays
    step.release()
    assert not step.replays and "forward" not in vars(step.layer.self_attn)
