"""Per-token log-probs of given labels and full-vocabulary entropies, chunked so the [N, V] fp32 logits never exist.

From hidden states ``h`` [B, T, H] and an LM head ``W`` [V, H] (optional bias ``b``), the logits are
``z = (h W^T + b) / temperature``; we return ``log softmax(z)[label]`` and ``H = -sum_v p_v log p_v``.

Memory: a custom ``torch.autograd.Function`` walks the logits in tiles of ``chunk_size`` positions x
``vocab_chunk_size`` vocabulary entries with an online log-sum-exp (as flash attention does over keys), keeps only
per-position statistics (log-sum-exp, target logit, entropy), and saves nothing but ``h``, ``W`` and those [N]
vectors for backward. Backward recomputes each tile, turns it into dL/dz in place and accumulates dL/dh and dL/dW,
so backward's peak is one tile too. Peak extra memory is O(N * H + tile), not O(N * V).

Time: the naive path does 3 matmuls of N*H*V (forward, dL/dh, dL/dW) plus ~10 full passes over the [N, V] logits
(softmax, entropy, gather's scatter, log-softmax backward) and the first-touch page faults of several fresh GBs.
Recomputing costs a 4th matmul; in exchange every elementwise pass runs on a tile that stays in cache, nothing
GB-sized is allocated, and backward needs only ``exp`` per tile: dL/dz = g (onehot - p), and the row scaling by g
and the one-hot part are applied outside the tiles (to h before dL/dW = -P^T (g h) + scatter(g h), and to the
accumulated P @ W for dL/dh = g (W[y] - P @ W)). Measured on 2 CPU cores this is about as fast as the naive path
(scripts/bench_logprobs.py, docs/losses.md). When the LM head is frozen (LoRA: ``W.requires_grad=False``) and
entropies need no gradient, the forward also accumulates ``E = softmax(z) @ W``, so backward is
dL/dh = g (W[y] - E) / temperature with no recompute: 2 matmuls in all, as naive.
"""
from __future__ import annotations

import torch

DEFAULT_CHUNK_SIZE = 1024  # positions per tile
# Vocabulary entries per tile when not given: ~4M elements (16 MiB fp32), at least 4096 columns. A 1024 x 4096 tile
# keeps the elementwise passes in cache and the matmul efficient; with few positions, wider tiles keep the
# [rows, H] x [H, cols] matmul from becoming skinny (small matmuls run at a fraction of peak on CPU).
TILE_ELEMENTS = 1 << 22
MIN_VOCAB_CHUNK = 4096


