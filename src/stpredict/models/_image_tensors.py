"""Image tensors of the torch predictors: dihedral augmentation, ImageNet normalisation, channels_last on CUDA.

One implementation of each, used by STNet, PixNet (training and tiled inference) and the backbones' constants.
Importing this module does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "channels_last", "dihedral", "imagenet_normalise", "network_input"]

#: ImageNet RGB mean and standard deviation (of 0-1 values)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th (0-7) of the 8 dihedral transforms of the last two dimensions.

    A flip of the last dimension for ``k >= 4``, then ``k % 4`` quarter turns.
    """
    import torch

    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1))


def imagenet_normalise(x: torch.Tensor, *, divide_first: bool = True) -> torch.Tensor:
    """ImageNet normalisation of 0-255 RGB ``(b, 3, h, w)`` (any dtype) to float32.

    Two arithmetic orders of the same map, which differ by float32 rounding (at most 2.4e-7):
    ``divide_first`` computes ``(x / 255 - mean) / std`` (STNet), otherwise ``(x - 255 mean) / (255 std)`` (PixNet,
    whose weight-free encoder inverts it with the same constants). Each predictor keeps its order so that its
    seeded fits and saved networks reproduce bit for bit.
    """
    import torch

    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    if divide_first:
        return (x.float() / 255.0 - mean) / std
    return (x.float() - mean * 255) / (std * 255)


def channels_last(obj: Any, device: torch.device) -> Any:
    """A network moved to ``device``, or a 4-d tensor, in channels_last memory format on CUDA; unchanged elsewhere.

    On a CUDA device a module is moved there with ``memory_format=channels_last`` (what convolutions run fastest
    in under autocast) and a tensor made contiguous in that format; on other devices ``obj`` is returned as it is
    (a module is moved by the training loop).
    """
    if getattr(device, "type", None) != "cuda":
        return obj
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.contiguous(memory_format=torch.channels_last)
    return obj.to(device, memory_format=torch.channels_last)


def network_input(x: torch.Tensor, device: torch.device, *, divide_first: bool = True) -> torch.Tensor:
    """0-255 RGB ``(b, 3, h, w)`` on ``device`` as a network takes it: normalised, channels_last on CUDA."""
    return channels_last(imagenet_normalise(x, divide_first=divide_first), device)
