"""The component bin. Importing this package registers every component with its registry."""

from lmlab.nn import attention, blocks, init, mlp, norms, position, selective_copy, xpos, yatnmn  # noqa: F401
