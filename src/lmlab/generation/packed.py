"""Pre-packed fp32 weights for the engine's batched decoding on a CPU (oneDNN).

A decoding step multiplies a few rows (one token per sequence) by every weight matrix, so it is bound by reading the
weights. PyTorch's fp32 `linear` hands each weight as stored to MKL's GEMM, which reads it at the memory bandwidth
for one row but falls far short of it for a few rows once the weight no longer fits in the cache. oneDNN's matmul on
a weight reordered once into its kernel's blocked layout (`mkldnn._reorder_linear_weight`, what inductor does with
frozen fp32 weights) closes most of that gap. Measured on a 2-core Xeon (AVX-512, AMX), one thread, 8 rows, plain /
packed time: 8192 × 256 2.0×, 2048 × 512 1.9×, 512 × 2048 1.7×, 50257 × 512 2.7× (ngen4-50m's step 1.5× faster);
but 256 × 256 0.5×, 1024 × 256 0.8×, 512 × 512 0.7× (weights that stay in the cache are read fast either way, and
oneDNN's call costs more). So only weights of `PACK_MIN_WEIGHTS` elements or more are packed. For one row the plain
kernel is already as fast, so a single-row call keeps it.

Each such Linear is packed at its first call with two rows or more, so single-sequence decoding holds no pack. A
pack is a second copy of the weight (for a tied head, of the embedding), kept while the weight is unchanged (its
address and in-place version: lmlab.generation.compiled's weights_fingerprint). Outputs equal the plain layer's up
to fp32 rounding: the same products, summed in another order. Packs are kept rather than made per generation
because packing costs time (ngen4-50m: ~0.2 s, 8% of a 64-token batch-8 generation) and memory while they live (its
tied head and 16 block matrices: ~170 MB until the model is dropped or the next generation repacks changed weights).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from lmlab.generation.compiled import weights_fingerprint

PACK_ROWS = 8  # the row count oneDNN lays a pack out for; calls with any count of rows may use it
PACK_MIN_WEIGHTS = 1 << 20  # 4 MiB of fp32: smaller weights decode faster unpacked (module docstring)
_PACKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Linear -> its PackedLinear


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear:
    """`linear`'s x·Wᵀ + b: through the packed weight for two rows or more (packed at the first such call), through
    the plain kernel for one row."""

    def __init__(self, linear: nn.Linear):
        self.linear = linear
        self.version = weights_fingerprint(linear)
        self.packed = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.linear.weight, self.linear.bias
        rows = x.numel() // x.shape[-1]
        if rows == 1:
            return torch.nn.functional.linear(x, weight, bias)
        if self.packed is None:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS)
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(rows, x.shape[-1]), self.packed, bias, "none", [], "")
        return y.view(*x.shape[:-1], weight.shape[0])


def packable_linears(model: nn.Module) -> list[nn.Linear]:
    """The model's plain fp32 Linear layers on the CPU with `PACK_MIN_WEIGHTS` weights or more (subclasses, such as
    adapters, keep their own forward)."""
    if not packing_available():
        return []
    return [m for m in model.modules()
            if type(m) is nn.Linear and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32
            and m.weight.numel() >= PACK_MIN_WEIGHTS]


def packed(linear: nn.Linear) -> PackedLinear:
    """The layer's PackedLinear, made anew when its weights changed since it was packed."""
    layer = _PACKS.get(linear)
    if layer is None or layer.version != weights_fingerprint(linear):
        layer = _PACKS[linear] = PackedLinear(linear)
    return layer


class PackedStep:
    """`step(input_ids, **forward_kwargs)`: the model's forward with its Linear layers packed, for the duration of
    the call only (the model is left as it was). Get it before each generation: that is where changed weights are
    noticed."""

    def __init__(self, model: nn.Module, linears: list[nn.Linear]):
        self.model = model
        self.layers = [(linear, packed(linear)) for linear in linears]

    def __call__(self, input_ids: torch.Tensor, **kwargs):
        for linear, layer in self.layers:
            linear.__dict__["forward"] = layer  # an instance attribute: nn.Module.__call__ finds it first
        try:
            return self.model(input_ids, **kwargs)
        finally:
            for linear, _ in self.layers:
                linear.__dict__.pop("forward", None)


def packed_step(model: nn.Module):
    """The model's forward with packed Linear layers, or the model itself when it has none to pack."""
    linears = packable_linears(model)
    return PackedStep(model, linears) if linears else model


__all__ = ["PACK_MIN_WEIGHTS", "PACK_ROWS", "PackedLinear", "PackedStep", "packable_linears", "packed", "packed_step",
           "packing_available"]
