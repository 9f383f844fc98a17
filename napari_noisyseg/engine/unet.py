"""A configurable U-Net for 2D and 3D segmentation.

Every method builds its networks from this one class, so a checkpoint only needs
the constructor arguments (:meth:`UNet.spec`) and the weights to rebuild a model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _conv(ndim: int):
    return nn.Conv2d if ndim == 2 else nn.Conv3d


def _norm(ndim: int):
    return nn.BatchNorm2d if ndim == 2 else nn.BatchNorm3d


def _dropout(ndim: int):
    return nn.Dropout2d if ndim == 2 else nn.Dropout3d


DROPOUT_TYPES = (nn.Dropout, nn.Dropout2d, nn.Dropout3d)


def set_dropout(model: nn.Module, active: bool) -> None:
    """Switch only the dropout layers of ``model`` on (sampling) or off, whatever its mode."""
    for module in model.modules():
        if isinstance(module, DROPOUT_TYPES):
            module.train(active)


class ConvBlock(nn.Sequential):
    """Two 3×3(×3) convolutions, each followed by batch norm and ReLU."""

    def __init__(self, ndim: int, in_channels: int, out_channels: int, dropout: float = 0.0):
        conv, norm = _conv(ndim), _norm(ndim)
        layers: list[nn.Module] = [
            conv(in_channels, out_channels, 3, padding=1, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(_dropout(ndim)(dropout))
        layers += [
            conv(out_channels, out_channels, 3, padding=1, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
        ]
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net with configurable width, depth, dropout and up-sampling.

    Parameters
    ----------
    in_channels : int
        Image channels C of inputs shaped (N, C, H, W) or (N, C, D, H, W).
    n_classes : int
        Output channels K (background included); outputs are logits.
    width : int
        Channels of the first level; doubled at every level down.
    depth : int
        Number of down-sampling steps; spatial sizes must be divisible by 2**depth
        (:func:`napari_noisyseg.engine.infer.predict_logits` pads for you).
    ndim : {2, 3}
    dropout : float
        Channel dropout inside the bottleneck and decoder blocks (0 disables it);
        Monte-Carlo dropout methods need it > 0.
    up_mode : {"transpose", "bilinear"}
        Decoder up-sampling; two branches with different decoders see the data differently (CLCS).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        width: int = 16,
        depth: int = 4,
        ndim: int = 2,
        dropout: float = 0.0,
        up_mode: str = "transpose",
    ):
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, not {ndim}")
        if up_mode not in ("transpose", "bilinear"):
            raise ValueError(f"up_mode must be 'transpose' or 'bilinear', not {up_mode!r}")
        self._spec = dict(
            in_channels=in_channels, n_classes=n_classes, width=width, depth=depth,
            ndim=ndim, dropout=dropout, up_mode=up_mode,
        )
        self.ndim = ndim
        self.depth = depth
        self.up_mode = up_mode
        channels = [width * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        previous = in_channels
        for level, out in enumerate(channels):
            block_dropout = dropout if level == depth else 0.0
            self.encoders.append(ConvBlock(ndim, previous, out, block_dropout))
            previous = out
        self.pool = nn.MaxPool2d(2) if ndim == 2 else nn.MaxPool3d(2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        conv = _conv(ndim)
        for level in reversed(range(depth)):
            high, low = channels[level + 1], channels[level]
            if up_mode == "transpose":
                transpose = nn.ConvTranspose2d if ndim == 2 else nn.ConvTranspose3d
                self.ups.append(transpose(high, low, 2, stride=2))
            else:
                self.ups.append(conv(high, low, 1))
            self.decoders.append(ConvBlock(ndim, 2 * low, low, dropout))
        self.head = conv(channels[0], n_classes, 1)

    def spec(self) -> dict:
        """Constructor arguments, enough to rebuild this network."""
        return dict(self._spec)

    def _upsample(self, index: int, x: torch.Tensor, size) -> torch.Tensor:
        if self.up_mode == "transpose":
            return self.ups[index](x)
        mode = "bilinear" if self.ndim == 2 else "trilinear"
        return self.ups[index](F.interpolate(x, size=size, mode=mode, align_corners=False))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits, penultimate_features)``.

        The features (N, width, ...) are the last decoder block's output, used by
        feature-level losses such as the CLCS discrepancy loss.
        """
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x)
            if level < self.depth:
                skips.append(x)
                x = self.pool(x)
        for index, decoder in enumerate(self.decoders):
            skip = skips[-(index + 1)]
            x = self._upsample(index, x, skip.shape[2:])
            x = decoder(torch.cat([skip, x], dim=1))
        return self.head(x), x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


def build_unet(spec: dict) -> UNet:
    """Rebuild a network from :meth:`UNet.spec` (unknown keys are refused)."""
    allowed = {"in_channels", "n_classes", "width", "depth", "ndim", "dropout", "up_mode"}
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"Unknown U-Net settings {sorted(unknown)}")
    return UNet(**spec)
