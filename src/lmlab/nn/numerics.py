"""Helpers for the parts that must run in full precision whatever the surrounding autocast."""

from __future__ import annotations

import contextlib

import torch


def autocast_disabled(device: torch.device):
    """A context with autocast off on `device` (a no-op on devices without autocast, e.g. meta)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
