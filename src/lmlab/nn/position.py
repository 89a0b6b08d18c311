"""Position encodings. A position module turns position ids (B, T) into a `Rotation` that attention mixers apply
to their queries and keys; `none` (NoPE, as in N4) returns no rotation.

RoPE (GPT-NeoX layout, half-split): with r = rotary_dim rotated channels per head, inv_freq_i = θ^(−2i/r),
φ(p) = concat(p·inv_freq, p·inv_freq), and on the first r channels

    x' = x ⊙ cos φ + rotate_half(x) ⊙ sin φ,   rotate_half(a, b) = (−b, a);

channels r.. pass unchanged. Tables are computed in fp32; the rotation runs in the activations' dtype.

`rope_sign = −1` rotates by −φ instead (sin negated): with x1, x2 the two halves, y1 = x1 cos φ + x2 sin φ and
y2 = −x1 sin φ + x2 cos φ (nanochat / flaxchat). Scores still depend only on relative positions, but trained
weights expect their own sign.

`rope_scaling` changes the frequencies (and may scale cos and sin): one registered kind each, with its formula, in
`lmlab.rope_scaling` (linear, dynamic NTK, YaRN, Llama 3.1's llama3).
"""

from __future__ import annotations

import torch

from lmlab.component_options import honoured
from lmlab.nn.component import Component
from lmlab.registry import MIXERS, POSITIONS, Option, one_of
from lmlab.rope_scaling import rope_inv_freq, rope_scaling_rule


class Rotation:
    """Rotary tables for one forward: cos and sin of shape (B, 1, T, r), computed in fp32 and cast to the
    activations' dtype (once per dtype), in which the rotation runs (as GPT-NeoX does; fp32 activations rotate in
    fp32 exactly as before).

    rotate_half(x) ⊙ sin is computed as roll(x, r/2) ⊙ (−sin₁ | sin₂) with the sign folded into the cast table:
    (−b)·s₁ and b·(−s₁) are the same number, so the result is bit for bit the formula's, in 4 ops instead of 7
    (a decoding step rotates q and k in every layer)."""

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor):
        self.cos = cos
        self.sin = sin
        self._cast: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tables(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and the signed sin (−sin₁ | sin₂) in `dtype`."""
        if dtype not in self._cast:
            first, second = self.sin.chunk(2, dim=-1)
            self._cast[dtype] = (self.cos.to(dtype), torch.cat((-first, second), dim=-1).to(dtype))
        return self._cast[dtype]

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        r = self.cos.shape[-1]
        cos, signed_sin = self._tables(x.dtype)
        x_rot = x if r == x.shape[-1] else x[..., :r]
        rotated = x_rot * cos + x_rot.roll(r // 2, dims=-1) * signed_sin
        if r == x.shape[-1]:
            return rotated
        return torch.cat((rotated, x[..., r:]), dim=-1)

    def queries(self, q: torch.Tensor) -> torch.Tensor:
        """Rotate queries (B, H, T, d_h)."""
        return self._rotate(q)

    def keys(self, k: torch.Tensor) -> torch.Tensor:
        """Rotate keys (B, H_kv, T, d_h)."""
        return self._rotate(k)


class PositionEncoding(Component):
    """A position encoding: position ids (B, T) in, a `Rotation` (or None) out. It owns its limits."""

    def check_positions(self, last: int, dtype: torch.dtype) -> None:
        """Raise if position `last` cannot be encoded for activations of `dtype` (an eager forward checks its own
        positions; a compiled decoding step cannot read them, so the engine asks before it starts)."""


class RotaryEmbedding(PositionEncoding):
    """Partial rotary position encoding, optionally scaled (`rope_scaling`, a kind of lmlab.rope_scaling)."""

    def __init__(self, config):
        super().__init__()
        self.rotary_dim = config.rotary_dim
        self.theta = config.rope_theta
        self.scaling = rope_scaling_rule(config.rope_scaling)
        self.sign = config.rope_sign
        self.attention_factor = 1.0 if self.scaling is None else self.scaling.attention_scaling()
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self, length: int | None = None) -> torch.Tensor:
        """The frequencies for a sequence of `length` positions (None: the static ones), fp32."""
        if self.scaling is None:
            return rope_inv_freq(self.theta, self.rotary_dim)
        return self.scaling.inv_freq(self.theta, self.rotary_dim, length)

    def reset_parameters(self) -> None:
        # the buffer is not saved with the weights; rebuild it (e.g. after construction on the meta device)
        self.inv_freq = self._inv_freq().to(self.inv_freq.device)

    def forward(self, position_ids: torch.Tensor) -> Rotation:
        inv_freq = self.inv_freq
        if self.scaling is not None and self.scaling.length_dependent:
            inv_freq = self._inv_freq(int(position_ids.max()) + 1).to(inv_freq.device)
        angles = position_ids[:, None, :, None].float() * inv_freq.float()  # (B, 1, T, r/2)
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return Rotation(cos, sin if self.sign == 1 else -sin)


class NoPosition(PositionEncoding):
    """NoPE: position information comes only from the causal mask (N4)."""

    def __init__(self, config):
        super().__init__()

    def forward(self, position_ids: torch.Tensor) -> None:
        return None


def rotating_mixers_in_use(config, layer_idx) -> str | None:
    """The check of a rotary encoding: some layer's mixer must apply its rotation (declare "rotation")."""
    if honoured(config, "rotation"):
        return None
    mixers = sorted({config.layer_spec(i).mixer for i in range(config.num_hidden_layers)})
    rotating = [name for name in MIXERS.names() if MIXERS.entry(name).honours("rotation")]
    return (f"no layer's mixer rotates queries and keys (mixers in use: {', '.join(mixers)}), so the encoding "
            f"would be ignored; set position=none, or use a mixer that does ({', '.join(rotating)})")


def rope_pct_in_range(value, config) -> str | None:
    return None if 0.0 < value <= 1.0 else "must be in (0, 1]"


ROPE_OPTIONS = (
    Option("rope_theta", doc="base θ of the frequencies"),
    Option("rope_pct", check=rope_pct_in_range, doc="share of each head's channels rotated"),
    Option("rope_scaling", doc="context extension, a kind of lmlab.rope_scaling"),
    Option("rope_sign", check=one_of(1, -1), doc="+1: rotation by φ; −1: by −φ (nanochat)"),
)


def describe_rope(config, layer_idx) -> str:
    sign = ", rotation by −φ" if config.rope_sign == -1 else ""
    scaling = "" if config.rope_scaling is None else f", {config.rope_scaling['type']} scaling ×" \
                                                         f"{config.rope_scaling['factor']:g}"
    return (f"rotary (NeoX half-split): θ {config.rope_theta:g}, {config.rotary_dim} of {config.head_dim} channels "
            f"per head rotated{sign}{scaling}; applied to q and k inside each mixer")


POSITIONS.register("rope", options=ROPE_OPTIONS, check=rotating_mixers_in_use, describe=describe_rope)(
    RotaryEmbedding)
POSITIONS.register("none", describe=lambda config, layer_idx: "NoPE, no encoding: order comes from the causal mask")(
    NoPosition)
