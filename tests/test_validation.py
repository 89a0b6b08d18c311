"""Which validation windows a run scores: all of a small split, else a fixed sample spread over all of it."""

from lmlab.train.validation import VALIDATION_TOKENS, validation_windows


def test_a_small_split_is_scored_whole():
    assert validation_windows(400, 256, None, 8) == list(range(400))  # 102,400 tokens <= VALIDATION_TOKENS
    assert validation_windows(400, 256, 0, 8) == list(range(400))


def test_a_large_split_is_sampled_from_all_over_it_and_always_the_same_way():
    available, seq_len = 50_000, 256
    chosen = validation_windows(available, seq_len, None, 8)
    assert len(chosen) == VALIDATION_TOKENS // seq_len and len(set(chosen)) == len(chosen)
    assert chosen == sorted(chosen) and chosen == validation_windows(available, seq_len, None, 8)
    quarters = [sum(q * available // 4 <= i < (q + 1) * available // 4 for i in chosen) for q in range(4)]
    assert min(quarters) > 0.2 * len(chosen)  # not the first part only: every quarter of the split is scored


def test_eval_batches_asks_for_that_many_micro_batches_from_all_over_the_split():
    chosen = validation_windows(10_000, 64, 3, 8)
    assert len(chosen) == 24 and max(chosen) > 5_000
