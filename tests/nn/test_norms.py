"""Norms against their formulas written out by hand."""

import pytest
import torch

from conftest import tiny_config
from lmlab import preset_config
from lmlab.nn.norms import DyT, LayerNorm, ReducedDyT, RMSNorm, ZeroCentredRMSNorm
from lmlab.registry import NORMS


def test_layernorm_with_and_without_bias():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    norm = LayerNorm(16, eps=1e-5).double()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * norm.weight + norm.bias
    torch.testing.assert_close(norm(x), expected)
    nobias = LayerNorm(16, eps=1e-5, bias=False).double()
    assert nobias.bias is None and [n for n, _ in nobias.named_parameters()] == ["weight"]
    torch.testing.assert_close(nobias(x), (x - mean) / torch.sqrt(var + 1e-5))


def test_rmsnorm_formula_and_fp32_statistics():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 32)
    norm = RMSNorm(32, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), norm(x.bfloat16().float()), atol=1e-2, rtol=1e-2)


def test_dyt_paper_form_and_n4_reduced_form():
    torch.manual_seed(0)
    x = torch.randn(4, 24) * 3
    dyt = DyT(24, alpha_init=0.7)
    assert dyt.alpha.item() == pytest.approx(0.7)
    torch.nn.init.normal_(dyt.weight)
    torch.nn.init.normal_(dyt.bias)
    torch.testing.assert_close(dyt(x), dyt.weight * torch.tanh(0.7 * x) + dyt.bias)
    reduced = ReducedDyT(24)
    assert [n for n, _ in reduced.named_parameters()] == ["weight"]
    torch.nn.init.normal_(reduced.weight)
    torch.testing.assert_close(reduced(x), reduced.weight * torch.tanh(x))


def test_dyt_alpha_init_comes_from_config():
    config = preset_config("ngen4-tiny", norm="dyt", dyt_alpha_init=0.25)
    norm = NORMS["dyt"](config, 8)
    assert norm.alpha.item() == pytest.approx(0.25)


def test_parameterless_rmsnorm_formula():
    norm = NORMS["rmsnorm_parameterless"](tiny_config("yatgpt-tiny"), 32)
    assert list(norm.parameters()) == []
    x = torch.randn(2, 5, 32) * 3
    torch.testing.assert_close(norm(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    assert norm(x.bfloat16()).dtype == torch.bfloat16


def test_zero_centred_rmsnorm_formula_and_init():
    norm = ZeroCentredRMSNorm(16, eps=1e-6)
    assert torch.equal(norm.weight, torch.zeros(16))
    x = torch.randn(3, 16)
    plain = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), plain)
    torch.nn.init.normal_(norm.weight)
    torch.testing.assert_close(norm(x), plain * (1 + norm.weight))


def test_dyt_runs_in_the_input_dtype_and_fp32_is_the_plain_formula():
    """DyT has no statistics: bf16 inputs stay bf16 (no fp32 round trip), fp32 is exactly γ·tanh(αx) + β."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16) * 2
    full, reduced = DyT(16, 0.7), ReducedDyT(16)
    with torch.no_grad():
        for p in (full.weight, full.bias, reduced.weight):
            p.copy_(torch.randn(16))
    assert torch.equal(full(x), torch.tanh(0.7 * x) * full.weight + full.bias)
    assert torch.equal(reduced(x), torch.tanh(x) * reduced.weight)
    for norm in (full, reduced):
        low = norm(x.bfloat16())
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), norm(x), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("kind", ["rmsnorm", "zero_centred_rmsnorm", "rmsnorm_parameterless"])
def test_rms_norm_gradients_equal_autograd_through_the_formula(kind, gated):
    """The hand-written backward against autograd through x·rsqrt(mean x² + ε)·s (· SiLU(z) when gated), float64."""
    torch.manual_seed(0)
    norm = NORMS[kind](preset_config("neollm-tiny"), 16).double()
    for p in norm.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True) if gated else None
    upstream = torch.randn(3, 5, 16, dtype=torch.float64)
    params = list(norm.parameters())
    inputs = (x, *params) + ((z,) if gated else ())
    ours = torch.autograd.grad((norm(x, gate=z) * upstream).sum(), inputs)
    weights = [p.detach().requires_grad_() for p in params]
    scale = {"rmsnorm": lambda: weights[0], "zero_centred_rmsnorm": lambda: 1 + weights[0],
             "rmsnorm_parameterless": lambda: 1.0}[kind]()
    formula = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * scale
    if gated:
        formula = formula * z * torch.sigmoid(z)
    expected = torch.autograd.grad((formula * upstream).sum(), (x, *weights) + ((z,) if gated else ()))
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_rms_norm_keeps_its_input_and_the_row_factor_only():
    """Saved for the backward: the fp32 input itself (no copy, no normalised x) and one factor per row."""
    x = torch.randn(4, 6, 32, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        RMSNorm(32, eps=1e-6)(x)
    large = [t for t in saved if t.numel() == x.numel()]
    assert len(large) == 1 and large[0].data_ptr() == x.data_ptr()
    assert sum(t.numel() for t in saved if t.numel() != x.numel()) == 4 * 6 + 32
