"""Pre-packed fp32 weights for the engine's cached decoding on a CPU (oneDNN for several rows, a transposed copy for
one).

A decoding step multiplies a few rows (one token per sequence) by every weight matrix, so it is bound by reading the
weights. PyTorch's fp32 `linear` hands each weight as stored to MKL's GEMM, which reads it at the memory bandwidth
for one row but falls far short of it for a few rows once the weight no longer fits in the cache. oneDNN's matmul on
a weight reordered once into its kernel's blocked layout (`mkldnn._reorder_linear_weight`, what inductor does with
frozen fp32 weights) closes most of that gap. Measured on a 2-core Xeon (AVX-512, AMX), one thread, 8 rows, plain /
packed time: 8192 × 256 2.0×, 2048 × 512 1.9×, 512 × 2048 1.7×, 50257 × 512 2.7× (ngen4-50m's step 1.5× faster);
but 256 × 256 0.5×, 1024 × 256 0.8×, 512 × 512 0.7× there, timed with the weight in the cache. On a 2-core AMD EPYC
(AVX2), 2 threads, each weight read from memory as a decoding step reads it (below): 1024 × 256 2.1×, 256 × 1024
1.65×, 768 × 256 1.4×, 2048 × 512 2.1×, 512 × 2048 1.9×, 256 × 256 1.05×.

For one row, oneDNN's pack gains nothing, but the layout of the weight can: on that EPYC, one thread, x @ Wᵀ with Wᵀ
stored contiguous (in × out) ran 1.5–2.5× faster than `linear` on W (out × in) for tall matrices read from memory
(8192 × 256 1.75×, 2048 × 512 1.5×, 1024 × 256 1.5×, 50257 × 512 1.8×: a vocabulary head, an MLP's up-projection),
and slower for wide ones (512 × 2048 0.73×, 256 × 1024 0.72×); read from the cache the gains differ (2048 × 512
1.25×, 1024 × 256 1.18×).

Other CPUs differ, so each layout is chosen by timing it here: the first call of a weight shape with one row times
`linear` against the transposed copy (`one_row_layout`), the first with several rows against the oneDNN pack
(`several_rows_pack`), and the new layout is kept only where it is at least `LAYOUT_MIN_GAIN` times faster (a decision
per shape, row kind, thread count and model size, for the process). Weights under `PACK_MIN_WEIGHTS` elements are
not considered (a call through the layer's wrapper costs more than they could gain). The timing reads the weight as
decoding does: between two uses of a weight a step reads the rest of the model, so it runs through copies of the
weight spanning the model's weights (`seconds_in_a_pass`; at most `COLD_BYTES`, beyond any CPU's cache, which bounds
the copies' memory while they are timed).

Each such Linear gets its pack (where chosen) at its first call with two rows or more, and its one-row copy (where
chosen) at its first call with one row, so each path holds only what it used. A pack or copy is a second copy of the
weight (for a tied head, of the embedding), kept while the weight is unchanged (its address and in-place version:
lmlab.generation.compiled's weights_fingerprint). Outputs equal the plain layer's up to fp32 rounding: the same
products, summed in another order. Packs are kept rather than made per generation
because packing costs time (ngen4-50m: ~0.2 s, 8% of a 64-token batch-8 generation) and memory while they live (its
tied head and 16 block matrices: ~170 MB until the model is dropped or the next generation repacks changed weights).
"""

from __future__ import annotations

import time
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.generation.compiled import weights_fingerprint

