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

from lmlab.hardware import device_runs_bf16_fast
from lmlab.nn.numerics import autocast_disabled
from lmlab.registry import PARTS, Option, one_of

IGNORE_INDEX = -100
LOSS_KINDS = ("full", "chunked")
CHUNK_ELEMENTS = 2 ** 26  # logits per chunk (256 MiB in fp32; fewer, larger chunks are faster on a CPU)


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
    """The dtype of the head matmuls: the autocast dtype where autocast is on and the device runs it fast (a CUDA
    GPU; a CPU with AVX512-BF16 or AMX, lmlab.hardware), else the hidden states' own. On an AVX2-only CPU a bf16 GEMM
    whose reduction runs over the vocabulary (the hidden-state gradient) is up to ~150× slower than fp32 (measured on
    an AVX2 EPYC), so there the matmuls stay fp32."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device) and (hidden.is_cuda or device_runs_bf16_fast(hidden.device)):
        dtype = torch.get_autocast_dtype(device)
        if hidden.is_cuda or dtype == torch.bfloat16:
            return dtype
    return hidden.dtype


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Turn fp32 logits (n, V) into their softmax in place; returns the rows' logsumexp (n,).

        m = max z,  e = exp(z − m),  s = Σ e,  softmax = e / s,  lse = m + log s   (four passes, no temporaries)"""
    top = logits.amax(-1, keepdim=True)
    logits.sub_(top).exp_()
    sums = logits.sum(-1, keepdim=True)
    logits.div_(sums)
    return (top + sums.log()).squeeze(1)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Loss and gradients (of the mean, 1/#valid applied to the hidden rows) chunk by chunk in the forward pass; the
    backward scales them by the incoming gradient unless it is 1.

    Each chunk's logits live in one fp32 buffer reused by every chunk (fresh large tensors cost page faults on a CPU,
    about as much again as the arithmetic); with bf16 matmuls a second buffer holds the chunk in bf16, and a third
    (V × d) each chunk's head gradient before it is added to the fp32 sum."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap, rows, needs_grad):
        compute = _matmul_dtype(hidden)
        n, vocab = hidden.shape[0], weight.shape[0]
        valid = targets != IGNORE_INDEX
        safe_targets = targets.clamp(min=0)
        count = valid.sum().float()
        inverse = 1.0 / count  # gradients are of the mean: scaled here on the small factors, never on V × d
        ignored = (~valid).nonzero().squeeze(1)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_grad else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if needs_grad and bias is not None else None
        rows = min(rows, n)
        buffer = torch.empty(rows, vocab, dtype=torch.float32, device=hidden.device)
        low = buffer if compute == torch.float32 else torch.empty(rows, vocab, dtype=compute, device=hidden.device)
        # a chunk's head gradient in the matmul dtype (addmm_ cannot mix it with the fp32 sum), reused by every chunk
        partial = None if compute == torch.float32 or not needs_grad else torch.empty_like(weight, dtype=compute)
        with autocast_disabled(hidden.device):
            w = weight.to(compute)
            for start in range(0, n, rows):
                stop = min(start + rows, n)
                h = hidden[start:stop].to(compute)
                scaled_h = h * inverse.to(compute)
                z = torch.mm(h, w.T, out=low[:stop - start])
                logits = z if compute == torch.float32 else buffer[:stop - start].copy_(z)
                if bias is not None:
                    logits += bias.float()
                if softcap is not None:
                    capped = torch.tanh(logits.div_(softcap))
                    logits = torch.mul(capped, softcap, out=logits)
                ok, tgt = valid[start:stop], safe_targets[start:stop]
                picked = logits.gather(1, tgt[:, None]).squeeze(1)
                lse = _softmax_(logits)
                total += ((lse - picked) * ok).sum()
                if not needs_grad:
                    continue
                grad_logits = logits  # the softmax, in place
                grad_logits[torch.arange(stop - start, device=hidden.device), tgt] -= 1.0
                skipped = ignored[(ignored >= start) & (ignored < stop)] - start
                if skipped.numel():
                    grad_logits.index_fill_(0, skipped, 0.0)
                if softcap is not None:
                    grad_logits *= 1.0 - capped.square()
                if grad_bias is not None:
                    grad_bias += grad_logits.sum(0)
                if compute != torch.float32:
                    grad_logits = z.copy_(grad_logits)
                if grad_hidden.dtype == compute:
                    torch.mm(grad_logits, w, out=grad_hidden[start:stop])
                else:
                    grad_hidden[start:stop] = grad_logits @ w
                grad_hidden[start:stop] *= inverse.to(grad_hidden.dtype)
                if compute == torch.float32:
                    grad_weight.addmm_(grad_logits.T, scaled_h)  # in place: no vocab × d temporary per chunk
                else:
                    grad_weight += torch.mm(grad_logits.T, scaled_h, out=partial)
        if needs_grad:
            if grad_bias is not None:
                grad_bias *= inverse
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
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
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        if not bool(grad_output == 1):  # the trainer's usual case (no accumulation) needs no pass over V × d
            scale = grad_output.float()
            grad_hidden.mul_(scale.to(grad_hidden.dtype))
            grad_weight.mul_(scale)
            if grad_bias is not None:
                grad_bias.mul_(scale)
        grad_weight = grad_weight.to(ctx.weight_dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(ctx.bias_dtype)
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
