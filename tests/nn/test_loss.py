"""The chunked linear cross-entropy against F.cross_entropy on materialised logits, its memory invariant,
the model's loss="chunked" option, and the target the loss never scores."""

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import TINY_VOCAB, randomise_parameters, tiny_model
from lmlab.config import ConfigError
from lmlab.nn import loss as loss_module
from lmlab.nn.loss import shifted_linear_cross_entropy


def reference_loss(hidden, weight, labels, bias=None, softcap=None):
    logits = F.linear(hidden, weight, bias).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits[:, :-1].reshape(-1, weight.shape[0]), labels[:, 1:].reshape(-1), ignore_index=-100)


def loss_inputs(seed=0, b=3, t=11, d=16, vocab=53, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, d, generator=g, requires_grad=True)
    weight = torch.randn(vocab, d, generator=g, requires_grad=True)
    bias = torch.randn(vocab, generator=g, requires_grad=True) if bias else None
    labels = torch.randint(0, vocab, (b, t), generator=g)
    labels[0, 2:6] = -100
    labels[2, -1] = -100
    return hidden, weight, bias, labels


@pytest.mark.parametrize("softcap", [None, 4.0])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_rows", [1, 7, None])
def test_value_and_gradients_equal_cross_entropy(softcap, bias, chunk_rows):
    hidden, weight, b, labels = loss_inputs(bias=bias)
    params = [p for p in (hidden, weight, b) if p is not None]
    ours = shifted_linear_cross_entropy(hidden, weight, labels, bias=b, softcap=softcap, chunk_rows=chunk_rows)
    expected = reference_loss(hidden, weight, labels, b, softcap)
    assert ours.dtype == torch.float32
    assert abs(ours.item() - expected.item()) <= 1e-5
    for got, want in zip(torch.autograd.grad(ours * 2.5, params), torch.autograd.grad(expected * 2.5, params),
                         strict=True):
        assert (got - want).abs().max() <= 1e-5


def test_without_gradients_and_with_every_target_ignored():
    hidden, weight, _, labels = loss_inputs()
    with torch.no_grad():
        assert shifted_linear_cross_entropy(hidden, weight, labels).item() == pytest.approx(
            reference_loss(hidden, weight, labels).item(), abs=1e-5)
    ignored = torch.full_like(labels, -100)
    assert torch.isnan(shifted_linear_cross_entropy(hidden, weight, ignored))  # as F.cross_entropy: 0 / 0
    assert torch.isnan(reference_loss(hidden, weight, ignored))


def test_bf16_autocast_gives_an_fp32_loss_and_gradients():
    hidden, weight, _, labels = loss_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = shifted_linear_cross_entropy(hidden, weight, labels, chunk_rows=5)
        expected = reference_loss(hidden, weight, labels)  # bf16 head matmul
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(expected.item(), abs=1e-2)
    assert ours.item() == pytest.approx(reference_loss(hidden, weight, labels).item(), abs=1e-5)  # fp32 on CPU
    ours.backward()
    assert hidden.grad.dtype == torch.float32 and torch.isfinite(weight.grad).all()


def test_second_backward_is_refused_clearly():
    hidden, weight, _, labels = loss_inputs()
    loss = shifted_linear_cross_entropy(hidden, weight, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_label_shape_mismatch_is_an_error():
    hidden, weight, _, labels = loss_inputs()
    with pytest.raises(ValueError, match="one label per input token"):
        shifted_linear_cross_entropy(hidden, weight, labels[:, 1:])


def test_cut_cross_entropy_is_found_but_not_used_on_cpu(monkeypatch):
    calls = []
    fake = types.ModuleType("cut_cross_entropy")
    fake.linear_cross_entropy = lambda *args, **kwargs: calls.append(args)
    monkeypatch.setitem(sys.modules, "cut_cross_entropy", fake)
    loss_module._cut_cross_entropy.cache_clear()
    try:
        assert loss_module._cut_cross_entropy() is fake.linear_cross_entropy
        hidden, weight, _, labels = loss_inputs()
        assert torch.isfinite(shifted_linear_cross_entropy(hidden, weight, labels)) and not calls
    finally:
        loss_module._cut_cross_entropy.cache_clear()


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op creates."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_creates_the_full_logits():
    b, t, d, vocab, rows = 4, 64, 8, 3000, 32
    hidden, weight, _, labels = loss_inputs(b=b, t=t, d=d, vocab=vocab)
    with LargestTensor() as tracker:
        shifted_linear_cross_entropy(hidden, weight, labels, chunk_rows=rows).backward()
    assert tracker.largest <= rows * vocab < b * (t - 1) * vocab
    with LargestTensor() as tracker:
        reference_loss(hidden, weight, labels).backward()
    assert tracker.largest >= b * (t - 1) * vocab  # the tracker does see materialised logits


@pytest.mark.parametrize("preset,overrides", [("neollm-tiny", {}), ("ngen4-tiny", {"logit_softcap": 3.0})])
def test_model_chunked_loss_equals_the_full_loss(preset, overrides):
    """Same loss and gradients with loss="chunked" as with materialised logits, for any preset (tied or not,
    soft-capped or not)."""
    def run(loss):
        model = tiny_model(preset, loss=loss, **overrides)
        randomise_parameters(model, seed=5)
        x = torch.randint(0, TINY_VOCAB, (2, 21), generator=torch.Generator().manual_seed(0))
        labels = x.clone()
        labels[1, :4] = -100
        out = model(x, labels=labels)
        out.loss.backward()
        return out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    (full, full_grads), (chunked, chunked_grads) = run("full"), run("chunked")
    assert chunked.logits is None and full.logits.shape == (2, 21, TINY_VOCAB)
    assert abs(chunked.loss.item() - full.loss.item()) <= 1e-5
    assert full_grads.keys() == chunked_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, atol=1e-5, rtol=1e-4)


def test_chunked_loss_with_logits_to_keep_returns_the_last_logits():
    model = tiny_model("neollm-tiny")
    x = torch.randint(0, TINY_VOCAB, (2, 9))
    out = model(x, labels=x, logits_to_keep=1)
    torch.testing.assert_close(out.logits, model(x).logits[:, -1:])
    with pytest.raises(ValueError, match="loss='chunked'"):
        tiny_model("ngen4-tiny")(x, labels=x, logits_to_keep=1)
    with pytest.raises(ConfigError, match="loss must be one of"):
        tiny_model("ngen4-tiny", loss="cut")


def test_loss_never_scores_target_zero():
    model = tiny_model("nyx-tiny")
    x = torch.randint(1, TINY_VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    x[:, 3::4] = 0
    out = model(x, labels=x)
    logits, targets = out.logits[:, :-1].reshape(-1, TINY_VOCAB), x[:, 1:].reshape(-1)
    keep = targets != 0
    assert out.loss.item() == pytest.approx(F.cross_entropy(logits[keep], targets[keep]).item(), rel=1e-6)
    scored = tiny_model("nyx-tiny", loss_ignore_token_id=None)(x, labels=x).loss
    assert scored.item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)
