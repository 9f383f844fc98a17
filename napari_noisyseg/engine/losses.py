"""Segmentation losses shared by every method.

Shapes: ``logits`` (N, K, *spatial) float; ``labels`` (N, *spatial) int64;
``weights`` (N, *spatial) float in [0, 1] (0 = pixel ignored); soft targets
(N, K, *spatial) float summing to 1 over K. Every ``*_map`` function returns a
per-pixel loss (N, *spatial); ``per_sample`` reduces it to (N,).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def ce_map(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy, float32 (N, *spatial)."""
    return F.cross_entropy(logits.float(), labels.clamp(min=0), reduction="none")


def soft_ce_map(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy against soft targets (N, K, *spatial)."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1)


def reverse_ce_map(logits: torch.Tensor, labels: torch.Tensor, log_floor: float = -4.0) -> torch.Tensor:
    """Per-pixel reverse cross-entropy −Σ p·log q(label), with log 0 clamped to ``log_floor``.

    The symmetric-CE paper (Wang et al. 2019) uses A = −4; it bounds the loss of
    a confidently wrong label, which is what makes RCE robust to noise.
    """
    probabilities = F.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(labels.clamp(min=0), logits.shape[1]).movedim(-1, 1).float()
    log_target = torch.clamp(torch.log(one_hot.clamp(min=1e-12)), min=log_floor)
    return -(probabilities * log_target).sum(dim=1)


def masked_mean(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean of a per-pixel map over everything (a scalar)."""
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def per_sample(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean of a per-pixel map over each sample, shape (N,)."""
    flat = values.flatten(1)
    if weights is None:
        return flat.mean(dim=1)
    w = weights.flatten(1)
    return (flat * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)


def soft_dice_per_sample(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    include_background: bool = False,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Soft Dice loss (1 − Dice) per sample, averaged over classes, shape (N,).

    Parameters
    ----------
    targets : torch.Tensor
        Integer labels (N, *spatial) or soft targets (N, K, *spatial).
    """
    probabilities = F.softmax(logits.float(), dim=1)
    n_classes = logits.shape[1]
    if targets.dtype in (torch.int64, torch.int32, torch.uint8):
        targets = F.one_hot(targets.long().clamp(min=0), n_classes).movedim(-1, 1).float()
    if weights is not None:
        probabilities = probabilities * weights.unsqueeze(1)
        targets = targets * weights.unsqueeze(1)
    start = 0 if include_background or n_classes == 1 else 1
    dims = tuple(range(2, logits.ndim))
    intersection = (probabilities * targets).sum(dim=dims)[:, start:]
    denominator = (probabilities + targets).sum(dim=dims)[:, start:]
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return 1 - dice.mean(dim=1)


def ce_dice_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """CE + soft Dice on hard labels, the baseline's objective (a scalar)."""
    return masked_mean(ce_map(logits, labels), weights) + soft_dice_per_sample(logits, labels, weights).mean()


def ce_dice_per_sample(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean pixel CE + soft Dice of each sample, shape (N,) (Co-Seg's sample loss)."""
    return per_sample(ce_map(logits, labels), weights) + soft_dice_per_sample(logits, labels, weights)
