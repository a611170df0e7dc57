"""The backbone base classes: frozen feature extractors from patches (and, where possible, dense feature maps)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._logging import get_logger
from .._device import autocast, resolve_device
from .._image_tensors import IMAGENET_MEAN, IMAGENET_STD, channels_last

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Backbone", "TorchBackbone"]

logger = get_logger(__name__)


class Backbone:
    """A frozen feature extractor: ``(b, 3, P, P)`` uint8 RGB patches → ``(b, dim)`` float32 features.

    Attributes
    ----------
    name
        Short name, used in keys (``obsm[f"X_{name}"]``).
    dim
        Feature dimension.
    patch_px
        Input side the backbone expects (patches are resampled to it).
    default_patch_um
        Default window in µm (112 µm at 224 px, i.e. 0.5 µm/px, as the pathology foundation models expect).
    """

    name: str = "backbone"
    dim: int = 0
    patch_px: int = 224
    default_patch_um: float = 112.0
    #: whether :meth:`dense` gives window features on any grid at the cost of one pass over the image
    has_dense: bool = False

    def embed(self, patches: np.ndarray, *, device: Any = None) -> np.ndarray:
        """Features of a batch of patches."""
        raise NotImplementedError

    def input_spec(self, size_um: float) -> tuple[float, int]:
        """``(read_size_um, patch_px)``: what to read for a window of ``size_um`` (default: the window itself)."""
        return float(size_um), int(self.patch_px)

    def params(self) -> dict[str, Any]:
        """JSON-able description recorded with the embeddings."""
        return {"backbone": self.name, "dim": int(self.dim), "patch_px": int(self.patch_px)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, patch_px={self.patch_px})"


class TorchBackbone(Backbone):
    """Wrap a ``torch.nn.Module`` returning ``(b, dim)`` features (e.g. a timm model with ``num_classes=0``).

    Parameters
    ----------
    module
        The network; put in eval mode, never trained here.
    name
        Short name for keys.
    patch_px
        Input side.
    mean, std
        Normalisation of ``[0, 1]`` RGB.
    dim
        Output dimension; inferred with a dummy forward pass when ``None``.
    pool
        How to turn a ``(b, tokens, d)`` output into ``(b, d')``: ``"cls"``, ``"mean"``, ``"cls+mean"``
        (Virchow), or ``None`` when the module already pools (a token output is then reduced to its CLS
        token). A ``(b, c, h, w)`` feature map is always averaged over space.
    num_prefix_tokens
        Tokens before the patch tokens (CLS and registers), for ``"mean"`` / ``"cls+mean"`` pooling.
    source
        Where the weights came from (recorded in ``uns``).
    sha256
        SHA-256 hex digest of the weights file, recorded as ``weights_sha256`` in :meth:`params` (and so in
        ``uns``); ``None`` records none.
    forward_features
        Call ``module.forward_features(x)`` (timm's unpooled features) instead of ``module(x)``; the output is
        then pooled as ``pool`` says.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        name: str,
        patch_px: int = 224,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        dim: int | None = None,
        pool: str | None = None,
        num_prefix_tokens: int = 1,
        source: str = "module",
        sha256: str | None = None,
        forward_features: bool = False,
    ) -> None:
        self.module = module.eval()
        for p in self.module.parameters():
            p.requires_grad = False
        self.name = name
        self.patch_px = int(patch_px)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.pool = pool
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.source = source
        self.sha256 = sha256
        self.forward_features = forward_features
        self._device: Any = None
        self._norm: tuple[Any, Any] | None = None
        self.dim = int(dim) if dim is not None else self._infer_dim()

    def _infer_dim(self) -> int:
        import torch

        with torch.inference_mode():
            dev = next((p.device for p in self.module.parameters()), torch.device("cpu"))
            if dev.type == "meta":
                return 0
            out = self._forward(torch.zeros(1, 3, self.patch_px, self.patch_px, device=dev))
        return int(out.shape[-1])

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module.forward_features(x) if self.forward_features else self.module(x)
        if isinstance(out, tuple | list):
            out = out[0]
        if hasattr(out, "last_hidden_state"):  # transformers models
            out = out.last_hidden_state
        if out.ndim == 3:
            pool = self.pool or "cls"
            cls = out[:, 0]
            patch = out[:, self.num_prefix_tokens :].mean(dim=1)
            out = {"cls": cls, "mean": patch}.get(pool)
            if out is None:
                import torch

                out = torch.cat([cls, patch], dim=-1)
        elif out.ndim == 4:  # CNN feature map
            out = out.mean(dim=(2, 3))
        return out

    def to(self, device: Any) -> TorchBackbone:
        """Move the module to ``device`` (channels_last on CUDA)."""
        import torch

        dev = resolve_device(device)
        if self._device != dev:
            channels_last(self.module.to(dev), dev)
            self._device = dev
            # normalisation constants live on the device once, not rebuilt per batch
            self._norm = (
                torch.tensor(self.mean, device=dev).view(1, 3, 1, 1),
                torch.tensor(self.std, device=dev).view(1, 3, 1, 1),
            )
        return self

    def preprocess(self, patches: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
        """uint8 ``(b, 3, P, P)`` → normalised float tensor on ``device``, resized to ``patch_px`` if needed."""
        import torch
        import torch.nn.functional as F

        x = torch.as_tensor(patches)
        if device.type == "cuda":
            # uint8 crosses the bus (4x less than float); asynchronously from pinned memory
            if not x.is_pinned():
                x = x.pin_memory()
            x = x.to(device, non_blocking=True)
        x = x.to(device=device, dtype=torch.float32).div_(255.0)
        if x.shape[-1] != self.patch_px or x.shape[-2] != self.patch_px:
            x = F.interpolate(
                x, size=(self.patch_px, self.patch_px), mode="bilinear", antialias=True, align_corners=False
            )
        if self._device == device:
            mean, std = self._norm
        else:
            mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return channels_last(x.sub_(mean).div_(std), device)

    def embed(self, patches: np.ndarray, *, device: Any = None) -> np.ndarray:
        """Features of a batch of uint8 patches, under ``inference_mode`` (and autocast on CUDA)."""
        return self.embed_tensor(patches, device=device).float().cpu().numpy()

    def embed_tensor(self, patches: np.ndarray | torch.Tensor, *, device: Any = None) -> torch.Tensor:
        """Like :meth:`embed`, but the features stay on the device (no host synchronisation).

        Loops over many batches queue several of these before copying them back in one go, so the device
        never waits for the host between batches.
        """
        import torch

        self.to(device if device is not None else (self._device or "auto"))
        dev = self._device
        with torch.inference_mode(), autocast(dev):
            return self._forward(self.preprocess(patches, dev))

    def params(self) -> dict[str, Any]:
        """Name, dimension, input spec and weight provenance."""
        out = super().params()
        out.update({"mean": list(self.mean), "std": list(self.std), "pool": self.pool or "", "weights": self.source})
        if self.sha256:
            out["weights_sha256"] = self.sha256
        return out
