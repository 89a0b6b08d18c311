"""The component bin. Importing this package registers every component with its registry."""

from lmlab.nn import (  # noqa: F401
    attention,
    blocks,
    gated_attention,
    gated_deltanet,
    gated_silu,
    init,
    mlp,
    norms,
    polynorm,
    position,
    selective_copy,
    xpos,
    yatnmn,
)
