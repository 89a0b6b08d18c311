"""The embedding stage: embedding norm and smear."""

import torch

from conftest import forward_context, tiny_config
from lmlab.nn.embedding_stage import EmbeddingStage


def test_smear_formula_and_zero_strength_identity():
    stage = EmbeddingStage(tiny_config("yatgpt-tiny"))
    stage.smear.reset_parameters()
    embeddings = torch.randn(2, 9, 64) * 2
    ctx = forward_context(9, batch=2)
    e = embeddings / torch.sqrt(embeddings.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(stage(embeddings, ctx), e)  # λ = 0 at init: identity
    with torch.no_grad():
        stage.smear.strength.fill_(0.7)
    out = stage(embeddings, ctx)
    expected = e.clone()
    for t in range(1, 9):
        gate = 0.7 * torch.sigmoid(e[:, t, :24] @ stage.smear.gate[0])
        expected[:, t] = e[:, t] + gate[:, None] * e[:, t - 1]
    torch.testing.assert_close(out, expected)


def test_smear_skips_a_padding_predecessor():
    stage = EmbeddingStage(tiny_config("yatgpt-tiny"))
    stage.smear.reset_parameters()
    with torch.no_grad():
        stage.smear.strength.fill_(0.9)
    embeddings = torch.randn(1, 6, 64)
    padding = torch.tensor([[False, False, True, True, True, True]])
    padded = stage(embeddings, forward_context(6, key_padding=padding))
    alone = stage(embeddings[:, 2:], forward_context(4))
    torch.testing.assert_close(padded[:, 2:], alone)
