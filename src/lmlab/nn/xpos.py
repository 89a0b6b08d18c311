"""XPOS: rotary position encoding with an exponential decay per frequency pair (Sun et al. 2022, "A
Length-Extrapolatable Transformer", arXiv 2212.10554; NYX / PaLM-rlhf).

With r rotated channels per head, frequency pair i = 0 .. r/2 − 1, scale base B (`xpos_scale_base`) and centre c:

    ζ_i  = (2i + 0.4·r) / (1.4·r)                        (0.2857 .. 0.9777 for r = 64)
    s(t) = ζ ^ ((t − c) / B), duplicated to r wide       (half-split layout, like RoPE's tables)
    q'   = rope(q, t) ⊙ s(t)        k' = rope(k, t) ⊙ s(t)⁻¹

so the logit between a query at p and a key at p′ is the RoPE logit with pair i weighted by ζ_i^((p − p′)/B): purely
relative, and a decay with distance because a causal query never sees a later key (for p < p′ it would be a growth,
so XPOS is causal only). Channels past r pass unchanged.

The centre cancels in every logit. NYX centres each forward at ⌊n/2⌋; lmlab fixes c = 0 for every position, so keys
rotated once stay valid in the decoding cache and cached decoding equals the full forward. The price is magnitude:
key scales grow like (1/ζ_0)^(t/B) (3.5^(t/512) for NYX), so positions are limited to where the largest key scale is
at most sqrt(max) of the activation dtype (t ≈ 18k in fp32/bf16, ≈ 2.2k in fp16 for NYX); past that the model raises
an error instead of overflowing. Tables and the rotation are computed in fp32.
"""

from __future__ import annotations

import math

import torch

from lmlab.errors import ConfigError
from lmlab.nn.position import ROPE_OPTIONS, RotaryEmbedding, Rotation, describe_rope, rotating_mixers_in_use
from lmlab.registry import POSITIONS, Option, positive

XPOS_CENTRE = 0
SMALLEST_DECAY_BASE = 0.4 / 1.4  # ζ_0 for every r: the fastest-growing key scale


def xpos_decay_bases(rotary_dim: int) -> torch.Tensor:
    """ζ_i = (2i + 0.4·r)/(1.4·r), i = 0 .. r/2 − 1, fp32."""
    i = torch.arange(0, rotary_dim, 2, dtype=torch.float64)
    return ((i + 0.4 * rotary_dim) / (1.4 * rotary_dim)).float()


def largest_key_scale(distance_from_centre: int, scale_base: float) -> float:
    """(1/ζ_0)^(distance / B): the largest key scale at that distance from the centre (inf beyond fp64's range)."""
    log_scale = distance_from_centre / scale_base * -math.log(SMALLEST_DECAY_BASE)
    return math.exp(log_scale) if log_scale < 700 else math.inf


def check_key_scale(max_key_scale: float, distance_from_centre: int, dtype: torch.dtype) -> None:
    """Refuse key scales beyond sqrt(max) of the activation dtype (q·k would overflow)."""
    limit = math.sqrt(torch.finfo(dtype).max)
    if max_key_scale > limit:
        raise ValueError(
            f"XPOS key scale reaches {max_key_scale:.3g} at {distance_from_centre} positions from the centre "
            f"({XPOS_CENTRE}), beyond what {dtype} activations hold safely (limit {limit:.3g}); use shorter "
            "sequences, bf16/fp32 instead of fp16, or a larger xpos_scale_base")


class XPosRotation(Rotation):
    """RoPE tables for queries with XPOS scales folded in (cos·s, sin·s), and a second set for keys (cos/s, sin/s).

    `max_key_scale` is the largest key scale of this forward; rotating into a dtype that cannot hold it safely is an
    error (see the module docstring).
    """

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor, scale: torch.Tensor, max_key_scale: float,
                 distance_from_centre: int):
        super().__init__(cos * scale, sin * scale)
        self.key_rotation = Rotation(cos / scale, sin / scale)
        self.max_key_scale = max_key_scale
        self.distance_from_centre = distance_from_centre

    def keys(self, k: torch.Tensor) -> torch.Tensor:
        check_key_scale(self.max_key_scale, self.distance_from_centre, k.dtype)
        return self.key_rotation.keys(k)


class XPosEmbedding(RotaryEmbedding):
    """RoPE (with any `rope_scaling`) plus XPOS scales; see the module docstring.

    Buffers: `inv_freq` (from RoPE) and `decay_bases` ζ, both rebuilt from the config (not saved).
    """

    def __init__(self, config, causal: bool = True):
        if not causal:
            raise ConfigError("XPOS is defined for causal attention only: for a query before its key the decay "
                              "becomes a growth. Use position='rope' for a non-causal model.")
        super().__init__(config)
        self.scale_base = float(config.xpos_scale_base)
        self.register_buffer("decay_bases", xpos_decay_bases(self.rotary_dim), persistent=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.decay_bases = xpos_decay_bases(self.rotary_dim).to(self.decay_bases.device)

    def forward(self, position_ids: torch.Tensor) -> XPosRotation:
        rotation = super().forward(position_ids)
        log_decay = self.decay_bases.float().log()  # (r/2,), all negative
        exponent = (position_ids[:, None, :, None].float() - XPOS_CENTRE) / self.scale_base  # (B, 1, T, 1)
        scale = torch.exp(exponent * log_decay)
        scale = torch.cat((scale, scale), dim=-1)  # (B, 1, T, r)
        # shape-only (meta) runs have no positions to check; compiled ones check theirs up front
        # (check_positions, asked by the engine): reading them here would split the graph
        unchecked = position_ids.is_meta or torch.compiler.is_compiling()
        furthest = 0 if unchecked else int((position_ids - XPOS_CENTRE).abs().max())
        return XPosRotation(rotation.cos, rotation.sin, scale, largest_key_scale(furthest, self.scale_base), furthest)

    def check_positions(self, last: int, dtype: torch.dtype) -> None:
        furthest = abs(last - XPOS_CENTRE)
        check_key_scale(largest_key_scale(furthest, self.scale_base), furthest, dtype)


def describe_xpos(config, layer_idx) -> str:
    return (f"{describe_rope(config, layer_idx)}; XPOS: q·ζ^(t/{config.xpos_scale_base:g}), k·ζ^(−t/"
            f"{config.xpos_scale_base:g}), ζ_i = (2i + 0.4r)/(1.4r)")


POSITIONS.register("xpos", options=(*ROPE_OPTIONS, Option("xpos_scale_base", check=positive, doc="decay length B")),
                   check=rotating_mixers_in_use, describe=describe_xpos)(XPosEmbedding)

__all__ = ["SMALLEST_DECAY_BASE", "XPOS_CENTRE", "XPosEmbedding", "XPosRotation", "xpos_decay_bases"]