def selective_logprobs_and_entropy(
    hidden_or_logits: torch.Tensor,
    lm_head_weight_or_None: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    vocab_chunk_size: int | None = None,
    compute_entropy: bool = True,
    entropy_grad: bool = False,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each label and the entropy of each position's next-token distribution, chunked.

    Args:
        hidden_or_logits: ``[..., H]`` hidden states (with ``lm_head_weight_or_None`` given) or ``[..., V]`` logits
            (with ``None``). Position ``i`` scores ``labels[i]``: shift before calling (``h[:, :-1]`` vs
            ``input_ids[:, 1:]``), as TRL's fused head does.
        lm_head_weight_or_None: ``[V, H]`` LM-head weight (``model.get_output_embeddings().weight``), or ``None``.
        labels: ``[...]`` integer token ids; ``ignore_index`` positions get log-prob 0 and entropy 0 (as TRL).
        bias: optional ``[V]`` LM-head bias (hidden-state input only).
        chunk_size: positions per tile. vocab_chunk_size: vocabulary entries per tile (hidden input only);
            ``None`` picks ~4M-element tiles (``max(4096, 2**22 // rows)``).
        compute_entropy: return entropies (else ``None``); free in time, the forward already has the tile.
        entropy_grad: let gradients flow through the entropies (entropy bonus); by default they are detached.
        temperature: the logits are divided by it before the softmax (TRL divides logits by the sampling
            temperature, so log-probs match the sampler's).
        ignore_index: label value meaning "no label here".

    Returns:
        ``(logps, entropy)`` with the shape of ``labels``, in the input's dtype promoted to at least float32
        (fp64 inputs stay fp64). With fp32 inputs both equal the naive ``log_softmax`` path to ~1e-5.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1 or (vocab_chunk_size is not None and vocab_chunk_size < 1):
        raise ValueError(f"chunk_size and vocab_chunk_size must be >= 1, got {chunk_size}, {vocab_chunk_size}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    x = hidden_or_logits
    if x.shape[:-1] != labels.shape:
        raise ValueError(f"hidden_or_logits {tuple(x.shape)} must be labels.shape {tuple(labels.shape)} + (H or V,)")
    weight = lm_head_weight_or_None
    if weight is None:
        if bias is not None:
            raise ValueError("bias is only used with hidden states (lm_head_weight given)")
        vocab = x.shape[-1]
    else:
        if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
            raise ValueError(f"lm_head weight must be [V, H] with H={x.shape[-1]}, got {tuple(weight.shape)}")
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must be [V]=({weight.shape[0]},), got {tuple(bias.shape)}")
        vocab = weight.shape[0]

    flat_x = x.reshape(-1, x.shape[-1])
    flat_labels = labels.reshape(-1).long()
    valid = flat_labels != ignore_index
    if bool(((flat_labels < 0) | (flat_labels >= vocab))[valid].any()):
        raise ValueError(f"labels must be in [0, {vocab}) or == ignore_index ({ignore_index})")
    all_valid = bool(valid.all())
    inv_t = 1.0 / temperature
    want_entropy_grad = bool(compute_entropy and entropy_grad)

    if weight is None:
        # Logits already exist (their gradient will too); we only avoid log-softmax copies. Ignored rows are
        # scored with label 0 and zeroed below, since selecting rows would copy [N_valid, V].
        safe_labels = flat_labels if all_valid else flat_labels.masked_fill(~valid, 0)
        logps, ent = _LogitsLogProbs.apply(flat_x, safe_labels, inv_t, chunk_size, compute_entropy,
                                           want_entropy_grad)
        if not all_valid:
            logps = logps.masked_fill(~valid, 0.0)
            ent = None if ent is None else ent.masked_fill(~valid, 0.0)
    else:
        # Hidden states are small ([N, H]): select the labelled rows so padding costs no matmul.
        idx = None if all_valid else valid.nonzero().squeeze(1)
        h = flat_x if idx is None else flat_x.index_select(0, idx)
        y = flat_labels if idx is None else flat_labels.index_select(0, idx)
        # Frozen head, hidden states needing grad, no entropy gradient: dL/dh = g (W[y] - p @ W) / t, so the forward
        # keeps E = p @ W ([N, H]) and backward needs no recompute. Decided here: grad mode is off inside forward.
        frozen_head = (torch.is_grad_enabled() and h.requires_grad and not weight.requires_grad
                       and not want_entropy_grad and (bias is None or not bias.requires_grad))
        logps, ent = _HiddenLogProbs.apply(h, weight, bias, y, inv_t, chunk_size, vocab_chunk_size,
                                           compute_entropy, want_entropy_grad, frozen_head)
        if idx is not None:
            # index_copy keeps the result connected to h even when no position is labelled.
            logps = logps.new_zeros(flat_labels.shape).index_copy(0, idx, logps)
            ent = None if ent is None else ent.new_zeros(flat_labels.shape).index_copy(0, idx, ent)

    logps = logps.view(labels.shape)
    ent = None if ent is None else ent.view(labels.shape)
    return logps, ent


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # bf16/fp16 -> fp32, fp64 stays fp64 (gradcheck)


def _buffer(numel: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(numel, device=like.device, dtype=dtype)


def _view(buf: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    # A contiguous [rows, cols] view of a flat buffer, so `torch.mm(..., out=)` writes in place.
    return buf[: rows * cols].view(rows, cols)


def _label_in_tile(labels: torch.Tensor, v0: int, v1: int) -> tuple[torch.Tensor, torch.Tensor]:
    inside = (labels >= v0) & (labels < v1)
    return inside, (labels - v0).clamp(0, v1 - v0 - 1).unsqueeze(1)


class _OnlineStats:
    """Running log-sum-exp statistics of one row chunk over vocabulary tiles (flash-attention style).

    With m the running max: s = sum_v exp(z_v - m), a = sum_v exp(z_v - m) (z_v - m), and the target logit.
    Then lse = m + log s, log p[label] = z_label - lse, entropy = log s - a / s.
    """

    def __init__(self, labels: torch.Tensor, dtype: torch.dtype, entropy: bool):
        self.labels, self.entropy = labels, entropy
        self.m = self.s = self.a = None
        self.target = torch.zeros(labels.shape, device=labels.device, dtype=dtype)

    def update(self, z: torch.Tensor, v0: int, v1: int, scratch: torch.Tensor) -> None:
        """Fold tile ``z`` ([n, v1 - v0], overwritten) into the statistics. ``scratch`` has z's shape."""
        inside, local = _label_in_tile(self.labels, v0, v1)
        self.target = torch.where(inside, z.gather(1, local).squeeze(1), self.target)
        tile_max = z.amax(1)
        new_m = tile_max if self.m is None else torch.maximum(self.m, tile_max)
        z.sub_(new_m.unsqueeze(1))  # z - m <= 0: exp cannot overflow
        e = torch.exp(z, out=scratch) if self.entropy else z.exp_()
        tile_s = e.sum(1)
        tile_a = _rowdot(e, z) if self.entropy else None
        if self.m is None:
            self.s, self.a = tile_s, tile_a
        else:
            shift = self.m - new_m  # <= 0; rescale the old sums to the new max
            scale = torch.exp(shift)
            if self.entropy:  # sum e (z - m_old) -> sum e (z - m_new) = ... + (m_old - m_new) * s
                self.a = scale * (self.a + shift * self.s) + tile_a
            self.s = scale * self.s + tile_s
        self.m = new_m

    def finish(self):
        log_s = torch.log(self.s)
        lse = self.m + log_s
        ent = log_s - self.a / self.s if self.entropy else None
        return self.target - lse, lse, ent


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b, dim=1) without a temporary of a's size (batched [1, v] x [v, 1] products)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _logit_grad_(logp: torch.Tensor, labels, v0, v1, g_logp, g_ent, ent) -> torch.Tensor:
    """Turn a tile of log-probs (overwritten) into dL/dz for that tile.

    d log p_y / dz_v = 1[v = y] - p_v ;  d H / dz_v = -p_v (log p_v + H).
    """
    if g_ent is None:
        grad = logp.exp_().mul_(-g_logp.unsqueeze(1))
    else:
        p = torch.exp(logp)
        grad = logp.add_(ent.unsqueeze(1)).mul_(p).mul_(-g_ent.unsqueeze(1))
        if g_logp is not None:
            grad.sub_(p.mul_(g_logp.unsqueeze(1)))
    if g_logp is not None:
        inside, local = _label_in_tile(labels, v0, v1)
        grad.scatter_add_(1, local, torch.where(inside, g_logp, 0.0).unsqueeze(1))
    return grad


class _HiddenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, inv_t, chunk, vchunk, want_entropy, entropy_grad, expect):
        ctx.set_materialize_grads(False)
        dtype = _compute_dtype(hidden.dtype)
        n_rows, vocab = hidden.shape[0], weight.shape[0]
        chunk = max(1, min(chunk, n_rows))
        if vchunk is None:
            vchunk = max(MIN_VOCAB_CHUNK, TILE_ELEMENTS // chunk)
        vchunk = min(vchunk, vocab)
        logps = torch.empty(n_rows, device=hidden.device, dtype=dtype)
        lse = torch.empty_like(logps)
        ent = torch.empty_like(logps) if want_entropy else None
        expected = torch.empty(n_rows, weight.shape[1], device=hidden.device, dtype=dtype) if expect else None
        tile_buf = _buffer(chunk * vchunk, hidden, dtype)
        scratch_buf = _buffer(chunk * vchunk, hidden, dtype) if want_entropy or expect else None
        vtiles = [(v0, min(v0 + vchunk, vocab)) for v0 in range(0, vocab, vchunk)]
        for r0 in range(0, n_rows, chunk):
            r1 = min(r0 + chunk, n_rows)
            h = hidden[r0:r1].to(dtype)
            stats = _OnlineStats(labels[r0:r1], dtype, want_entropy or expect)
            acc = None
            for v0, v1 in vtiles:
                z = _project(h, weight, bias, v0, v1, inv_t, _view(tile_buf, r1 - r0, v1 - v0))
                scratch = None if scratch_buf is None else _view(scratch_buf, r1 - r0, v1 - v0)
                stats.update(z, v0, v1, scratch)
                if expect:  # unnormalised sum_v exp(z_v - m) W_v, rescaled when the running max moves
                    e, w = scratch, weight[v0:v1].to(dtype)
                    if acc is None:
                        acc, m_prev = e @ w, stats.m
                    else:
                        acc = acc.mul_(torch.exp(m_prev - stats.m).unsqueeze(1)).addmm_(e, w)
                        m_prev = stats.m
            lp, chunk_lse, chunk_ent = stats.finish()
            logps[r0:r1], lse[r0:r1] = lp, chunk_lse
            if want_entropy:
                ent[r0:r1] = chunk_ent
            if expect:
                expected[r0:r1] = acc / stats.s.unsqueeze(1)
        del tile_buf, scratch_buf
        ctx.inv_t, ctx.chunk, ctx.vchunk = inv_t, chunk, vchunk
        ctx.expect = expect
        if expect:
            ctx.save_for_backward(hidden, weight, bias, labels, expected)
        else:
            ctx.save_for_backward(hidden, weight, bias, labels, lse, ent if entropy_grad else None)
        if want_entropy and not entropy_grad:
            ctx.mark_non_differentiable(ent)
        return logps, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        if ctx.expect:
            return _HiddenLogProbs._backward_frozen_head(ctx, g_logp)
        hidden, weight, bias, labels, lse, ent = ctx.saved_tensors
        if g_logp is None and g_ent is None:
            return (None,) * 10
        inv_t, chunk, vchunk = ctx.inv_t, ctx.chunk, ctx.vchunk
        dtype = lse.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n_rows, vocab = hidden.shape[0], weight.shape[0]
        # fold the temperature into the incoming gradients: dL/d(hW^T) = dL/dz / t
        g_logp = None if g_logp is None else g_logp.to(dtype) * inv_t
        g_ent = None if (g_ent is None or ent is None) else g_ent.to(dtype) * inv_t
        # The first tile of each row (column) block writes its gradient with `out=`, later ones accumulate, so
        # the [V, H] weight gradient is never zero-filled (a full extra pass over it per call).
        alloc = torch.zeros if n_rows == 0 else torch.empty
        grad_h = alloc(hidden.shape, device=hidden.device, dtype=dtype) if need_h else None
        grad_w = alloc(weight.shape, device=weight.device, dtype=dtype) if need_w else None
        grad_b = alloc(vocab, device=weight.device, dtype=dtype) if need_b else None
        tile_buf = _buffer(chunk * vchunk, hidden, dtype)
        factored = g_ent is None  # log-prob gradient only: keep row scalings and the one-hot out of the tiles
        for r0 in range(0, n_rows, chunk):
            r1 = min(r0 + chunk, n_rows)
            h = hidden[r0:r1].to(dtype)
            sl = slice(r0, r1)
            if factored:
                neg_gh = h * (-g_logp[sl]).unsqueeze(1)  # [rows, H]
            for v0 in range(0, vocab, vchunk):
                v1 = min(v0 + vchunk, vocab)
                z = _project(h, weight, bias, v0, v1, inv_t, _view(tile_buf, r1 - r0, v1 - v0))
                logp = z.sub_(lse[sl].unsqueeze(1))
                if factored:
                    # dL/dz = g (onehot - p): per tile only p is needed; -g scales rows, which commutes with the
                    # matmuls (applied to h here, to the accumulated P @ W below), and the one-hot part is added
                    # once after the loop. This saves two elementwise passes over every tile.
                    grad, rhs_w, rhs_b = logp.exp_(), neg_gh, -g_logp[sl]
                else:
                    grad = _logit_grad_(logp, labels[sl], v0, v1, None if g_logp is None else g_logp[sl],
                                        g_ent[sl], ent[sl])
                    rhs_w, rhs_b = h, None
                if need_h:
                    _mm_into(grad_h[sl], grad, weight[v0:v1].to(dtype), first=v0 == 0)
                if need_w:
                    _mm_into(grad_w[v0:v1], grad.t(), rhs_w, first=r0 == 0)
                if need_b:
                    tile_b = grad.sum(0) if rhs_b is None else torch.mv(grad.t(), rhs_b)
                    grad_b[v0:v1] = tile_b if r0 == 0 else grad_b[v0:v1] + tile_b
        if factored and n_rows:
            # one-hot terms: dL/dh += g W[y] (and the accumulated P @ W gets its -g), dL/dW[y] += g h, dL/db[y] += g
            if need_h:
                grad_h.mul_(-g_logp.unsqueeze(1)).addcmul_(weight.index_select(0, labels).to(dtype),
                                                           g_logp.unsqueeze(1))
            if need_w:
                grad_w.index_add_(0, labels, hidden.to(dtype) * g_logp.unsqueeze(1))
            if need_b:
                grad_b.index_add_(0, labels, g_logp)
        return (_cast(grad_h, hidden), _cast(grad_w, weight), _cast(grad_b, bias)) + (None,) * 7

    @staticmethod
    def _backward_frozen_head(ctx, g_logp):
        hidden, weight, _bias, labels, expected = ctx.saved_tensors
        if g_logp is None or not ctx.needs_input_grad[0]:
            return (None,) * 10
        g = g_logp.to(expected.dtype) * ctx.inv_t
        grad_h = (weight.index_select(0, labels).to(expected.dtype) - expected).mul_(g.unsqueeze(1))
        return (_cast(grad_h, hidden),) + (None,) * 9


def _project(h, weight, bias, v0, v1, inv_t, out):
    """out = (h W[v0:v1]^T + b[v0:v1]) * inv_t, written into ``out``."""
    torch.mm(h, weight[v0:v1].to(h.dtype).t(), out=out)
    if bias is not None:
        out.add_(bias[v0:v1].to(h.dtype))
    if inv_t != 1.0:
        out.mul_(inv_t)
    return out


def _mm_into(out, a, b, first):
    if first:
        torch.mm(a, b, out=out)
    else:
        out.addmm_(a, b)


def _scaled_copy(src, inv_t, out):
    # copy first, then scale in the compute dtype: bf16 logits / t must not be rounded to bf16
    out.copy_(src)
    return out if inv_t == 1.0 else out.mul_(inv_t)


def _cast(grad, like):
    return None if grad is None else grad.to(like.dtype)


class _LogitsLogProbs(torch.autograd.Function):
    """Same statistics from existing logits; saves only the (already existing) logits and [N] vectors, and writes
    dL/dlogits chunk by chunk straight into the one [N, V] gradient tensor autograd needs anyway."""

    @staticmethod
    def forward(ctx, logits, labels, inv_t, chunk, want_entropy, entropy_grad):
        ctx.set_materialize_grads(False)
        dtype = _compute_dtype(logits.dtype)
        n_rows, vocab = logits.shape
        chunk = max(1, min(chunk, n_rows))
        logps = torch.empty(n_rows, device=logits.device, dtype=dtype)
        lse = torch.empty_like(logps)
        ent = torch.empty_like(logps) if want_entropy else None
        tile_buf = _buffer(chunk * vocab, logits, dtype)
        scratch_buf = _buffer(chunk * vocab, logits, dtype) if want_entropy else None
        for r0 in range(0, n_rows, chunk):
            r1 = min(r0 + chunk, n_rows)
            z = _scaled_copy(logits[r0:r1], inv_t, _view(tile_buf, r1 - r0, vocab))
            stats = _OnlineStats(labels[r0:r1], dtype, want_entropy)
            stats.update(z, 0, vocab, None if scratch_buf is None else _view(scratch_buf, r1 - r0, vocab))
            logps[r0:r1], lse[r0:r1], chunk_ent = stats.finish()
            if want_entropy:
                ent[r0:r1] = chunk_ent
        ctx.inv_t, ctx.chunk = inv_t, chunk
        ctx.save_for_backward(logits, labels, lse, ent if entropy_grad else None)
        if want_entropy and not entropy_grad:
            ctx.mark_non_differentiable(ent)
        return logps, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        logits, labels, lse, ent = ctx.saved_tensors
        if (g_logp is None and g_ent is None) or not ctx.needs_input_grad[0]:
            return (None,) * 6
        dtype, inv_t, chunk = lse.dtype, ctx.inv_t, ctx.chunk
        g_logp = None if g_logp is None else g_logp.to(dtype) * inv_t
        g_ent = None if (g_ent is None or ent is None) else g_ent.to(dtype) * inv_t
        n_rows, vocab = logits.shape
        grad = torch.empty_like(logits)
        same = grad.dtype == dtype
        tile_buf = None if same else _buffer(chunk * vocab, logits, dtype)
        for r0 in range(0, n_rows, chunk):
            r1 = min(r0 + chunk, n_rows)
            sl = slice(r0, r1)
            out = grad[sl] if same else _view(tile_buf, r1 - r0, vocab)
            logp = _scaled_copy(logits[sl], inv_t, out).sub_(lse[sl].unsqueeze(1))
            _logit_grad_(logp, labels[sl], 0, vocab, None if g_logp is None else g_logp[sl],
                         None if g_ent is None else g_ent[sl], None if ent is None else ent[sl])
            if not same:
                grad[sl] = out
        return grad, None, None, None, None, None
