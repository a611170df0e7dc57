"""PixNet's networks: the weight-free stain/texture pyramid encoder or a timm pyramid, and the map decoder.

Both output a per-pixel map of the genes at ``out_stride`` × the input pixel size, in linear units (exponential
output: non-negative). See :mod:`stpredict.models.pixnet` for the method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._image_tensors import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    import torch

__all__ = ["build_network"]


def _gaussian_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / max(sigma, 1e-3)) ** 2)
    return (k / k.sum()).astype(np.float32)


def _build_handcrafted(n_genes: int, channels: int, out_stride: int, input_mpp: float) -> torch.nn.Module:
    """Weight-free stain/texture pyramid encoder (the ``handcrafted`` backbone's per-pixel maps, in torch) + decoder.

    Per input pixel: optical density (3), Ruifrok–Johnston H/E/D concentrations (3), grey, saturation, gradient
    energy of grey and of hematoxylin, a nucleus-scale difference-of-Gaussians of hematoxylin, a nucleus mask and
    a tissue mask (13 maps; filters sized in µm). Pooled to the map resolution, each map is summarised over 1, 3
    and 9 map pixels (mean) and 3 map pixels (sd): a cell-to-tissue pyramid of 52 channels, then a learned
    BatchNorm and a small convolutional decoder to the genes (exponential output: linear, non-negative).
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    from ..pp._stain import RUIFROK_HED

    hed = torch.as_tensor(np.linalg.inv(RUIFROK_HED).astype(np.float32))
    # the inverse of imagenet_normalise(divide_first=False), which made the network's input
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    kernels = {
        name: torch.as_tensor(_gaussian_kernel(sig / input_mpp))
        for name, sig in (("fine", 0.7), ("s1", 1.5), ("s2", 4.0))
    }
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    n_maps = 13

    def blur(a: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        r = len(k) // 2
        c = a.shape[1]
        a = F.conv2d(F.pad(a, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(F.pad(a, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    def grad(a: torch.Tensor) -> torch.Tensor:
        a = F.pad(blur(a, kernels["fine"].to(a.device)), (1, 1, 1, 1), mode="replicate")
        gx = F.conv2d(a, sobel.to(a.device).view(1, 1, 3, 3))
        gy = F.conv2d(a, sobel.t().to(a.device).view(1, 1, 3, 3))
        return torch.sqrt(gx**2 + gy**2 + 1e-12)

    class Pyramid(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                rgb = (x.float() * std.to(x.device) + mean.to(x.device)).clamp(0, 255)
                od = -torch.log((rgb + 1.0) / 256.0)
                conc = torch.einsum("bchw,cd->bdhw", od, hed.to(x.device)).clamp_min(0.0)
                grey = rgb.mean(1, keepdim=True) / 255.0
                mx, mn = rgb.amax(1, keepdim=True) / 255.0, rgb.amin(1, keepdim=True) / 255.0
                sat = (mx - mn) / mx.clamp_min(1e-3)
                hem = conc[:, :1]
                blob = blur(hem, kernels["s1"].to(x.device)) - blur(hem, kernels["s2"].to(x.device))
                nuclei = ((blob > 0.02) & (hem > 0.05)).float()
                tissue = ((grey < 0.85) | (sat > 0.12)).float()
                maps = torch.cat([od, conc, grey, sat, grad(grey), grad(hem), blob, nuclei, tissue], 1)
                m = F.avg_pool2d(maps, out_stride)
                m2 = F.avg_pool2d(maps**2, out_stride)
                views = [m]
                for k in (3, 9):
                    views.append(F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=False))
                e2 = F.avg_pool2d(m2, 3, stride=1, padding=1, count_include_pad=False)
                views.append(torch.sqrt((e2 - views[1] ** 2).clamp_min(0.0)))
                return torch.cat(views, 1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = Pyramid()
            self.norm = nn.BatchNorm2d(4 * n_maps)
            self.decoder = nn.Sequential(
                nn.Conv2d(4 * n_maps, channels, 1), nn.ReLU(inplace=True),
                nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            )  # fmt: skip
            self.head = nn.Conv2d(channels, n_genes, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.exp(self.head(self.decoder(self.norm(self.encoder(x)))).clamp(-20.0, 20.0))

    return Net()


def build_network(
    encoder: str, n_genes: int, channels: int, out_stride: int, input_mpp: float = 2.0
) -> torch.nn.Module:
    """The PixNet network: ``encoder`` ``"handcrafted"`` or a timm name with ``features_only`` pyramids."""
    if encoder == "handcrafted":
        return _build_handcrafted(n_genes, channels, out_stride, input_mpp)
    import timm
    import torch
    import torch.nn.functional as F
    from torch import nn

    enc = timm.create_model(encoder, pretrained=False, features_only=True)
    info = enc.feature_info
    idx = [i for i, r in enumerate(info.reduction()) if r >= out_stride] or [len(info.reduction()) - 1]
    chans = [info.channels()[i] for i in idx]
    reds = [info.reduction()[i] for i in idx]

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = enc
            self.idx = idx
            self.lateral = nn.ModuleList([nn.Conv2d(c, channels, 1) for c in chans])
            self.smooth = nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            )  # fmt: skip
            self.head = nn.Conv2d(channels, n_genes, 1)
            self.reductions = reds

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            feats = self.encoder(x)
            feats = [feats[i] for i in self.idx]
            size = (x.shape[-2] // out_stride, x.shape[-1] // out_stride)
            y = None
            for f, lat in sorted(zip(feats, self.lateral, strict=True), key=lambda t: t[0].shape[-1]):
                z = lat(f.float())
                y = z if y is None else z + F.interpolate(y, size=z.shape[-2:], mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            return torch.exp(self.head(self.smooth(y)).clamp(-20.0, 20.0))

    return Net()
