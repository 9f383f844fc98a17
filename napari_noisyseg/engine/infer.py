"""Sliding-window inference for samples of any size.

A sample is cut into overlapping square tiles (padded to a multiple of
2**depth), each tile's softmax is weighted by a smooth window that falls off
towards the tile border, and the weighted sum is normalised. This keeps seams
invisible and lets a network trained on 256-pixel patches segment a whole slide.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ..core.patches import round_up
from .device import NumericPath
from .unet import set_dropout


def _window(size: int) -> np.ndarray:
    """Separable weight (size, size): 1 in the middle, tapering to ~0.1 at the edge."""
    ramp = np.minimum(np.arange(size) + 1, np.arange(size)[::-1] + 1) / (size / 4)
    ramp = np.clip(ramp, 0.1, 1.0)
    return np.outer(ramp, ramp).astype(np.float32)


def _tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


@torch.no_grad()
def predict_probabilities(
    models,
    image: np.ndarray,
    path: NumericPath,
    tile: int = 512,
    overlap: float = 0.25,
    multiple: int = 16,
    batch_size: int = 4,
    flip_tta: bool = False,
    mc_dropout: int = 0,
) -> np.ndarray:
    """Class probabilities of one sample, averaged over ``models``.

    Parameters
    ----------
    models : torch.nn.Module or list of Module
        Networks returning logits (N, K, H, W); put in eval mode here (except
        dropout when ``mc_dropout`` > 0).
    image : ndarray, float32, (C, H, W)
    path : NumericPath
    tile : int
        Largest tile side; samples up to this size run in one pass.
    multiple : int
        Tile sides are padded to a multiple of this (2**depth).
    flip_tta : bool
        Also average over a horizontal flip.
    mc_dropout : int
        When > 0, keep dropout active and average this many stochastic passes.

    Returns
    -------
    ndarray, float32, (K, H, W)
    """
    if isinstance(models, torch.nn.Module):
        models = [models]
    _, height, width = image.shape
    tile_h = round_up(min(tile, height), multiple)
    tile_w = round_up(min(tile, width), multiple)
    padded_h, padded_w = max(height, tile_h), max(width, tile_w)
    # Zeros, as the training patches are padded (see core.patches.crop).
    padded = np.pad(image, ((0, 0), (0, padded_h - height), (0, padded_w - width)))
    starts = [(y, x) for y in _tile_starts(padded_h, tile_h, overlap) for x in _tile_starts(padded_w, tile_w, overlap)]
    weight = torch.from_numpy(_window(max(tile_h, tile_w))[:tile_h, :tile_w]).to(path.device)
    total = None
    norm = torch.zeros((padded_h, padded_w), device=path.device)
    for index in range(0, len(starts), batch_size):
        chunk = starts[index : index + batch_size]
        tiles = np.stack([padded[:, y : y + tile_h, x : x + tile_w] for y, x in chunk])
        batch = torch.from_numpy(tiles).to(path.device).contiguous(memory_format=path.memory_format(4))
        probabilities = _ensemble_softmax(models, batch, path, flip_tta, mc_dropout)
        if total is None:
            total = torch.zeros((probabilities.shape[1], padded_h, padded_w), device=path.device)
        for (y, x), tile_probs in zip(chunk, probabilities):
            total[:, y : y + tile_h, x : x + tile_w] += tile_probs * weight
            norm[y : y + tile_h, x : x + tile_w] += weight
    result = (total / norm.clamp(min=1e-6))[:, :height, :width]
    return result.float().cpu().numpy()


@torch.no_grad()
def predict_many(
    models,
    images: list,
    path: NumericPath,
    tile: int = 512,
    multiple: int = 16,
    batch_size: int = 16,
    flip_tta: bool = False,
    mc_dropout: int = 0,
    min_size: int = 0,
) -> list:
    """Probabilities (K, H, W) float32 of many samples (C, H, W).

    Samples that fit in one tile are grouped by shape and run in batches (the
    slices of a 3D volume are thousands of small samples); larger ones go
    through :func:`predict_probabilities` one by one.

    A small sample is centred in zeros up to ``min_size`` (pass the training patch
    size) and a multiple of ``multiple``: that is how training showed it to the
    network (:class:`~napari_noisyseg.core.patches.PatchSampler` pads with zeros
    around samples smaller than a patch). Padding with edge values at the
    bottom-right instead was measured to collapse test Dice on hippocampus slices
    (36×50 pixels in 64-pixel patches: 0.31 against 0.74 for the same network).
    """
    if isinstance(models, torch.nn.Module):
        models = [models]
    results: list = [None] * len(images)
    groups: dict = {}
    for index, image in enumerate(images):
        if max(image.shape[1:]) <= tile:
            groups.setdefault(image.shape, []).append(index)
        else:
            results[index] = predict_probabilities(
                models, image, path, tile=tile, multiple=multiple, flip_tta=flip_tta, mc_dropout=mc_dropout
            )
    for shape, indices in groups.items():
        _, height, width = shape
        padded_h = round_up(max(height, min(min_size, tile)), multiple)
        padded_w = round_up(max(width, min(min_size, tile)), multiple)
        top, left = (padded_h - height) // 2, (padded_w - width) // 2
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            stack = np.stack([images[i] for i in chunk])
            stack = np.pad(stack, ((0, 0), (0, 0), (top, padded_h - height - top), (left, padded_w - width - left)))
            batch = torch.from_numpy(stack).to(path.device).contiguous(memory_format=path.memory_format(4))
            probabilities = _ensemble_softmax(models, batch, path, flip_tta, mc_dropout)
            probabilities = probabilities[:, :, top : top + height, left : left + width].float().cpu().numpy()
            for i, index in enumerate(chunk):
                results[index] = probabilities[i]
    return results


def _ensemble_softmax(models, batch, path, flip_tta: bool, mc_dropout: int) -> torch.Tensor:
    # Predicting mid-training (previews, per-epoch predictions) must not leave the
    # networks in eval mode: remember every module's mode and restore it afterwards.
    modes = [(module, module.training) for model in models for module in model.modules()]
    try:
        return _ensemble_softmax_eval(models, batch, path, flip_tta, mc_dropout)
    finally:
        for module, training in modes:
            module.train(training)


def _ensemble_softmax_eval(models, batch, path, flip_tta: bool, mc_dropout: int) -> torch.Tensor:
    for model in models:
        model.eval()
        if mc_dropout:
            set_dropout(model, True)
    total, count = 0, 0
    for model in models:
        for _ in range(max(1, mc_dropout)):
            with path.autocast():
                total = total + F.softmax(model(batch).float(), dim=1)
                count += 1
                if flip_tta:
                    flipped = F.softmax(model(torch.flip(batch, dims=(-1,))).float(), dim=1)
                    total = total + torch.flip(flipped, dims=(-1,))
                    count += 1
    return total / count
