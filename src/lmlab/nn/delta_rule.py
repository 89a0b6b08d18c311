"""The gated delta rule: the recurrence (decoding, and the reference) and its chunked WY form (training, prefill).

Per head, with state S ∈ R^{d_k×d_v}, decay α_t = exp(g_t) (g_t ≤ 0) and write strength β_t ∈ (0, 1):

    S_t = α_t · S_{t−1}
    u_t = β_t · (v_t − S_tᵀ k_t)
    S_t = S_t + k_t u_tᵀ                 (equivalently S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ)
    o_t = S_tᵀ (scale · q_t)

Chunked form (chunk C; T padded with g = β = k = 0 steps, which leave the state unchanged). Inside a chunk, rows r, s:
γ_r = Σ_{j≤r} g_j, Γ_rs = exp(γ_r − γ_s) for r ≥ s else 0 (exp is taken on the lower triangle only, so no positive
exponent is ever exponentiated), M = strictly_lower(diag(β) K Kᵀ ⊙ Γ), and (I + M) is unit lower triangular:

    U = (I + M)⁻¹ diag(β) V,   W = (I + M)⁻¹ diag(β) (K ⊙ exp γ)
    V' = U − W S,   O = (Q ⊙ exp γ) S + ((Q Kᵀ) ⊙ Γ) V',   S ← exp(γ_C) S + (K ⊙ exp(γ_C − γ))ᵀ V'

(the pseudo-values V' are the u_t of the recurrence). The recurrence runs in fp32 (fp64 stays fp64) with autocast off.
The chunked form computes Γ, M, T = (I + M)⁻¹ (`unit_lower_inverse_`), U, W and P = (Q Kᵀ) ⊙ Γ for every chunk at once,
scans the chunks only for V' and S, then forms every chunk's O at once; its backward is written out
(`_ChunkedGatedDeltaRule`) and recomputes the within-chunk quantities, so training stores O(T·d) per head, not
O(T·C). State, cumulative sums, exponents, the scan and the output sums are fp32 (or fp64); under bf16 autocast the
within-chunk matmul operands (Q, K, V, Γ, M, T, U, W, P) are bf16 (a few 1e-3 relative error, like the bf16 layers
around it), else fp32.

Layout (as flash-linear-attention): q, k (B, T, H, d_k); v (B, T, H, d_v); g, β (B, T, H); state (B, H, d_k, d_v).
`gated_delta_rule` dispatches to flash-linear-attention's Triton kernels when that package is importable and the
tensors are on a CUDA device, and to the torch forms here otherwise.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from lmlab.nn.numerics import autocast_disabled


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # at least fp32; fp64 stays fp64


def gated_delta_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                     state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the recurrence: q, k (B, H, d_k) with q already scaled, v (B, H, d_v), g, β (B, H), state
    (B, H, d_k, d_v). Returns (o (B, H, d_v), new state)."""
    state = state * g.exp()[..., None, None]
    remembered = torch.einsum("bhkv,bhk->bhv", state, k)
    update = (v - remembered) * beta[..., None]
    state = state + k[..., :, None] * update[..., None, :]
    return torch.einsum("bhkv,bhk->bhv", state, q), state


