"""RoPE frequencies and their scalings: one registered entry per `rope_scaling` kind (Hugging Face semantics).

Unscaled, rotary pair i of r rotated channels turns at inv_freq_i = θ^(−2i/r); its wavelength is λ_i = 2π/inv_freq_i.
A scaling is a frozen dataclass whose fields are the keys of its `rope_scaling` dict besides the kind ("type", or
"rope_type" as newer transformers write it). Every kind has the factor f and the pre-scaling length
L0 = original_max_position_embeddings; when L0 is missing, the model's `max_position_embeddings` is L0 and its
position limit grows to f·L0. Each entry gives the frequencies, and the factor on cos and sin:

- linear: inv_freq / f (positions divided by f);
- dynamic (NTK-aware): for a sequence of length L > L0, θ' = θ·(f·L/L0 − (f − 1))^(r/(r − 2)); unscaled up to L0;
- yarn (Peng et al. 2023, arXiv 2309.00071): per pair i, inv_freq (pair index ≤ low) blended with inv_freq/f (index ≥
  high) along a linear ramp, low/high being the pair indices whose wavelength is L0/β_fast and L0/β_slow (β_fast = 32,
  β_slow = 1), floored/ceiled; cos and sin times `attention_factor` (default 0.1·ln f + 1);
- llama3 (Llama 3.1): with s_i = clamp((L0/λ_i − α)/(β − α), 0, 1), α = low_freq_factor, β = high_freq_factor,
  inv_freq'_i = (1 − s_i)·inv_freq_i/f + s_i·inv_freq_i: short wavelengths (λ < L0/β) keep their frequency, long ones
  (λ > L0/α) are divided by f, and those between are interpolated smoothly.

Adding a kind is one more registered dataclass here; config validation and the rotary module need no change.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields
from typing import ClassVar

import torch

from lmlab.errors import ConfigError
from lmlab.registry import Registry

ROPE_SCALINGS: Registry = Registry("rope scaling")
KIND_KEYS = ("type", "rope_type")


def rope_inv_freq(theta: float, rotary_dim: int) -> torch.Tensor:
    """inv_freq_i = θ^(−2i/r), i = 0 .. r/2 − 1, fp32."""
    return 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim).float()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class RopeScaling:
    """What every kind has: the factor f >= 1 and the pre-scaling length L0. Subclasses add their own keys, and
    `check` their values."""

    factor: float
    original_max_position_embeddings: int
    length_dependent: ClassVar[bool] = False  # the frequencies depend on the sequence length (dynamic)

    def check(self) -> None:
        """Raise ConfigError naming a bad value."""

    def inv_freq(self, theta: float, rotary_dim: int, length: int | None = None) -> torch.Tensor:
        """The scaled frequencies (fp32) for a sequence of `length` positions (None: the static frequencies)."""
        raise NotImplementedError

    def attention_scaling(self) -> float:
        """The factor on cos and sin."""
        return 1.0


@ROPE_SCALINGS.register("linear")
@dataclass(frozen=True)
class LinearScaling(RopeScaling):
    def inv_freq(self, theta: float, rotary_dim: int, length: int | None = None) -> torch.Tensor:
        return rope_inv_freq(theta, rotary_dim) / self.factor


@ROPE_SCALINGS.register("dynamic")
@dataclass(frozen=True)
class DynamicNTKScaling(RopeScaling):
    length_dependent: ClassVar[bool] = True

    def inv_freq(self, theta: float, rotary_dim: int, length: int | None = None) -> torch.Tensor:
        original = self.original_max_position_embeddings
        if length is None or length <= original:
            return rope_inv_freq(theta, rotary_dim)
        r, f = rotary_dim, self.factor
        return rope_inv_freq(theta * (f * length / original - (f - 1)) ** (r / (r - 2)), r)


@ROPE_SCALINGS.register("yarn")
@dataclass(frozen=True)
class YarnScaling(RopeScaling):
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None

    def check(self) -> None:
        for name in ("beta_fast", "beta_slow"):
            if not _is_number(getattr(self, name)) or getattr(self, name) <= 0:
                raise ConfigError(f"rope_scaling {name} must be a positive number, got {getattr(self, name)!r}")
        if self.attention_factor is not None and not _is_number(self.attention_factor):
            raise ConfigError(f"rope_scaling attention_factor must be a number, got {self.attention_factor!r}")

    def inv_freq(self, theta: float, rotary_dim: int, length: int | None = None) -> torch.Tensor:
        def pair_index_for(rotations: float) -> float:
            # the pair index i whose wavelength 2π·θ^(2i/r) equals L0 / rotations
            wavelength = self.original_max_position_embeddings / rotations
            return rotary_dim * math.log(wavelength / (2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(pair_index_for(self.beta_fast)), 0)
        high = min(math.ceil(pair_index_for(self.beta_slow)), rotary_dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        inv_freq = rope_inv_freq(theta, rotary_dim)
        return inv_freq / self.factor * ramp + inv_freq * (1 - ramp)

    def attention_scaling(self) -> float:
        if self.attention_factor is not None:
            return float(self.attention_factor)
        return 0.1 * math.log(self.factor) + 1.0


@ROPE_SCALINGS.register("llama3")
@dataclass(frozen=True)
class Llama3Scaling(RopeScaling):
    low_freq_factor: float
    high_freq_factor: float

    def check(self) -> None:
        low, high = self.low_freq_factor, self.high_freq_factor
        if not (_is_number(low) and _is_number(high) and 0 < low < high):
            raise ConfigError("rope_scaling llama3 needs 0 < low_freq_factor < high_freq_factor, got "
                              f"low_freq_factor={low!r}, high_freq_factor={high!r}")

    def inv_freq(self, theta: float, rotary_dim: int, length: int | None = None) -> torch.Tensor:
        # fp32 in the reference's order (λ first, then L0/λ): the published models' frequencies to the last bit
        inv_freq = rope_inv_freq(theta, rotary_dim)
        wavelength = 2 * math.pi / inv_freq
        low, high = self.low_freq_factor, self.high_freq_factor
        smooth = ((self.original_max_position_embeddings / wavelength - low) / (high - low)).clamp(0, 1)
        return (1 - smooth) * inv_freq / self.factor + smooth * inv_freq


def _checked_factor(factor) -> float:
    if not _is_number(factor) or factor < 1.0:
        raise ConfigError(f"rope_scaling factor must be a number >= 1, got {factor!r}")
    return float(factor)


def _kind(scaling: dict) -> str:
    if not isinstance(scaling, dict):
        raise ConfigError(f"rope_scaling must be a dict such as {{'type': 'linear', 'factor': 2.0}}, got {scaling!r}")
    kinds = {scaling[key] for key in KIND_KEYS if key in scaling}
    if len(kinds) > 1:
        raise ConfigError(f"rope_scaling names two kinds: type={scaling['type']!r}, rope_type={scaling['rope_type']!r}")
    kind = kinds.pop() if kinds else None
    if kind not in ROPE_SCALINGS:
        raise ConfigError(f"rope_scaling type must be one of {ROPE_SCALINGS.names()}, got {kind!r}")
    return kind


def rope_scaling_rule(scaling: dict | None) -> RopeScaling | None:
    """The registered entry for a `rope_scaling` dict (None: no scaling), its keys checked by name."""
    if scaling is None:
        return None
    kind = _kind(scaling)
    entry = ROPE_SCALINGS[kind]
    values = {key: value for key, value in scaling.items() if key not in KIND_KEYS}
    known = [f.name for f in fields(entry)]
    unknown = sorted(set(values) - set(known))
    missing = [f.name for f in fields(entry) if f.name not in values and f.default is MISSING]
    if unknown or missing:
        problem = f"unsupported keys {unknown}" if unknown else f"missing keys {missing}"
        raise ConfigError(f"rope_scaling {kind!r}: {problem}; its keys are {known}")
    factor, original = _checked_factor(values["factor"]), values["original_max_position_embeddings"]
    if not isinstance(original, int) or isinstance(original, bool) or original < 1:
        raise ConfigError(f"rope_scaling original_max_position_embeddings must be a positive integer, got "
                          f"{original!r}")
    rule = entry(**{**values, "factor": factor})
    rule.check()
    return rule


def normalised_rope_scaling(scaling: dict, max_position_embeddings: int | None) -> tuple[dict, int | None]:
    """(the `rope_scaling` dict as stored, the model's position limit): the kind under "type", the factor a float,
    and L0 pinned (when it is missing, L0 is `max_position_embeddings` and the limit grows to factor × L0)."""
    kind = _kind(scaling)
    stored = {key: value for key, value in scaling.items() if key not in KIND_KEYS}
    stored["type"] = kind
    stored["factor"] = _checked_factor(stored.get("factor"))
    if "original_max_position_embeddings" not in stored:
        if max_position_embeddings is None:
            raise ConfigError("rope_scaling needs max_position_embeddings (the length the model was trained at)")
        stored["original_max_position_embeddings"] = max_position_embeddings
        max_position_embeddings = int(max_position_embeddings * stored["factor"])
    rope_scaling_rule(stored)  # every check, by name
    return stored, max_position_embeddings


__all__ = ["ROPE_SCALINGS", "DynamicNTKScaling", "LinearScaling", "Llama3Scaling", "RopeScaling", "YarnScaling",
           "normalised_rope_scaling", "rope_inv_freq", "rope_scaling_rule"]
