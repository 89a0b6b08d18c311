"""Whether the Hugging Face hub can be reached now, asked once and quickly.

A name that is not a built-in or a local folder (a tokenizer, an `hf:` dataset) is looked up on the hub, and the hub
libraries retry an unreachable server for about a minute before failing. lmlab asks first: with HF_HUB_OFFLINE set,
or when one HEAD request to the hub's endpoint (through the hub library's own session, so proxies apply) fails
within a few seconds, the caller fails at once with a message that names the spec.
"""

from __future__ import annotations

import os

PROBE_TIMEOUT_S = 3.0
OFFLINE_VALUES = ("1", "ON", "YES", "TRUE")


def hub_unavailable() -> str | None:
    """Why the hub cannot be used now (HF_HUB_OFFLINE is set, or its endpoint does not answer), else None."""
    import huggingface_hub.constants as constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in OFFLINE_VALUES:
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 (the session's network errors differ between hub releases)
        return f"{constants.ENDPOINT} did not answer: {type(err).__name__}: {err}"
    return None


__all__ = ["hub_unavailable"]