def recurrent_gated_delta_rule(q, k, v, g, beta, *, scale: float, initial_state: torch.Tensor | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence, one token at a time. Returns (o (B, T, H, d_v), final state), both in fp32 (or fp64)."""
    dtype = _compute_dtype(q.dtype)
    b, t, h, dk = q.shape
    with autocast_disabled(q.device):
        q, k, v, g, beta = (x.to(dtype) for x in (q, k, v, g, beta))
        state = (q.new_zeros(b, h, dk, v.shape[-1]) if initial_state is None else initial_state.to(dtype))
        outputs = []
        for i in range(t):
            o, state = gated_delta_step(q[:, i] * scale, k[:, i], v[:, i], g[:, i], beta[:, i], state)
            outputs.append(o)
        return torch.stack(outputs, dim=1), state


def unit_lower_inverse_(m: torch.Tensor) -> torch.Tensor:
    """(I + M)⁻¹ for strictly lower-triangular M (..., C, C), by blockwise doubling with matmuls only:

        [[A, 0], [B, D]]⁻¹ = [[A⁻¹, 0], [−D⁻¹ B A⁻¹, D⁻¹]]

    The 2×2 diagonal blocks are exact at once (1 on the diagonal, −B below); each level then makes the blocks of twice
    the size exact, for every block of every chunk in one batched product (C is zero-padded to a power of two). Each
    product is a block of the exact inverse, so nothing grows beyond it; the nilpotent product Π_j (I + (−M)^(2^j))
    forms powers of M that exceed the inverse by orders of magnitude when keys are correlated. Not
    `torch.linalg.solve_triangular`: it makes one LAPACK call per small matrix, each its own threaded region (seconds
    per call on a busy 2-core CPU). Overwrites m when C is a power of two (no new C × C buffer)."""
    c = m.shape[-1]
    size = 1 << (c - 1).bit_length()
    t = m.neg_() if size == c else F.pad(-m, (0, size - c, 0, size - c))
    t.diagonal(dim1=-2, dim2=-1).fill_(1)
    s = 2
    while s < size:  # the blocks of size s are exact; the off-diagonal block of each 2s block still holds −B
        pairs = size // (2 * s)
        blocks = t.unflatten(-1, (pairs, 2, s)).unflatten(-4, (pairs, 2, s)).diagonal(dim1=-6, dim2=-3)
        blocks = blocks.movedim(-1, -5)  # (..., pairs, 2, s, 2, s): a view of t
        a, d, off = blocks[..., 0, :, 0, :], blocks[..., 1, :, 1, :], blocks[..., 1, :, 0, :]
        off.copy_(d @ off @ a)
        s *= 2
    return t[..., :c, :c]


def _matmul_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype of the within-chunk matmuls: bf16 under bf16 autocast (for fp32 inputs), else the compute dtype."""
    if (dtype == torch.float32 and torch.amp.is_autocast_available(device.type)
            and torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == torch.bfloat16):
        return torch.bfloat16
    return dtype


def _to_chunks(x: torch.Tensor, n: int, c: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, T, H, ...) -> (B, H, N, C, ...) in `dtype`, zero-padded to N·C steps, in one copy."""
    b, t, h = x.shape[:3]
    out = x.new_empty((b, h, n * c, *x.shape[3:]), dtype=dtype)
    out[:, :, t:].zero_()
    out[:, :, :t].copy_(x.transpose(1, 2))
    return out.unflatten(2, (n, c))


def _from_chunks(x: torch.Tensor, t: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, N, C, ...) -> (B, T, H, ...) in `dtype`, the padding dropped."""
    return x.flatten(2, 3)[:, :, :t].transpose(1, 2).to(dtype)


def _rowdot(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Σ_j a_ij b_ij, accumulated in `dtype`."""
    return (a * b).sum(-1, dtype=dtype)


def _decay(exponent: torch.Tensor, drop: torch.Tensor | None = None, dtype: torch.dtype | None = None
           ) -> torch.Tensor:
    """exp(x) of exponents x ≤ 0 (overwritten), in `dtype`, with 0 where `drop` is set and where x < 1.5 · log ε
    (−24 in fp32, −54 in fp64). The factors cut are below the dtype's resolution (a row sums at most C of them beside
    terms of order 1), and keeping them costs dearly on a CPU: exp takes a slow path, tens of times slower, for
    inputs that underflow (most of a chunk at NeoLLM's initial decays, A up to 16), and the tiny products that follow
    are subnormal numbers, on which every multiply-add is ~100× slower (a 64-wide fp32 bmm ran at 9 GFLOP/s)."""
    floor = 1.5 * math.log(torch.finfo(exponent.dtype).eps)
    small = torch.lt(exponent, floor)
    if drop is not None:
        small.logical_or_(drop)
    decay = torch.exp(exponent.clamp_(min=floor, max=0), out=torch.empty_like(exponent, dtype=dtype))
    return decay.masked_fill_(small, 0)


def _pairwise_decay(gamma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Γ_rs = exp(γ_r − γ_s) for r ≥ s, else 0, in `dtype` (the exponents in γ's dtype; `_decay`)."""
    c = gamma.shape[-1]
    upper = torch.ones(c, c, dtype=torch.bool, device=gamma.device).triu(1)
    return _decay(gamma[..., :, None] - gamma[..., None, :], upper, dtype)


def _chunk_decays(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """e^γ and exp(γ_C − γ) as (..., C, 1), and e^{γ_C} as (..., 1, 1), in γ's dtype (`_decay`)."""
    to_start = _decay(gamma.clone())[..., None]
    return to_start, _decay(gamma[..., -1:] - gamma)[..., None], to_start[..., -1:, :]


def _within_chunks(q, k, v, beta, gamma, to_start):
    """Every chunk at once, from q, k, v, e^γ (`to_start`) in the matmul dtype and β, γ in the compute dtype: Γ, M,
    T = (I + M)⁻¹, UW = T [diag(β) V | diag(β e^γ) K], P = (Q Kᵀ) ⊙ Γ and diag(β) K (module docstring), in the
    matmul dtype."""
    mm = q.dtype
    decay = _pairwise_decay(gamma, mm)
    beta = beta[..., None].to(mm)
    k_beta = k * beta
    m = (k_beta @ k.mT).mul_(decay)
    m.diagonal(dim1=-2, dim2=-1).zero_()
    # T's entries below ε^1.5 (long products of small decays; subnormal in fp32) cut to 0, as in `_decay`
    inverse = F.hardshrink(unit_lower_inverse_(m.clone()), torch.finfo(gamma.dtype).eps ** 1.5)
    uw = inverse @ torch.cat([v * beta, k_beta * to_start], dim=-1)
    scores = (q @ k.mT).mul_(decay)
    return decay, m, inverse, uw, scores, k_beta


class _ChunkedGatedDeltaRule(torch.autograd.Function):
    """The chunked WY form with a hand-written backward that recomputes the within-chunk quantities instead of storing
    them: saved are the chunked inputs, the state entering each chunk and the pseudo-values V' (nothing of size T·C).

    Backward, per chunk, given dO and dS' (the gradient of the state leaving it), with Q̃ = scale · Q, K_end =
    K ⊙ exp(γ_C − γ), Q_γ = Q̃ ⊙ e^γ and the rows of [Vβ | Kβ_γ] = [diag(β) V | diag(β e^γ) K]:
        dV' = Pᵀ dO + K_end dS'                   dS = e^{γ_C} dS' + Q_γᵀ dO − Wᵀ dV'   (reverse scan over chunks)
        [dVβ | dKβ_γ] = Tᵀ [dV' | −dV' Sᵀ]        dM = −strictly_lower([dVβ | dKβ_γ] [U | W]ᵀ)
        dQ̃ = (dO Sᵀ) ⊙ e^γ + (dP ⊙ Γ) K          with dP = lower(dO V'ᵀ)
        dK = (dP ⊙ Γ)ᵀ Q̃ + (V' dS'ᵀ) ⊙ exp(γ_C − γ) + Gᵀ diag(β) K + diag(β) (G K + diag(e^γ) dKβ_γ),  G = dM ⊙ Γ
        dV = diag(β) dVβ,   dβ = rowsum(dVβ ⊙ V) + rowsum((G K + diag(e^γ) dKβ_γ) ⊙ K)
        dγ = rowsum(dO Sᵀ ⊙ Q_γ) + rowsum(dKβ_γ ⊙ Kβ_γ) − rowsum(V' dS'ᵀ ⊙ K_end) + rowsum(E) − colsum(E),
             E = dP ⊙ P + dM ⊙ M, plus Σ rowsum(V' dS'ᵀ ⊙ K_end) + e^{γ_C} ⟨S, dS'⟩ at the last row
        dg = reverse cumulative sum of dγ within the chunk."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, initial_state, scale: float, chunk_size: int, mm: torch.dtype):
        dtype = _compute_dtype(q.dtype)
        t, dk, dv = q.shape[1], q.shape[-1], v.shape[-1]
        c = min(chunk_size, t)  # a short input is one chunk of its own length: no padding
        n = -(-t // c)
        ctx.input_dtypes = [x.dtype for x in (q, k, v, g, beta)]
        with autocast_disabled(q.device):
            q, k, v = (_to_chunks(x, n, c, mm) for x in (q, k, v))  # padded steps have g = β = k = 0
            g, beta = (_to_chunks(x, n, c, dtype) for x in (g, beta))
            q.mul_(scale)
            gamma = g.cumsum(-1)
            to_start, to_end, chunk_decay = _chunk_decays(gamma)
            to_start = to_start.to(mm)
            *_, uw, scores, _ = _within_chunks(q, k, v, beta, gamma, to_start)
            u, w = uw.to(dtype).split([dv, dk], dim=-1)
            k_end = k * to_end
            states = q.new_empty((*q.shape[:3], dk, dv), dtype=dtype)  # the state entering each chunk
            v_new = torch.empty_like(u)
            state = (q.new_zeros((*q.shape[:2], dk, dv), dtype=dtype) if initial_state is None
                     else initial_state.to(dtype))
            for i in range(n):
                states[:, :, i] = state
                torch.sub(u[:, :, i], w[:, :, i] @ state, out=v_new[:, :, i])  # V' = U − W S
                state = (k_end[:, :, i].mT @ v_new[:, :, i]).addcmul_(state, chunk_decay[:, :, i])
            o = ((q * to_start) @ states.to(mm)).to(dtype)  # every chunk at once
            o += scores @ v_new.to(mm)
        ctx.save_for_backward(q, k, v, g, beta, states, v_new)
        ctx.setup = (t, scale, initial_state is not None)
        return _from_chunks(o, t, dtype), state

    @staticmethod
    @once_differentiable
    def backward(ctx, d_o, d_final):
        q, k, v, g, beta, states, v_new = ctx.saved_tensors
        t, scale, has_initial = ctx.setup
        dtype, mm, dv, n = states.dtype, q.dtype, v.shape[-1], q.shape[2]
        with autocast_disabled(q.device):
            gamma = g.cumsum(-1)
            to_start, to_end, chunk_decay = _chunk_decays(gamma)
            to_start_mm = to_start.to(mm)
            decay, m, inverse, uw, scores, k_beta = _within_chunks(q, k, v, beta, gamma, to_start_mm)
            q_gamma = q * to_start_mm
            d_o = _to_chunks(d_o, n, q.shape[3], mm)
            d_v_new = (scores.mT @ d_o).to(dtype)  # the parts that do not depend on later chunks, all chunks at once
            d_states = (q_gamma.mT @ d_o).to(dtype)
            w = uw[..., dv:].to(dtype)
            k_end = k * to_end
            d_next = torch.empty_like(states)  # the gradient of the state leaving each chunk
            d_state = torch.zeros_like(states[:, :, 0]) if d_final is None else d_final.to(dtype)
            for i in reversed(range(n)):
                d_next[:, :, i] = d_state
                d_v_new[:, :, i] += k_end[:, :, i] @ d_state
                d_state = (d_states[:, :, i] - w[:, :, i].mT @ d_v_new[:, :, i]).addcmul_(d_state, chunk_decay[:, :, i])

            # each C × C buffer is released once used (this transient adds to the peak memory of training)
            d_rhs = inverse.mT @ torch.cat([d_v_new, -(d_v_new @ states.mT)], dim=-1).to(mm)
            del inverse
            d_m = (d_rhs @ uw.mT).neg_()
            del uw
            d_p = d_o @ v_new.to(mm).mT
            e_sum = torch.mul(d_p, scores).addcmul_(d_m, m)  # E: zero above the diagonal, as P and M are
            del scores, m
            d_gamma = e_sum.sum(-1, dtype=dtype) - e_sum.sum(-2, dtype=dtype)
            del e_sum
            d_p.mul_(decay)
            d_m.mul_(decay).diagonal(dim1=-2, dim2=-1).zero_()  # G: M has no diagonal
            del decay
            d_vb, d_kbg = d_rhs.split([dv, k.shape[-1]], dim=-1)
            d_kb = (d_m @ k).addcmul_(d_kbg, to_start_mm)
            d_q_gamma = d_o @ states.to(mm).mT
            d_k_end = v_new @ d_next.mT
            tail = _rowdot(d_k_end, k_end, dtype)
            d_gamma += _rowdot(d_q_gamma, q_gamma, dtype) + _rowdot(d_kbg, k_beta * to_start_mm, dtype) - tail
            d_gamma[..., -1] += tail.sum(-1) + chunk_decay[..., 0, 0] * (states * d_next).sum((-1, -2))
            d_q = torch.mul(d_q_gamma, to_start).add_(d_p @ k).mul_(scale)
            d_k = d_k_end.mul_(to_end).add_(d_p.mT @ q).add_(d_m.mT @ k_beta).addcmul_(d_kb, beta[..., None])
            d_beta = _rowdot(d_vb, v, dtype) + _rowdot(d_kb, k, dtype)
            d_v = d_vb * beta[..., None]
            d_g = d_gamma.flip(-1).cumsum(-1).flip(-1)
        grads = [_from_chunks(x, t, dt) for x, dt in zip((d_q, d_k, d_v, d_g, d_beta), ctx.input_dtypes, strict=True)]
        return *grads, d_state if has_initial else None, None, None, None


def chunk_gated_delta_rule(q, k, v, g, beta, *, scale: float, initial_state: torch.Tensor | None = None,
                           chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked WY form (module docstring). Returns (o (B, T, H, d_v), final state) in fp32 (or fp64); under bf16
    autocast the within-chunk matmuls run in bf16 (state, decays and accumulation in fp32)."""
    mm = _matmul_dtype(q.device, _compute_dtype(q.dtype))
    return _ChunkedGatedDeltaRule.apply(q, k, v, g, beta, initial_state, scale, chunk_size, mm)


@functools.cache
def _fla_kernels():
    """flash-linear-attention's (chunk, fused_recurrent) gated-delta-rule kernels, or None when not installed."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as chunk
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as recurrent
    except ImportError:
        return None
    return chunk, recurrent


def fla_kernels_for(device: torch.device):
    """The fla kernels when they can run on `device` (CUDA and fla importable), else None. The import is attempted
    only for CUDA tensors: on machines without a GPU driver fla's Triton import can fail."""
    return _fla_kernels() if device.type == "cuda" else None


def gated_delta_rule(q, k, v, g, beta, *, scale: float, initial_state: torch.Tensor | None = None,
                     chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule over a sequence: fla's kernels on CUDA when installed, else the torch chunked form (the
    plain recurrence for a single token). Returns (o (B, T, H, d_v) in fp32, final state (B, H, d_k, d_v) in fp32)."""
    kernels = fla_kernels_for(q.device)
    if kernels is not None:
        chunk, recurrent = kernels
        kernel = recurrent if q.shape[1] == 1 else chunk
        state = None if initial_state is None else initial_state.float()
        o, final = kernel(q=q, k=k, v=v, g=g.float(), beta=beta, scale=scale, initial_state=state,
                          output_final_state=True)
        return o.float(), final.float()
    if q.shape[1] == 1:
        return recurrent_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=initial_state)
    return chunk_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=initial_state, chunk_size=chunk_size)


__all__ = ["chunk_gated_delta_rule", "fla_kernels_for", "gated_delta_rule", "gated_delta_step",
           "recurrent_gated_delta_rule", "unit_lower_inverse_"]