PACK_ROWS = 8  # the row count oneDNN lays a pack out for; calls with any count of rows may use it
PACK_MIN_WEIGHTS = 1 << 16  # 256 KiB of fp32 (a 256 × 256 matrix): smaller weights keep the plain layer
LAYOUT_MIN_GAIN = 1.25  # keep a pack or a transposed copy only where it is clearly faster
COLD_BYTES = 64 << 20  # a span of weights beyond a CPU's caches (layouts are timed over at most this much)
_ONE_ROW_TRANSPOSED: dict[tuple, bool] = {}  # (out, in, threads, span) -> the transposed layout was faster
_SEVERAL_ROWS_PACKED: dict[tuple, bool] = {}  # (out, in, threads, span) -> the oneDNN pack was faster
_PACKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Linear -> its PackedLinear


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _best_seconds(fn, repeats: int = 3) -> float:
    fn()  # warm: first touch of the weight's pages, kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def copies_spanning(weight: torch.Tensor, span_bytes: int) -> list[torch.Tensor]:
    """The weight, then as many copies of it (same strides) as make `span_bytes` in all."""
    size = weight.numel() * weight.element_size()
    return [weight] + [weight.clone() for _ in range(-(-span_bytes // size) - 1)]


def seconds_in_a_pass(multiply, x: torch.Tensor, weight: torch.Tensor, span_bytes: int = COLD_BYTES) -> float:
    """Seconds of one `multiply(x, weight)` when `span_bytes` (at most `COLD_BYTES`) of weights are read between two
    uses of it, as in a decoding step through a model of that size: best of a few passes through `copies_spanning`,
    per copy."""
    copies = copies_spanning(weight, min(span_bytes, COLD_BYTES))
    return _best_seconds(lambda: [multiply(x, w) for w in copies]) / len(copies)


def weight_bytes(model: nn.Module) -> int:
    """The bytes of the model's parameters, tied ones once: what a decoding step reads."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def chosen_layout(decisions: dict, weight: torch.Tensor, span_bytes: int, rows: int, make, multiply):
    """`make(W)` when `rows` rows multiply faster through it (`multiply(x, made)`) than `linear` through W here, by
    `LAYOUT_MIN_GAIN`, in a model of `span_bytes` of weights; else None.

    Decided once per (shape, torch threads, span) and kept in `decisions`, by timing both (`seconds_in_a_pass`)."""
    span_bytes = min(span_bytes, COLD_BYTES)  # spans beyond it time alike: one decision for them all
    key = (*weight.shape, torch.get_num_threads(), span_bytes)
    made = make(weight.detach()) if decisions.get(key, True) else None
    if key not in decisions:
        x = torch.randn(rows, weight.shape[1], dtype=weight.dtype)
        plain = seconds_in_a_pass(F.linear, x, weight.detach(), span_bytes)
        decisions[key] = plain >= LAYOUT_MIN_GAIN * seconds_in_a_pass(multiply, x, made, span_bytes)
    return made if decisions[key] else None


def onednn_pack(weight: torch.Tensor) -> torch.Tensor:
    """W (out × in) reordered once into the blocked layout of oneDNN's matmul for `PACK_ROWS` rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)


def packed_product(x: torch.Tensor, pack: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (rows × in) · Wᵀ + b through W's oneDNN pack."""
    return torch.ops.mkldnn._linear_pointwise(x, pack, bias, "none", [], "")


def one_row_layout(weight: torch.Tensor, span_bytes: int = COLD_BYTES) -> torch.Tensor | None:
    """Wᵀ stored contiguous (in × out) where one row multiplies faster by it than `linear` by W (`chosen_layout`)."""
    return chosen_layout(_ONE_ROW_TRANSPOSED, weight, span_bytes, 1, lambda w: w.t().contiguous(), torch.mm)


def several_rows_pack(weight: torch.Tensor, span_bytes: int = COLD_BYTES) -> torch.Tensor | None:
    """W reordered for oneDNN's matmul (laid out for `PACK_ROWS` rows) where that many rows multiply faster through
    it than `linear` through W (`chosen_layout`)."""
    return chosen_layout(_SEVERAL_ROWS_PACKED, weight, span_bytes, PACK_ROWS, onednn_pack, packed_product)


class PackedLinear:
    """`linear`'s x·Wᵀ + b, each layout chosen at its first use where it is faster here in a model of `span_bytes` of
    weights, else the plain kernel: for two rows or more through the oneDNN pack (`several_rows_pack`), for one row
    through a transposed copy (`one_row_layout`)."""

    def __init__(self, linear: nn.Linear, span_bytes: int = COLD_BYTES):
        self.linear = linear
        self.span_bytes = span_bytes
        self.version = weights_fingerprint(linear)
        self.packed: torch.Tensor | None = None  # the oneDNN pack where several_rows_pack chose it
        self.packed_decided = False
        self.one_row: torch.Tensor | None = None  # Wᵀ contiguous where one_row_layout chose it
        self.one_row_decided = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.linear.weight, self.linear.bias
        rows = x.numel() // x.shape[-1]
        if rows == 1:
            return self._one_row(x, weight, bias)
        if not self.packed_decided:
            self.packed, self.packed_decided = several_rows_pack(weight, self.span_bytes), True
        if self.packed is None:
            return F.linear(x, weight, bias)
        y = packed_product(x.reshape(rows, x.shape[-1]), self.packed, bias)
        return y.view(*x.shape[:-1], weight.shape[0])

    def _one_row(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self.one_row_decided:
            self.one_row, self.one_row_decided = one_row_layout(weight, self.span_bytes), True
        if self.one_row is None:
            return F.linear(x, weight, bias)
        row = x.reshape(1, x.shape[-1])
        y = torch.mm(row, self.one_row) if bias is None else torch.addmm(bias, row, self.one_row)
        return y.view(*x.shape[:-1], weight.shape[0])


def packable_linears(model: nn.Module) -> list[nn.Linear]:
    """The model's plain fp32 Linear layers on the CPU with `PACK_MIN_WEIGHTS` weights or more (subclasses, such as
    adapters, keep their own forward)."""
    if not packing_available():
        return []
    return [m for m in model.modules()
            if type(m) is nn.Linear and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32
            and m.weight.numel() >= PACK_MIN_WEIGHTS]


def packed(linear: nn.Linear, span_bytes: int = COLD_BYTES) -> PackedLinear:
    """The layer's PackedLinear (in a model of `span_bytes` of weights), made anew when its weights changed since it
    was packed."""
    layer = _PACKS.get(linear)
    if layer is None or layer.version != weights_fingerprint(linear):
        layer = _PACKS[linear] = PackedLinear(linear, span_bytes)
    return layer


class PackedStep:
    """`step(input_ids, **forward_kwargs)`: the model's forward with its Linear layers packed, for the duration of
    the call only (the model is left as it was). Get it before each generation: that is where changed weights are
    noticed."""

    def __init__(self, model: nn.Module, linears: list[nn.Linear]):
        self.model = model
        span = weight_bytes(model)
        self.layers = [(linear, packed(linear, span)) for linear in linears]

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


__all__ = ["COLD_BYTES", "LAYOUT_MIN_GAIN", "PACK_MIN_WEIGHTS", "PACK_ROWS", "PackedLinear", "PackedStep",
           "chosen_layout", "copies_spanning", "one_row_layout", "onednn_pack", "packable_linears", "packed",
           "packed_product", "packed_step", "packing_available", "seconds_in_a_pass", "several_rows_pack",
           "weight_bytes"]
