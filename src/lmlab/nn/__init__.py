"""The component bin. Importing this package registers every component with its registry."""

from lmlab.nn import (  # noqa: F401
    attention,
    blocks,
    embedding_stage,
    gated_attention,
    gated_deltanet,
    gated_silu,
    head,
    init,
    loss,
    mlp,
    norms,
    polynorm,
    position,
    residual_stream,
    selective_copy,
    xpos,
    yatnmn,
)
