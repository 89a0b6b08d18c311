"""Budget arithmetic against the yatgpt cards' published step counts."""

import pytest

from lmlab.train.budget import chinchilla_tokens, steps_for_tokens


def test_chinchilla_steps_reproduce_the_yatgpt_cards():
    assert steps_for_tokens(chinchilla_tokens(261_133_226), 256, 1024) == 19_922  # main model
    assert steps_for_tokens(chinchilla_tokens(261_096_338), 256, 1024) == 19_920  # GELU baseline


def test_budget_smaller_than_one_step_is_refused():
    with pytest.raises(ValueError, match="less than one step"):
        steps_for_tokens(1000, 8, 512)
