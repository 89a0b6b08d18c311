"""Sampling filters against their definitions (lmlab.generation.sampling's docstring)."""

import math

import pytest
import torch

from lmlab.generation.sampling import (
    Sampler,
    SamplingOptions,
    apply_repetition_penalty,
    filter_logits,
    min_p_filter,
    top_k_filter,
    top_p_filter,
)


def random_logits(rows=4, vocab=50, seed=0):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def kept(logits):
    return torch.isfinite(logits)


@pytest.mark.parametrize("k", [1, 5, 49])
def test_top_k_keeps_exactly_the_k_largest(k):
    logits = random_logits()
    out = top_k_filter(logits, k)
    assert (kept(out).sum(-1) == k).all()
    for row in range(len(logits)):
        largest = set(torch.argsort(logits[row], descending=True)[:k].tolist())
        assert set(torch.nonzero(kept(out[row])).flatten().tolist()) == largest
    torch.testing.assert_close(out[kept(out)], logits[kept(out)])  # kept logits untouched


def test_top_k_keeps_ties_at_the_threshold_and_off_values():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.5]])
    assert kept(top_k_filter(logits, 2)).tolist() == [[True, False, True, True, False]]
    assert torch.equal(top_k_filter(logits, 0), logits)
    assert torch.equal(top_k_filter(logits, 5), logits)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 0.99])
def test_top_p_keeps_the_smallest_set_reaching_the_mass(p):
    logits = random_logits(rows=6)
    out = top_p_filter(logits, p)
    probs = torch.softmax(logits.double(), -1)
    for row in range(len(logits)):
        keep = kept(out[row])
        mass = probs[row][keep].sum().item()
        assert mass >= p or keep.sum() == 1
        smallest_kept = probs[row][keep].min().item()
        assert mass - smallest_kept < p  # without its least likely member the set no longer reaches p
        # every kept token is at least as likely as every dropped one (a prefix of the sorted order)
        if (~keep).any():
            assert probs[row][keep].min() >= probs[row][~keep].max()


def test_top_p_always_keeps_the_top_token_and_p_at_least_one_is_off():
    logits = torch.tensor([[10.0, 0.0, -1.0]])
    assert kept(top_p_filter(logits, 0.01)).tolist() == [[True, False, False]]
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    assert torch.equal(top_p_filter(logits, 2.0), logits)  # N4's sampler uses 2.0 for "off"


@pytest.mark.parametrize("min_p", [0.01, 0.1, 0.5, 1.0])
def test_min_p_keeps_tokens_within_a_fraction_of_the_top_probability(min_p):
    logits = random_logits()
    out = min_p_filter(logits, min_p)
    probs = torch.softmax(logits.double(), -1)
    expected = probs >= min_p * probs.max(-1, keepdim=True).values * (1 - 1e-6)
    assert torch.equal(kept(out), expected)
    assert torch.equal(min_p_filter(logits, 0.0), logits)


def test_repetition_penalty_follows_the_ctrl_formula():
    logits = random_logits(rows=3, vocab=12)
    seen = torch.rand(3, 12, generator=torch.Generator().manual_seed(1)) < 0.4
    penalty = 1.3
    out = apply_repetition_penalty(logits, seen, penalty)
    for r in range(3):
        for v in range(12):
            z = logits[r, v].item()
            expected = (z / penalty if z > 0 else z * penalty) if seen[r, v] else z
            assert out[r, v].item() == pytest.approx(expected, rel=1e-6)


def test_repetition_penalty_marks_prompt_and_generated_tokens():
    options = SamplingOptions(temperature=0.0, repetition_penalty=1e6, max_new_tokens=1)
    sampler = Sampler(options, vocab_size=4, prompts=[[0]], device="cpu")
    logits = torch.tensor([[5.0, 4.0, 3.0, 0.5]])
    assert sampler(logits).tolist() == [1]  # token 0 is in the prompt: penalised below the others
    assert sampler(logits).tolist() == [2]  # token 1 was generated: penalised as well
    assert sampler(logits).tolist() == [3]


def test_temperature_scales_before_sampling_frequencies():
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0])
    temperature = 2.0
    options = SamplingOptions(temperature=temperature, top_k=0, seed=0)
    draws = 20000
    sampler = Sampler(options, vocab_size=4, prompts=[[0]] * draws, device="cpu")
    counts = torch.bincount(sampler(logits.expand(draws, 4)), minlength=4).double()
    expected = torch.softmax(logits.double() / temperature, -1) * draws
    assert torch.all((counts - expected).abs() < 5 * expected.sqrt())  # within 5 standard deviations


def test_filters_apply_in_order_after_temperature():
    logits = random_logits(rows=2)
    options = SamplingOptions(temperature=0.7, top_k=10, top_p=0.8, min_p=0.05)
    expected = min_p_filter(top_p_filter(top_k_filter(logits / 0.7, 10), 0.8), 0.05)
    assert torch.equal(filter_logits(logits, options), expected)


def test_sampling_only_draws_kept_tokens_and_top_k_one_is_greedy():
    logits = random_logits(rows=200)
    sampler = Sampler(SamplingOptions(temperature=1.0, top_k=3, seed=0), vocab_size=50, prompts=[[0]] * 200,
                      device="cpu")
    tokens = sampler(logits)
    top3 = torch.topk(logits, 3).indices
    assert (top3 == tokens[:, None]).any(-1).all()
    greedy = Sampler(SamplingOptions(temperature=1.0, top_k=1, seed=5), 50, [[0]] * 200, "cpu")(logits)
    assert torch.equal(greedy, logits.argmax(-1))


def test_a_seed_reproduces_the_draws():
    logits = random_logits(rows=8)

    def draws(seed):
        sampler = Sampler(SamplingOptions(temperature=1.0, top_k=0, seed=seed), 50, [[0]] * 8, "cpu")
        return [sampler(logits).tolist() for _ in range(5)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    torch.manual_seed(3)
    unseeded = draws(None)
    torch.manual_seed(3)
    assert draws(None) == unseeded  # without a seed the global torch seed decides


def test_min_p_threshold_is_a_log_ratio():
    logits = torch.tensor([[0.0, math.log(0.5), math.log(0.09)]])
    assert kept(min_p_filter(logits, 0.1)).tolist() == [[True, True, False]]
