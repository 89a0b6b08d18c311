"""Language-modelling losses.

`shifted_cross_entropy` takes materialised logits. `shifted_linear_cross_entropy` computes the same value from the
final hidden states and the head weight without ever holding the (batch × sequence × vocabulary) logits: rows are
processed in chunks of about `CHUNK_ELEMENTS / vocab` tokens, and each chunk's gradient is computed in the forward pass
(softmax − one-hot, through the optional soft-cap, times the head weight / hidden states), so the backward only scales
the stored gradients. On an Ampere-or-newer CUDA GPU with the `cut-cross-entropy` package installed (and no head bias)
its Triton kernel is used instead. `config.loss = "chunked"` makes the model use it whenever labels are given.

Per token i with hidden h_i, head (E, b) and target y_i (−100 = ignored):
    z_i = E h_i + b,  s_i = cap · tanh(z_i / cap) (when soft-capped, else z_i),  loss_i = logsumexp(s_i) − s_i[y_i]
    loss = Σ_valid loss_i / #valid                            (fp32 LSE; 0/0 = nan when every target is ignored)
On CUDA the matmuls run in the autocast dtype when autocast is on (as the materialised head would); on CPU in the
hidden states' dtype (see `_matmul_dtype`); the softmax, LSE and gradient sums always in fp32.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from lmlab.nn.numerics import autocast_disabled
from lmlab.registry import PARTS, Option, one_of

IGNORE_INDEX = -100
LOSS_KINDS = ("full", "chunked")
CHUNK_ELEMENTS = 2 ** 24  # logits per chunk (64 MiB in fp32)


def shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: logits[:, :-1] against labels[:, 1:], labels of −100 ignored, fp32.

    Callers pass labels = input_ids (padding set to −100); the shift happens here, never in the data pipeline.
    """
    logits = logits[:, :-1].float()
    targets = labels[:, 1:].to(logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def mask_ignored_targets(labels: torch.Tensor, token_id: int | None) -> torch.Tensor:
    """`labels` with every `token_id` set to −100, so the loss never scores that token as a target (NYX never
    scores byte 0); unchanged when token_id is None."""
    if token_id is None:
        return labels
    return labels.masked_fill(labels == token_id, IGNORE_INDEX)


def shifted_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                                 bias: torch.Tensor | None = None, softcap: float | None = None,
                                 chunk_rows: int | None = None) -> torch.Tensor:
    """`shifted_cross_entropy(softcap(hidden @ weight.T + bias), labels)` without materialising the logits.

    hidden (B, T, d) final hidden states; weight (V, d) head (the tied embedding); labels (B, T).
    """
    if hidden.shape[:2] != labels.shape:
        raise ValueError(f"labels have shape {tuple(labels.shape)} but the hidden states are "
                         f"{tuple(hidden.shape[:2])} (batch, sequence); give one label per input token")
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    kernel = _cut_cross_entropy() if hidden.is_cuda and bias is None else None
    if kernel is not None and torch.cuda.is_bf16_supported():  # CCE's kernel needs an Ampere or newer GPU
        if torch.is_autocast_enabled("cuda"):  # CCE does not follow autocast; match the materialised head
            dtype = torch.get_autocast_dtype("cuda")
            h, weight = h.to(dtype), weight.to(dtype)
        return kernel(h, weight, targets, ignore_index=IGNORE_INDEX, softcap=softcap, reduction="mean")
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // weight.shape[0])
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    return _ChunkedLinearCrossEntropy.apply(h, weight, bias, targets, softcap, rows, needs_grad)


@functools.cache
def _cut_cross_entropy():
    """cut-cross-entropy's `linear_cross_entropy`, or None when the package is not installed."""
    try:
        from cut_cross_entropy import linear_cross_entropy
    except ImportError:
        return None
    return linear_cross_entropy


def _matmul_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype of the head matmuls: the autocast dtype on CUDA (as the materialised head), else the hidden states'
    own. On CPU autocast is not followed: without AVX512-BF16 a bf16 GEMM whose reduction runs over the vocabulary
    (the hidden-state gradient) is up to ~150× slower than fp32 (measured on an AVX2 EPYC)."""
    if hidden.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return hidden.dtype


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Loss and gradients chunk by chunk in the forward pass; the backward scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap, rows, needs_grad):
        compute = _matmul_dtype(hidden)
        valid = targets != IGNORE_INDEX
        safe_targets = targets.clamp(min=0)
        count = valid.sum().float()
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_grad else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if needs_grad and bias is not None else None
        with autocast_disabled(hidden.device):
            w = weight.to(compute)
            for start in range(0, hidden.shape[0], rows):
                stop = min(start + rows, hidden.shape[0])
                h = hidden[start:stop].to(compute)
                logits = (h @ w.T).float()
                if bias is not None:
                    logits += bias.float()
                if softcap is not None:
                    capped = torch.tanh(logits / softcap)
                    logits = capped * softcap
                lse = torch.logsumexp(logits, dim=-1)
                ok, tgt = valid[start:stop], safe_targets[start:stop]
                total += ((lse - logits.gather(1, tgt[:, None]).squeeze(1)) * ok).sum()
                if not needs_grad:
                    continue
                grad_logits = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                grad_logits[torch.arange(stop - start, device=hidden.device), tgt] -= 1.0
                grad_logits *= ok[:, None]
                if softcap is not None:
                    grad_logits *= 1.0 - capped.square()
                if grad_bias is not None:
                    grad_bias += grad_logits.sum(0)
                grad_logits = grad_logits.to(compute)
                grad_hidden[start:stop] = grad_logits @ w
                if compute == torch.float32:
                    grad_weight.addmm_(grad_logits.T, h)  # in place: no vocab × d temporary per chunk
                else:
                    grad_weight += (grad_logits.T @ h).float()
        if needs_grad:
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias, count)
            ctx.weight_dtype = weight.dtype
            ctx.bias_dtype = None if bias is None else bias.dtype
            ctx.consumed = False
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.consumed:
            raise RuntimeError("the chunked cross-entropy's backward ran twice; its stored gradients are scaled in "
                               "place. Compute the loss again (or use loss='full') to backpropagate twice")
        ctx.consumed = True
        grad_hidden, grad_weight, grad_bias, count = ctx.saved_tensors
        scale = grad_output.float() / count
        grad_hidden = grad_hidden.mul_(scale.to(grad_hidden.dtype))
        grad_weight = grad_weight.mul_(scale).to(ctx.weight_dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.mul_(scale).to(ctx.bias_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def describe_loss(config, layer_idx) -> str:
    how = ("from the hidden states chunk by chunk, never all logits at once" if config.loss == "chunked"
           else "of the materialised logits")
    ignored = "" if config.loss_ignore_token_id is None else f" and target {config.loss_ignore_token_id}"
    return f"mean next-token cross-entropy {how} (loss={config.loss!r}); targets −100{ignored} are not scored"


PARTS.register("loss", options=(
    Option("loss", check=one_of(*LOSS_KINDS), doc="'full' (logits, then cross-entropy) or 'chunked'"),
    "loss_ignore_token_id",
), describe=describe_loss)(shifted_cross_entropy)
