"""The gated delta rule: the recurrence (decoding, and the reference) and its chunked WY form (training, prefill).

Per head, with state S ∈ R^{d_k×d_v}, decay α_t = exp(g_t) (g_t ≤ 0) and write strength β_t ∈ (0, 1):

    S_t = α_t · S_{t−1}
    u_t = β_t · (v_t − S_tᵀ k_t)
    S_t = S_t + k_t u_tᵀ                 (equivalently S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ)
    o_t = S_tᵀ (scale · q_t)

Chunked form (chunk C; T padded with g = β = k = 0 steps, which leave the state unchanged). Inside a chunk, rows r, s:
γ_r = Σ_{j≤r} g_j, Γ_rs = exp(γ_r − γ_s) for r ≥ s else 0 (exp is taken on the lower triangle only, so no positive
exponent is ever exponentiated), M = strictly_lower(diag(β) K Kᵀ ⊙ Γ), and (I + M) is unit lower triangular:

    U = (I + M)⁻¹ diag(β) V,   W = (I + M)⁻¹ diag(β) (K ⊙ exp γ)          (one triangular solve)
    V' = U − W S,   O = (Q ⊙ exp γ) S + ((Q Kᵀ) ⊙ Γ) V',   S ← exp(γ_C) S + (K ⊙ exp(γ_C − γ))ᵀ V'

(the pseudo-values V' are the u_t of the recurrence). Both forms run in fp32 (fp64 stays fp64) with autocast off,
whatever the input dtype, and autograd gives the backward.

Layout (as flash-linear-attention): q, k (B, T, H, d_k); v (B, T, H, d_v); g, β (B, T, H); state (B, H, d_k, d_v).
`gated_delta_rule` dispatches to flash-linear-attention's Triton kernels when that package is importable and the
tensors are on a CUDA device, and to the torch forms here otherwise.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

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


def chunk_gated_delta_rule(q, k, v, g, beta, *, scale: float, initial_state: torch.Tensor | None = None,
                           chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked WY form (module docstring). Returns (o (B, T, H, d_v), final state) in fp32 (or fp64)."""
    dtype = _compute_dtype(q.dtype)
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    c = min(chunk_size, t)  # a short input is one chunk of its own length: no padding
    pad = -t % c
    n = (t + pad) // c
    with autocast_disabled(q.device):
        # (B, T, H, ·) -> (B, H, N, C, ·), padded steps have g = β = k = 0
        q, k, v = (F.pad(x.to(dtype).transpose(1, 2), (0, 0, 0, pad)).reshape(b, h, n, c, -1) for x in (q, k, v))
        g, beta = (F.pad(x.to(dtype).transpose(1, 2), (0, pad)).reshape(b, h, n, c) for x in (g, beta))
        q = q * scale

        gamma = g.cumsum(-1)
        lower = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
        decay = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~lower, float("-inf")).exp()  # Γ
        k_beta = k * beta[..., None]
        m = ((k_beta @ k.transpose(-1, -2)) * decay).tril(-1)
        rhs = torch.cat([v * beta[..., None], k_beta * gamma.exp()[..., None]], dim=-1)
        # unitriangular: the solver reads only the strictly lower part of m and takes the diagonal as 1 (I + M)
        u, w = torch.linalg.solve_triangular(m, rhs, upper=False, unitriangular=True).split([dv, dk], dim=-1)

        scores = (q @ k.transpose(-1, -2)) * decay
        q_decayed = q * gamma.exp()[..., None]
        k_to_end = (k * (gamma[..., -1:] - gamma).exp()[..., None]).transpose(-1, -2)
        chunk_decay = gamma[..., -1].exp()[..., None, None]
        state = q.new_zeros(b, h, dk, dv) if initial_state is None else initial_state.to(dtype)
        outputs = []
        # unbind once: indexing chunk i of the full tensors would cost a full-size gradient per chunk in backward
        for u_i, w_i, q_i, scores_i, k_i, decay_i in zip(*(x.unbind(2) for x in (
                u, w, q_decayed, scores, k_to_end, chunk_decay)), strict=True):
            values = u_i - w_i @ state
            outputs.append(q_i @ state + scores_i @ values)
            state = state * decay_i + k_i @ values
        o = torch.stack(outputs, dim=2).reshape(b, h, n * c, dv)[:, :, :t]
        return o.transpose(1, 2), state


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
           "recurrent_gated_delta_rule"]
