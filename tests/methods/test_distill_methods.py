"""Pure parts of distillation: losses, schedules, LLKD selection, data plan, packing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from slmctl.errors import InputError, UsageError
from slmctl.methods.distill import LOSSES, SCHEDULES, SELECTORS
from slmctl.methods.distill.losses import (cross_entropy, hidden_loss, kd_loss, layer_map, make_projector,
                                          teacher_topk)
from slmctl.methods.distill.schedules import lr_lambda


def _logits(seed, shape=(2, 5, 11), scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _kl(p_lp, q_lp):
    return (p_lp.exp() * (p_lp - q_lp)).sum(-1).mean()


def test_registries_list_methods():
    assert set(LOSSES) == {"fkl", "rkl", "jsd"}
    assert set(SCHEDULES) == {"cosine", "wsd"}
    assert "llkd" in SELECTORS
    with pytest.raises(UsageError) as e:
        LOSSES.get("kl")
    assert "fkl" in e.value.hint


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd"])
def test_loss_is_zero_for_equal_and_positive_otherwise(name):
    s, t = _logits(0), _logits(1)
    assert kd_loss(name, t.clone(), t).abs() < 1e-6
    assert kd_loss(name, s, t) > 1e-3


def test_fkl_rkl_match_definitions_and_temperature():
    s, t = _logits(2), _logits(3)
    T = 2.0
    s_lp, t_lp = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    assert torch.allclose(kd_loss("fkl", s, t, temperature=T), _kl(t_lp, s_lp) * T * T, atol=1e-5)
    assert torch.allclose(kd_loss("rkl", s, t, temperature=T), _kl(s_lp, t_lp) * T * T, atol=1e-5)


def test_jsd_beta_limits_and_symmetry():
    s, t = _logits(4), _logits(5)
    assert torch.allclose(kd_loss("jsd", s, t, beta=0.0), kd_loss("fkl", s, t))
    assert torch.allclose(kd_loss("jsd", s, t, beta=1.0), kd_loss("rkl", s, t))
    # beta = 0.5 is the symmetric Jensen-Shannon divergence, bounded by log 2
    j = kd_loss("jsd", s, t, beta=0.5)
    assert torch.allclose(j, kd_loss("jsd", t, s, beta=0.5), atol=1e-6)
    assert 0 < j < math.log(2)
    m_lp = torch.log(0.5 * F.softmax(s, -1) + 0.5 * F.softmax(t, -1))
    ref = 0.5 * _kl(F.log_softmax(t, -1), m_lp) + 0.5 * _kl(F.log_softmax(s, -1), m_lp)
    assert torch.allclose(j, ref, atol=1e-5)
    with pytest.raises(UsageError):
        kd_loss("jsd", s, t, beta=1.5)


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd"])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_topk_teacher_with_full_k_equals_full_logits(name, T):
    s, t = _logits(6), _logits(7)
    full = teacher_topk(t, t.shape[-1], T)
    assert torch.allclose(kd_loss(name, s, full, temperature=T), kd_loss(name, s, t, temperature=T), atol=1e-5)
    # with a small k the loss stays finite and differentiable
    s.requires_grad_(True)
    loss = kd_loss(name, s, teacher_topk(t, 3, T), temperature=T)
    loss.backward()
    assert torch.isfinite(loss) and s.grad.abs().sum() > 0


def _bucket(lp, idx):
    """Full log-probs -> k + 1 probabilities: the k tokens of idx and the rest, by direct summation."""
    p = lp.exp()
    top = p.gather(-1, idx)
    return torch.cat([top, 1 - top.sum(-1, keepdim=True)], -1)


def test_topk_forward_kl_is_the_exact_kl_over_k_tokens_plus_the_rest():
    s, t = _logits(20, shape=(2, 4, 50)), _logits(21, shape=(2, 4, 50))
    lp_t, idx = teacher_topk(t, 5)
    p = _bucket(F.log_softmax(t, -1), idx)
    q = _bucket(F.log_softmax(s, -1), idx)
    ref = (p * (p.log() - q.log())).sum(-1).mean()
    assert torch.allclose(kd_loss("fkl", s, (lp_t, idx)), ref, atol=1e-5)
    assert torch.allclose(lp_t, F.log_softmax(t, -1).gather(-1, idx))


def test_topk_loss_sees_the_tail_mass():
    # the student agrees with the teacher inside the top-k (after renormalising) but keeps far too
    # little mass outside it: renormalising over k tokens would call this a perfect match
    V, k = 40, 4
    t = torch.zeros(1, 1, V)
    t[..., :k] = torch.tensor([3.0, 2.0, 1.0, 0.5])
    s = t.clone()
    s[..., :k] += 6.0  # same ratios among the k tokens, 6 nats more than the tail
    cache = teacher_topk(t, k)
    assert float(kd_loss("fkl", s, cache)) > 0.1
    # gradient descent on the top-k loss moves the student's tail mass to the teacher's, not to zero
    s = torch.zeros(1, 1, V, requires_grad=True)
    opt = torch.optim.SGD([s], lr=5.0)
    for _ in range(200):
        opt.zero_grad()
        kd_loss("fkl", s, cache).backward()
        opt.step()
    tail = lambda x: 1 - F.softmax(x, -1)[..., :k].sum()  # noqa: E731
    assert float(tail(s.detach())) == pytest.approx(float(tail(t)), abs=0.01)


def test_mask_ignores_positions():
    s, t = _logits(8), _logits(9)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0] = True
    assert torch.allclose(kd_loss("fkl", s, t, mask=mask), kd_loss("fkl", s[:1], t[:1]), atol=1e-6)


def test_gradient_steps_reduce_kl():
    t = _logits(10)
    s = _logits(11).requires_grad_(True)
    opt = torch.optim.SGD([s], lr=20.0)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = kd_loss("fkl", s, t)
        first = first if first is not None else float(loss)
        loss.backward()
        opt.step()
    assert float(loss) < 0.2 * first


def test_cross_entropy_matches_torch():
    s = _logits(12)
    y = torch.randint(0, 11, (2, 5))
    assert torch.allclose(cross_entropy(s, y), F.cross_entropy(s.reshape(-1, 11), y.reshape(-1)), atol=1e-6)


def test_hidden_losses_and_projection_when_widths_differ():
    pairs = layer_map(2, 4)
    assert pairs == [(1, 2), (2, 4)]
    assert make_projector(8, 8, 2) is None
    state = torch.get_rng_state()
    proj = make_projector(8, 16, len(pairs))
    assert torch.equal(state, torch.get_rng_state())  # the projector leaves the global RNG alone
    assert proj[0].weight.shape == (16, 8)
    g = torch.Generator().manual_seed(0)
    s_states = [torch.randn(2, 3, 8, generator=g) for _ in range(3)]
    t_states = [torch.randn(2, 3, 16, generator=g) for _ in range(5)]
    opt = torch.optim.Adam(proj.parameters(), lr=0.05)
    for name in ("mse", "cosine"):
        first = float(hidden_loss(name, s_states, t_states, pairs, proj))
        for _ in range(50):
            opt.zero_grad()
            loss = hidden_loss(name, s_states, t_states, pairs, proj)
            loss.backward()
            opt.step()
        assert float(loss) < first
    same = [h.clone() for h in t_states]
    assert float(hidden_loss("mse", same, t_states, [(1, 1), (4, 4)])) == 0.0
    assert float(hidden_loss("cosine", same, t_states, [(1, 1)])) < 1e-6


def test_cosine_schedule():
    f = lr_lambda("cosine", 100, warmup=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    vals = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert f(100) == pytest.approx(0.1)


def test_wsd_schedule_is_flat_then_decays():
    f = lr_lambda("wsd", 100, warmup=5, decay_frac=0.2, min_ratio=0.0)
    assert [f(s) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(f(s) == 1.0 for s in range(5, 80))
    decay = [f(s) for s in range(80, 100)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert decay[0] < 1.0 and f(99) == pytest.approx(0.0, abs=1e-9)


def test_llkd_keeps_confident_teacher_uncertain_student():
    V = 10
    confident = torch.zeros(V); confident[0] = 20.0   # noqa: E702
    unsure = torch.zeros(V)
    # rows: 0 teacher sure/student unsure (keep), 1 teacher unsure/student unsure,
    #       2 teacher sure/student sure, 3 teacher unsure/student sure
    teacher = torch.stack([confident, unsure, confident, unsure])[:, None, :].expand(4, 3, V)
    student = torch.stack([unsure, unsure, confident, confident])[:, None, :].expand(4, 3, V)
    mask = SELECTORS.get("llkd")(student, teacher, keep=0.25)
    assert mask.tolist() == [True, False, False, False]
    assert SELECTORS.get("llkd")(student, teacher, keep=1.0).all()
    # works on a top-k cache too, and never returns an empty selection
    assert SELECTORS.get("llkd")(student, teacher_topk(teacher, 3), keep=0.01).sum() >= 1
    assert SELECTORS.get("llkd")(student, teacher_topk(teacher, 3), keep=0.25).tolist() == mask.tolist()
    with pytest.raises(UsageError):
        SELECTORS.get("llkd")(student, teacher, keep=0.0)


def test_pack_blocks_and_errors():
    from slmctl.io.distill_data import pack_blocks

    b = pack_blocks(list(range(25)), 8)
    assert b.shape == (3, 8) and b[1, 0] == 8 and b[2, -1] == 23
    with pytest.raises(InputError, match="fewer than one block"):
        pack_blocks([1, 2, 3], 8)
    with pytest.raises(UsageError):
        pack_blocks([1, 2, 3], 1)


def test_data_plan_shards_the_same_global_batch_across_ranks():
    from slmctl.pipelines.distill import Schedule

    one = Schedule(10, seed=3, batch=4, accum=1, world=1)
    two = Schedule(10, seed=3, batch=2, accum=1, world=2)
    acc = Schedule(10, seed=3, batch=2, accum=2, world=1)
    for step in range(7):  # crosses epochs (10 blocks, 4 per step)
        full = one.micro(step, 0, 0)
        assert two.micro(step, 0, 0) + two.micro(step, 0, 1) == full
        assert acc.micro(step, 0, 0) + acc.micro(step, 1, 0) == full
    first_epoch = [one.block(p) for p in range(10)]
    assert sorted(first_epoch) == list(range(10))
    assert first_epoch != [Schedule(10, seed=4, batch=4, accum=1, world=1).block(p) for p in range(10)]
    assert one.used(2) == {one.block(p) for p in range(8)}
