"""Cached decoding with pre-packed CPU weights (lmlab.generation.packed): oneDNN packs for several rows, transposed
copies for one; the plain layer's outputs, the same logits as recomputation, never a stale pack, the model left as it
was."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import (
    assert_logits_close,
    engine_logits,
    full_forward_logits,
    random_path,
    randomise_parameters,
    tiny_model,
)
from lmlab.generation import packed as packing
from lmlab.generation.packed import PackedLinear, packable_linears, packed_step
from test_generate import random_prompts

pytestmark = pytest.mark.skipif(not packing.packing_available(), reason="this torch has no oneDNN linear")


@pytest.fixture
def layout_decisions(monkeypatch):
    """Fresh tables of layout decisions (they are kept per process), timed over at most 1 MiB of copies."""
    monkeypatch.setattr(packing, "_ONE_ROW_TRANSPOSED", {})
    monkeypatch.setattr(packing, "_SEVERAL_ROWS_PACKED", {})
    monkeypatch.setattr(packing, "COLD_BYTES", 1 << 20)


@pytest.fixture
def pack_everything(monkeypatch, layout_decisions):
    """Consider every Linear, however small (tiny models have no weight above the size threshold), and give it the
    pack or the transposed copy whatever the timing says."""
    monkeypatch.setattr(packing, "PACK_MIN_WEIGHTS", 0)
    monkeypatch.setattr(packing, "LAYOUT_MIN_GAIN", 0.0)


@pytest.mark.parametrize("new_layout", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 48), (48,), (2, 1, 48), (8, 1, 48), (13, 48), (3, 5, 48)])
def test_packed_linear_equals_the_plain_layer(shape, bias, new_layout, layout_decisions, monkeypatch):
    monkeypatch.setattr(packing, "LAYOUT_MIN_GAIN", 0.0 if new_layout else float("inf"))
    torch.manual_seed(0)
    linear = nn.Linear(48, 96, bias=bias)
    x = torch.randn(shape)
    layer = PackedLinear(linear)
    out = layer(x)
    expected = F.linear(x, linear.weight, linear.bias)
    assert out.shape == expected.shape
    one_row = x.numel() == x.shape[-1]
    kept = layer.one_row if one_row else layer.packed
    if new_layout:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        assert kept is not None and (layer.packed if one_row else layer.one_row) is None  # only the path used
    else:
        assert kept is None and torch.equal(out, expected)  # the plain kernel itself
    if one_row and new_layout:
        assert layer.one_row.shape == (48, 96) and layer.one_row.is_contiguous()


def test_each_layout_is_timed_once_per_shape(layout_decisions, monkeypatch):
    timings = []

    def fake_seconds(fn, repeats=3):
        timings.append(fn)
        return 1.0 if len(timings) % 2 else 0.5  # plain 1.0 s, the new layout 0.5 s: the new layout wins
    monkeypatch.setattr(packing, "_best_seconds", fake_seconds)
    first, second, other = torch.randn(96, 48), torch.randn(96, 48), torch.randn(48, 96)
    assert torch.equal(packing.one_row_layout(first), first.t())
    assert torch.equal(packing.one_row_layout(second), second.t())  # same shape: decided already
    assert len(timings) == 2
    x = torch.randn(5, 48)
    torch.testing.assert_close(packing.packed_product(x, packing.several_rows_pack(first)), x @ first.T)
    assert len(timings) == 4  # several rows: a decision of its own for the same shape
    packing.several_rows_pack(second)
    assert len(timings) == 4
    monkeypatch.setattr(packing, "LAYOUT_MIN_GAIN", 3.0)  # 2× faster is not enough now, for a new shape
    assert packing.one_row_layout(other) is None and len(timings) == 6
    assert packing.several_rows_pack(other) is None and len(timings) == 8


def test_layouts_are_timed_as_a_pass_through_the_model_reads_them(monkeypatch):
    weight = torch.randn(48, 10)  # 1,920 bytes: the weight and 5 copies make 11,520
    copies = packing.copies_spanning(weight.T, 10_000)
    assert len(copies) == 6 and copies[0].data_ptr() == weight.data_ptr()  # the weight itself first
    assert len({c.untyped_storage().data_ptr() for c in copies}) == 6  # each read from its own memory
    assert all(torch.equal(c, weight.T) and c.stride() == weight.T.stride() for c in copies)  # same layout
    assert len(packing.copies_spanning(weight, 1_000)) == 1  # a span smaller than the weight: itself
    calls = []
    monkeypatch.setattr(packing, "_best_seconds", lambda fn: (fn(), 6.0)[1])
    assert packing.seconds_in_a_pass(lambda x, w: calls.append(w), None, weight, 10_000) == 1.0  # per copy
    assert len(calls) == 6
    model = tiny_model("ngen4-tiny")
    tied_once = {p.data_ptr(): p.numel() * 4 for p in model.parameters()}
    assert packing.weight_bytes(model) == sum(tied_once.values())
    monkeypatch.setattr(packing, "COLD_BYTES", 4_000)  # spans are capped, and decided per span
    spans = []
    monkeypatch.setattr(packing, "seconds_in_a_pass", lambda f, x, w, span: spans.append(span) or 1.0)
    monkeypatch.setattr(packing, "_ONE_ROW_TRANSPOSED", {})
    packing.one_row_layout(weight, 10_000)
    packing.one_row_layout(weight, 2_000)
    assert spans == [4_000, 4_000, 2_000, 2_000]


def test_only_large_plain_fp32_cpu_linears_are_packed():
    model = tiny_model("ngen4-tiny", vocab_size=2 * packing.PACK_MIN_WEIGHTS // 64)  # head: 2 × the minimum
    assert packable_linears(model) == [model.lm_head]  # the blocks' 64 × 256 matrices stay plain

    class Adapter(nn.Linear):  # a subclass keeps its own forward
        pass

    big = (packing.PACK_MIN_WEIGHTS // 64, 64)
    layers = nn.Sequential(nn.Linear(*big[::-1]), Adapter(*big[::-1]), nn.Linear(*big[::-1]).bfloat16())
    assert packable_linears(layers) == [layers[0]]


@pytest.mark.parametrize("lengths", [(9, 4, 6), (7,)])  # padded rows; one row
@pytest.mark.parametrize("preset", ["ngen4-tiny", "n4-tiny"])
def test_cached_decoding_with_packed_weights_equals_recomputation(preset, lengths, pack_everything):
    model = tiny_model(preset)
    randomise_parameters(model)
    prompts, path = random_prompts(lengths, seed=3), random_path(len(lengths), 10, seed=4)
    assert packable_linears(model)
    cached = engine_logits(model, prompts, path)
    kept = "packed" if len(lengths) > 1 else "one_row"
    assert all(getattr(packing.packed(linear), kept) is not None for linear in packable_linears(model))  # it did
    assert_logits_close(cached, full_forward_logits(model, prompts, path))
    assert all("forward" not in linear.__dict__ for linear in model.modules())  # the model is left as it was


@pytest.mark.parametrize("lengths", [(5, 7), (6,)])
def test_weights_changed_after_packing_are_repacked(lengths, pack_everything):
    """A pack is a copy: an in-place update (an optimizer step) must be seen by the next generation."""
    model = tiny_model("ngen4-tiny")
    randomise_parameters(model)
    prompts, path = random_prompts(lengths, seed=5), random_path(len(lengths), 6, seed=6)
    before = engine_logits(model, prompts, path)
    randomise_parameters(model, seed=1, scale=3.0)
    after = engine_logits(model, prompts, path)
    assert (after[-1] - before[-1]).abs().max() > 1e-2  # the change matters, so a stale pack would be caught
    assert_logits_close(after, full_forward_logits(model, prompts, path))


def test_a_failing_forward_leaves_the_model_unpatched(pack_everything):
    model = tiny_model("ngen4-tiny")
    step = packed_step(model)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        step(torch.tensor([[0], [10**6]]))
    assert all("forward" not in linear.__dict__ for linear in model.modules())
