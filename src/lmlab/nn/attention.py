"""Causal softmax attention: the shared kernel (eager / sdpa / flash_attention_2) and the standard MHA/GQA/MQA mixer.

softmax(q·kᵀ·scale + mask)·v, where key j is visible to query i iff j ≤ i (absolute indices), i − j ≤ window when
the layer has a window, and key j is not padding. Grouped heads: kv head g serves query heads g·r .. g·r + r − 1
(r = H_q / H_kv; MQA is H_kv = 1). The softmax is always fp32.

Sliding windows never build the whole T×S mask when the window is active: queries run in blocks of
`query_block` rows, each against only the keys its rows can see (at most block + window of them), so memory and
work grow as T·(block + window) instead of T².

Attention dropout on a CPU: SDPA has no fused CPU kernel with dropout, so its math path keeps the T×S probabilities
(in fp32, even under bf16 autocast) and the dropout mask for the backward: 200 MiB per layer at B 8, T 512, 8
heads. There the kernel runs under activation checkpointing instead: only q, k, v are kept and the backward
recomputes the probabilities with the same dropout mask (the RNG state is restored).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmlab.cache import KVCache, SlidingKVCache
from lmlab.errors import ConfigError, MissingDependencyError
from lmlab.nn.component import Component
from lmlab.nn.context import ForwardContext
from lmlab.nn.init import linear
from lmlab.nn.norms import build_norm
from lmlab.nn.value_embedding import VALUE_EMBED_OPTIONS, ValueEmbedding
from lmlab.registry import MIXERS, NORMS, Option, one_of, unknown_name_message

BACKENDS = ("eager", "sdpa", "flash_attention_2")
WINDOW_QUERY_BLOCK = 128  # queries per block of windowed attention (see the module docstring)


def visibility_mask(t: int, s: int, q_start: int, k_start: int, key_padding: torch.Tensor | None,
                    window: int | None, device) -> torch.Tensor:
    """(B or 1, 1, T, S) bool: True where a query may attend a key.

    Queries have absolute indices q_start .. q_start + T − 1, keys k_start .. k_start + S − 1; key_padding, when
    given, covers absolute indices 0 .. q_start + T − 1. Query rows that see nothing (padding queries) are opened to
    all keys so the softmax stays finite; their outputs belong to padding and are never used.
    """
    q_index = torch.arange(q_start, q_start + t, device=device)
    k_index = torch.arange(k_start, k_start + s, device=device)
    diff = q_index[:, None] - k_index[None, :]
    mask = diff >= 0
    if window is not None:
        mask = mask & (diff <= window)
    mask = mask[None, None]
    if key_padding is not None:
        mask = mask & key_padding[:, None, None, k_start:k_start + s]
        mask = mask | ~mask.any(-1, keepdim=True)
    return mask


def _eager(q, k, v, scale, mask, is_causal, dropout_p):
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    if is_causal:
        t, s = scores.shape[-2:]
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)


def _sdpa(q, k, v, scale, mask, is_causal, dropout_p):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
                                          scale=scale, enable_gqa=q.shape[1] != k.shape[1])


def _flash(q, k, v, scale, window, dropout_p):
    try:
        from flash_attn import flash_attn_func
    except ImportError as err:
        raise MissingDependencyError("attn_implementation='flash_attention_2' needs the flash-attn package "
                                     "(pip install flash-attn) and a CUDA GPU; use 'sdpa' otherwise") from err
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        raise MissingDependencyError("flash_attention_2 runs on CUDA in fp16/bf16 only; use 'sdpa' on this "
                                     "device/dtype")
    # flash-attn is (B, T, H, d) and aligns the causal mask bottom-right (right for decoding with a cache)
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p,
                          softmax_scale=scale, causal=True, window_size=(-1 if window is None else window, 0))
    return out.transpose(1, 2)


def _recomputed(run):
    """`run` under activation checkpointing (same dropout mask in the recompute)."""
    return functools.partial(checkpoint, run, use_reentrant=False)


def _windowed_in_blocks(run, q, k, v, scale, q_start, k_start, key_padding, window, dropout_p, block):
    """Sliding-window attention, `block` queries at a time, each block against the keys it can see only."""
    t, s = q.shape[2], k.shape[2]
    outputs = []
    for first in range(0, t, block):
        last = min(first + block, t)  # queries first .. last − 1 (relative)
        lo = max(0, q_start + first - window - k_start)  # first key (relative) the block's first query sees
        hi = min(s, q_start + last - k_start)  # one past the last key the block's last query sees
        mask = visibility_mask(last - first, hi - lo, q_start + first, k_start + lo, key_padding, window, q.device)
        outputs.append(run(q[:, :, first:last], k[:, :, lo:hi], v[:, :, lo:hi], scale, mask, False, dropout_p))
    return torch.cat(outputs, dim=2)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, q_start: int,
                     k_start: int = 0, key_padding: torch.Tensor | None = None, window: int | None = None,
                     dropout_p: float = 0.0, backend: str = "sdpa",
                     query_block: int = WINDOW_QUERY_BLOCK) -> torch.Tensor:
    """Causal attention of q (B, H_q, T, d) over k, v (B, H_kv, S, d); returns (B, H_q, T, d_v).

    q_start and k_start are the absolute sequence indices of the first query and the first key (keys start after 0
    when a cache keeps only a window). The fast paths (SDPA's is_causal, no mask for a query that sees every key)
    are taken only when they mean exactly the same mask; an active window with more than `query_block` queries runs
    block by block.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attn_implementation {backend!r}; choose one of {BACKENDS}")
    if backend == "flash_attention_2":
        if key_padding is not None:
            raise ConfigError("flash_attention_2 with a padding mask is not supported here; use 'sdpa' for "
                              "padded batches")
        return _flash(q, k, v, scale, window, dropout_p)
    t, s = q.shape[2], k.shape[2]
    keys_end_with_queries = k_start + s == q_start + t
    window_inactive = window is None or window >= q_start + t - 1 - k_start
    run = _eager if backend == "eager" else _sdpa
    if dropout_p > 0 and q.device.type == "cpu" and torch.is_grad_enabled():
        run = _recomputed(run)
    if not window_inactive and t > query_block:
        return _windowed_in_blocks(run, q, k, v, scale, q_start, k_start, key_padding, window, dropout_p,
                                   query_block)
    mask, is_causal = None, False
    if key_padding is None and window_inactive and keys_end_with_queries and (t == 1 or (t == s and k_start == 0)):
        is_causal = t > 1  # one query at the end sees every key: no mask at all
    else:
        mask = visibility_mask(t, s, q_start, k_start, key_padding, window, q.device)
    return run(q, k, v, scale, mask, is_causal, dropout_p)


def attention_backend(config) -> str:
    """The backend the config asks for (HF's `_attn_implementation`; 'sdpa' when unset)."""
    return getattr(config, "_attn_implementation", None) or "sdpa"


class SoftmaxAttention(Component):
    """Multi-head causal attention with grouped KV heads (MHA, GQA, MQA), separate q / k / v projections (so
    adapters such as LoRA can target each), optional rotary encoding and sliding window.

    Options (config): `qk_norm` normalises q and k per head, after the rotation (`qk_norm_position =
    "after_rotation"`; nanochat: parameterless RMSNorm times `qk_norm_scale` 1.2, so |q·k|/sqrt(d_h) ≤ 1.44·sqrt(d_h))
    or before it ("before_rotation"; Qwen3: RMSNorm with a gain); a layer whose spec has `value_embed` adds value
    embeddings (lmlab.nn.value_embedding) to v. A windowed layer caches only the keys its window can reach.

    Hooks for subclasses: `query_parts` (q_proj packs that many head_dim-wide parts per head, the query first),
    `qk_norm_choice` (which norm, where) and `gate` (what happens to the heads' output given the other query parts).
    """

    query_parts = 1  # head_dim-wide parts per head in q_proj, the query first (a subclass may pack more, e.g. a gate)

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = config.attention_softmax_scale
        spec = config.layer_spec(layer_idx)
        self.window = spec.window
        d = config.hidden_size
        self.q_proj = linear(d, self.query_parts * self.num_heads * self.head_dim, config.attention_bias, "attn_in")
        self.k_proj = linear(d, self.num_kv_heads * self.head_dim, config.attention_bias, "attn_in")
        self.v_proj = linear(d, self.num_kv_heads * self.head_dim, config.attention_bias, "attn_in")
        self.out_proj = linear(self.num_heads * self.head_dim, d, config.attention_bias, "attn_out")
        self.value_embed = ValueEmbedding(config) if spec.value_embed else None
        norm, self.qk_norm_position, self.qk_norm_scale = self.qk_norm_choice()
        self.q_norm = self.k_norm = None
        if norm is not None:
            self.q_norm = build_norm(config, self.head_dim, norm)
            self.k_norm = build_norm(config, self.head_dim, norm)

    def qk_norm_choice(self) -> tuple[str | None, str, float]:
        """(norm name or None, "before_rotation" | "after_rotation", scale) of the per-head QK-norm."""
        return self.config.qk_norm, self.config.qk_norm_position, self.config.qk_norm_scale

    def _qk_norm(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = self.q_norm(q), self.k_norm(k)
        if self.qk_norm_scale == 1.0:
            return q, k
        return q * self.qk_norm_scale, k * self.qk_norm_scale

    def heads(self, x: torch.Tensor, ctx: ForwardContext
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """q (B, H, T, d_h) and k, v (B, H_kv, T, d_h) of the block input x, after value embeddings, rotation and
        QK-norm, and the other query parts of each head (B, T, H, (query_parts − 1)·d_h; None when there are none)."""
        b, t, _ = x.shape
        queries = self.q_proj(x).view(b, t, self.num_heads, self.query_parts * self.head_dim)
        q = queries[..., :self.head_dim].transpose(1, 2)
        extra = queries[..., self.head_dim:] if self.query_parts > 1 else None
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.value_embed is not None:
            v = self.value_embed(v, x, ctx.input_ids)
        normalise = self.q_norm is not None
        if normalise and self.qk_norm_position == "before_rotation":
            q, k = self._qk_norm(q, k)
        if ctx.rotation is not None:
            q, k = ctx.rotation.queries(q), ctx.rotation.keys(k)
        if normalise and self.qk_norm_position == "after_rotation":
            q, k = self._qk_norm(q, k)
        return q, k, v, extra

    def project(self, x: torch.Tensor, ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as the attention kernel consumes them (see `heads`)."""
        return self.heads(x, ctx)[:3]

    def gate(self, o: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        """The heads' output (B, T, H·d_h) as out_proj receives it; `extra` is `heads`' other query parts."""
        return o

    def new_cache(self) -> KVCache:
        return KVCache() if self.window is None else SlidingKVCache(window=self.window)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v, extra = self.heads(x, ctx)
        return self.out_proj(self.gate(self.attend(q, k, v, ctx), extra))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """Cache and attend: q (B, H, T, d_h), k, v (B, H_kv, T, d_h) -> heads concatenated (B, T, H·d_h)."""
        b, _, t, _ = q.shape
        if ctx.cache is not None:
            state = ctx.layer_state(self.layer_idx) or self.new_cache()
            k, v = state.append(k, v)
            ctx.set_layer_state(self.layer_idx, state)
        o = causal_attention(q, k, v, scale=self.scale, q_start=ctx.past_length,
                             k_start=ctx.past_length + t - k.shape[2],
                             key_padding=ctx.key_padding_mask, window=self.window,
                             dropout_p=self.config.attention_dropout if self.training else 0.0,
                             backend=attention_backend(self.config))
        return o.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)


def _scale_check(value, config) -> str | None:
    ok = value in ("head_dim", "hidden_size") or (isinstance(value, (int, float)) and not isinstance(value, bool))
    return None if ok else "must be 'head_dim' (1/sqrt(d_h)), 'hidden_size' (1/sqrt(d)) or a number"


def _norm_name_check(value, config) -> str | None:
    return None if value in NORMS else unknown_name_message("norm", value, NORMS.names())


# what every mixer built on `causal_attention` honours
KERNEL_OPTIONS = (
    "window", "rotation", "attention_bias", "attention_dropout",
    Option("attention_scale", check=_scale_check, doc="the multiplier of q·k"),
)
QK_NORM_OPTIONS = (
    Option("qk_norm", check=_norm_name_check, doc="a norm applied per head to q and k"),
    Option("qk_norm_position", check=one_of("after_rotation", "before_rotation"), requires="qk_norm",
           doc="where qk_norm acts: after the rotation (nanochat) or before it (Qwen3)"),
    Option("qk_norm_scale", requires="qk_norm", doc="q, k = scale·norm(q), scale·norm(k)"),
)


def _scale_text(config) -> str:
    named = {"head_dim": config.head_dim, "hidden_size": config.hidden_size}
    return f"1/√{named[config.attention_scale]}" if config.attention_scale in named else f"{config.attention_scale:g}"


def describe_heads(config, layer_idx) -> str:
    """Heads, scale, window, position and options of an attention layer, for describe()."""
    spec = config.layer_spec(layer_idx)
    scale = _scale_text(config)
    kv_heads = config.num_key_value_heads
    kv = "" if kv_heads == config.num_attention_heads else f", {kv_heads} kv head{'s' if kv_heads > 1 else ''}"
    parts = [f"{config.num_attention_heads} heads × {config.head_dim}{kv}", f"scale {scale}",
             f"window {spec.window}" if spec.window is not None else "full causal", f"position {config.position}"]
    if config.attention_bias:
        parts.append("biases")
    if config.attention_dropout:
        parts.append(f"dropout {config.attention_dropout:g} on the probabilities")
    return ", ".join(parts)


def describe_attention(config, layer_idx) -> str:
    spec = config.layer_spec(layer_idx)
    extras = ""
    if config.qk_norm is not None:
        scale = "" if config.qk_norm_scale == 1.0 else f"{config.qk_norm_scale:g}·"
        extras += f", q, k ← {scale}{config.qk_norm}(·) {config.qk_norm_position.replace('_', ' the ')}"
    if spec.value_embed:
        extras += (f", v += {config.value_embed_gate_scale:g}·σ(W·x[:{config.value_embed_gate_channels}])"
                   "·VE[ids] (value embeddings)")
    return f"out(softmax(q·kᵀ·scale + mask)·v): {describe_heads(config, layer_idx)}{extras}"


MIXERS.register("attention", options=(*KERNEL_OPTIONS, *QK_NORM_OPTIONS, *VALUE_EMBED_OPTIONS),
                describe=describe_attention)(SoftmaxAttention)

__all__ = ["BACKENDS", "KERNEL_OPTIONS", "SoftmaxAttention", "attention_backend", "causal_attention", "describe_heads",
           "visibility_mask"]
