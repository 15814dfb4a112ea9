"""selective_logprobs_and_entropy: equality with the naive full-logits path, gradcheck, memory contract."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.losses import selective_logprobs_and_entropy as chunked

F64 = torch.float64


def naive(x, weight, labels, bias=None, temperature=1.0, ignore_index=-100):
    logits = x if weight is None else x @ weight.T
    if bias is not None:
        logits = logits + bias
    logp = (logits / temperature).log_softmax(-1)
    valid = labels != ignore_index
    lp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * valid
    ent = -(logp.exp() * logp).sum(-1) * valid
    return lp, ent


def _inputs(B=2, T=9, H=8, V=37, dtype=torch.float32, seed=0, bias=False):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, H, generator=g, dtype=dtype)
    w = torch.randn(V, H, generator=g, dtype=dtype)
    b = torch.randn(V, generator=g, dtype=dtype) if bias else None
    y = torch.randint(0, V, (B, T), generator=g)
    return h, w, b, y


def test_hand_computed_uniform_logits():
    # All-zero logits over V = 4: log p = -log 4 everywhere, entropy = log 4.
    lp, ent = chunked(torch.zeros(1, 2, 4), None, torch.tensor([[0, 3]]))
    torch.testing.assert_close(lp, torch.full((1, 2), -math.log(4)))
    torch.testing.assert_close(ent, torch.full((1, 2), math.log(4)))
    # logits [0, ln 3] -> p = [1/4, 3/4]; H = -(1/4 ln 1/4 + 3/4 ln 3/4)
    z = torch.tensor([[[0.0, math.log(3.0)]]])
    lp, ent = chunked(z, None, torch.tensor([[1]]))
    assert lp.item() == pytest.approx(math.log(0.75))
    assert ent.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)


@pytest.mark.parametrize("chunk,vchunk", [(1, 1), (4, 10), (5, 37), (100, 100), (3, 36)])
@pytest.mark.parametrize("bias", [False, True])
def test_hidden_path_matches_naive_fp32(chunk, vchunk, bias):
    h, w, b, y = _inputs(bias=bias)
    y[0, 3] = -100
    h.requires_grad_(), w.requires_grad_()
    lp, ent = chunked(h, w, y, bias=b, chunk_size=chunk, vocab_chunk_size=vchunk, temperature=0.7)
    g = torch.randn(lp.shape)
    gh, gw = torch.autograd.grad((lp * g).sum(), (h, w))
    lp2, ent2 = naive(h, w, y, b, temperature=0.7)
    gh2, gw2 = torch.autograd.grad((lp2 * g).sum(), (h, w))
    for a, e in [(lp, lp2), (ent, ent2), (gh, gh2), (gw, gw2)]:
        torch.testing.assert_close(a, e, rtol=0, atol=1e-5)
    assert lp[0, 3].item() == 0.0 and ent[0, 3].item() == 0.0
    assert not ent.requires_grad  # entropies carry no gradient unless asked


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_path_matches_naive(dtype):
    g = torch.Generator().manual_seed(1)
    z = (3 * torch.randn(3, 5, 50, generator=g)).to(dtype).requires_grad_()
    y = torch.randint(0, 50, (3, 5), generator=g)
    y[1, 1] = -100
    lp, ent = chunked(z, None, y, chunk_size=4, temperature=1.3, entropy_grad=True)
    up = torch.randn(3, 5, generator=g)
    gz = torch.autograd.grad((lp * up).sum() + (ent * up).sum(), z)[0]
    z32 = z.detach().float().requires_grad_()
    lp2, ent2 = naive(z32, None, y, temperature=1.3)
    gz2 = torch.autograd.grad((lp2 * up).sum() + (ent2 * up).sum(), z32)[0]
    assert lp.dtype == torch.float32 and gz.dtype == dtype  # fp32 statistics, gradient in the input's dtype
    torch.testing.assert_close(lp, lp2, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, ent2, rtol=0, atol=1e-5)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(gz.float(), gz2, rtol=0, atol=tol)


def test_frozen_head_path_matches_naive():
    h, w, b, y = _inputs(T=11, bias=True)
    h.requires_grad_()
    lp, ent = chunked(h, w, y, bias=b, chunk_size=4, vocab_chunk_size=8, temperature=1.7)
    g = torch.randn(lp.shape)
    gh = torch.autograd.grad((lp * g).sum(), h)[0]
    lp2, _ = naive(h, w, y, b, temperature=1.7)
    gh2 = torch.autograd.grad((lp2 * g).sum(), h)[0]
    torch.testing.assert_close(gh, gh2, rtol=0, atol=1e-5)


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_gradcheck_hidden_fp64(frozen, bias, entropy_grad):
    h, w, b, y = _inputs(B=1, T=5, H=3, V=7, dtype=F64, bias=bias, seed=3)
    y[0, 2] = -100
    h.requires_grad_(), w.requires_grad_(not frozen)
    inputs = [h, w] + ([b.requires_grad_()] if bias else [])

    def fn(h, w, b=None):
        lp, ent = chunked(h, w, y, bias=b, chunk_size=2, vocab_chunk_size=3, temperature=0.9,
                          entropy_grad=entropy_grad)
        return (lp, ent) if entropy_grad else lp

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_gradcheck_logits_fp64():
    z = torch.randn(2, 3, 6, dtype=F64, requires_grad=True)
    y = torch.tensor([[0, 5, -100], [2, 2, 1]])
    assert torch.autograd.gradcheck(
        lambda z: chunked(z, None, y, chunk_size=4, temperature=0.8, entropy_grad=True), (z,), eps=1e-6, atol=1e-7)


def test_fp64_matches_naive_to_1e12():
    h, w, b, y = _inputs(dtype=F64, bias=True)
    lp, ent = chunked(h, w, y, bias=b, chunk_size=3, vocab_chunk_size=5)
    lp2, ent2 = naive(h, w, y, b)
    torch.testing.assert_close(lp, lp2, rtol=0, atol=1e-12)
    torch.testing.assert_close(ent, ent2, rtol=0, atol=1e-12)


def test_extreme_logits_stay_finite():
    z = torch.tensor([[[1e4, -1e4, 0.0, 3e4]]])
    lp, ent = chunked(z, None, torch.tensor([[1]]))
    assert lp.item() == pytest.approx(-4e4) and ent.item() == pytest.approx(0.0, abs=1e-6)
    h = torch.tensor([[[100.0]]])
    w = torch.tensor([[1.0], [-1.0], [50.0]])
    lp, ent = chunked(h, w, torch.tensor([[0]]), vocab_chunk_size=1)
    assert lp.item() == pytest.approx(-4900.0) and math.isfinite(ent.item())


def test_options_and_all_ignored_positions():
    h, w, _, y = _inputs()
    lp, ent = chunked(h, w, y, compute_entropy=False)
    assert ent is None and lp.shape == y.shape
    h.requires_grad_()
    lp, ent = chunked(h, w, torch.full_like(y, -100))
    assert torch.count_nonzero(lp) == 0 and torch.count_nonzero(ent) == 0
    lp.sum().backward()  # still connected to h
    assert torch.count_nonzero(h.grad) == 0
    lp, _ = chunked(h.reshape(-1, 8), w, y.reshape(-1))  # 2-D [N, H] input works too
    assert lp.shape == (18,)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda h, w, y: chunked(h, w, y, temperature=0.0), "temperature"),
        (lambda h, w, y: chunked(h, w[:, :3], y), "lm_head weight"),
        (lambda h, w, y: chunked(h, w, y[:, :4]), "labels.shape"),
        (lambda h, w, y: chunked(h, w, y + 100), "labels must be in"),
        (lambda h, w, y: chunked(h, w, y.float()), "integer"),
        (lambda h, w, y: chunked(h, w, y, bias=torch.zeros(3)), "bias"),
        (lambda h, w, y: chunked(h, w, y, chunk_size=0), "chunk_size"),
    ],
)
def test_validation(call, match):
    h, w, _, y = _inputs()
    with pytest.raises(ValueError, match=match):
        call(h, w, y)


def test_saves_no_vocab_sized_tensor_for_backward():
    """The memory contract: nothing of size N x V is kept between forward and backward."""
    B, T, H, V = 2, 16, 8, 300
    h, w, _, y = _inputs(B=B, T=T, H=H, V=V)
    h.requires_grad_(), w.requires_grad_()
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, ent = chunked(h, w, y, chunk_size=8, vocab_chunk_size=64)
        loss = lp.sum()
    loss.backward()
    assert max(saved) <= V * H  # the weight itself is the largest saved tensor
    assert all(n < B * T * V for n in saved)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.integers(1, 12), V=st.integers(2, 40), chunk=st.integers(1, 13),
       vchunk=st.integers(1, 41), temperature=st.floats(0.3, 3.0))
def test_property_matches_naive(seed, T, V, chunk, vchunk, temperature):
    h, w, _, y = _inputs(B=1, T=T, H=4, V=V, seed=seed)
    lp, ent = chunked(h, w, y, chunk_size=chunk, vocab_chunk_size=vchunk, temperature=temperature)
    lp2, ent2 = naive(h, w, y, temperature=temperature)
    torch.testing.assert_close(lp, lp2, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, ent2, rtol=0, atol=1e-5)
    assert (ent >= -1e-6).all() and (ent <= math.log(V) + 1e-5).all()


def test_frozen_head_backward_does_not_recompute(monkeypatch):
    import posttrain.losses.logprobs as lp_mod

    calls = []
    original = lp_mod._project
    monkeypatch.setattr(lp_mod, "_project", lambda *a: calls.append(1) or original(*a))
    h, w, _, y = _inputs()
    h.requires_grad_()
    lp, _ = chunked(h, w, y, chunk_size=8, vocab_chunk_size=10)
    n_forward = len(calls)
    lp.sum().backward()
    assert n_forward == 3 * 4 and len(calls) == n_forward  # 18 rows / 8 -> 3 chunks, 37 / 10 -> 4 tiles
    w.requires_grad_()
    calls.clear()
    lp, _ = chunked(h, w, y, chunk_size=8, vocab_chunk_size=10)
    lp.sum().backward()
    assert len(calls) == 2 * 12  # trained head: each tile is recomputed once in backward


def test_no_grad_mode_computes_no_backward_state(monkeypatch):
    """Under torch.no_grad (old / reference log-probs) the frozen-head shortcut must not spend a matmul."""
    h, w, _, y = _inputs()
    h.requires_grad_()
    with torch.no_grad():
        lp, ent = chunked(h, w, y)
    assert not lp.requires_grad
    lp2, ent2 = naive(h.detach(), w, y)
    torch.testing.assert_close(lp, lp2, rtol=0, atol=1e-5)
    calls = []
    monkeypatch.setattr(torch.Tensor, "addmm_", lambda *a, **k: calls.append(1))
    with torch.no_grad():
        chunked(h, w, y, vocab_chunk_size=10)
    assert not calls
