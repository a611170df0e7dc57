"""The backbone base classes: frozen feature extractors from patches (and, where possible, dense feature maps)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._logging import get_logger
from ..._settings import settings
from .._device import autocast, resolve_device
from .._image_tensors import IMAGENET_MEAN, IMAGENET_STD, channels_last
from ._convmap import ConvMapSpec, conv_cell_map, conv_map_spec, tile_plan

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import torch

    from ._cellmap import CellMap

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
    #: whether ``dense=None`` may take the map when it is cheaper (else only ``dense=True`` does): a map whose
    #: features agree with the windows' (``handcrafted``: median per-feature r ≥ 0.999) serves by default
    dense_by_default: bool = True
    #: whether windows are read exactly where asked when resampled (:class:`~stpredict.pp.PatchExtractor`'s
    #: ``subpixel``), as the dense map's tiles are; otherwise snapped to whole pixels of the level read
    subpixel_windows: bool = False

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

    Notes
    -----
    Convolutional timm backbones whose embedding is the global average of a local feature map (resnet,
    resnext, densenet, convnext v1, regnetx, mobilenetv2, efficientnet-lite: no squeeze-excitation or other
    global gate) have a dense path (:attr:`has_dense`): the last feature map computed once over a slide region
    (:meth:`feature_map`) and any window read from it (:meth:`map_features`). Others (ViTs and every model with
    a global gate) embed one window at a time; :attr:`dense_reason` says why. The map is used only with
    ``dense=True`` (:attr:`dense_by_default` is ``False``): its features are not the windows' (zero padding at
    a window's edge against real context in the map, 16–32 µm cells read bilinearly; random-weight resnet18,
    median per-feature r 0.95 on the mob demo, 0.83 on her2st, about what shifting the windows by 2–8 µm
    gives), so a model fitted on windows is not fed map features unless asked.
    """

    dense_by_default = False

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
        self._dense: ConvMapSpec | str | None = None  # decided on first use
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

    def preprocess(
        self, patches: np.ndarray | torch.Tensor, device: torch.device, *, resize: bool = True
    ) -> torch.Tensor:
        """uint8 ``(b, 3, P, P)`` → normalised float tensor on ``device``, resized to ``patch_px`` if needed.

        ``resize=False`` keeps the input's size (the tiles of a dense map, read at the windows' µm/px).
        """
        import torch
        import torch.nn.functional as F

        x = torch.as_tensor(patches)
        if device.type == "cuda":
            # uint8 crosses the bus (4x less than float); asynchronously from pinned memory
            if not x.is_pinned():
                x = x.pin_memory()
            x = x.to(device, non_blocking=True)
        x = x.to(device=device, dtype=torch.float32).div_(255.0)
        if resize and (x.shape[-1] != self.patch_px or x.shape[-2] != self.patch_px):
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

    # -- dense feature maps -------------------------------------------------------------------------------

    @property
    def dense_spec(self) -> ConvMapSpec | None:
        """Stride, channels, receptive field and tile margin of the dense map; ``None`` without one."""
        if self._dense is None:
            self._dense = conv_map_spec(
                self.module, patch_px=self.patch_px, embed=self._forward, trunk=self._trunk, head=self._head
            )
        return self._dense if isinstance(self._dense, ConvMapSpec) else None

    @property
    def has_dense(self) -> bool:  # type: ignore[override]
        """Whether windows can be read from a dense feature map (see the class notes)."""
        return self.dense_spec is not None

    @property
    def dense_reason(self) -> str | None:
        """Why this backbone has no dense map (``None`` when it has one)."""
        return None if self.dense_spec is not None else str(self._dense)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.forward_features(x)

    def _head(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(b, c)`` means of the last feature map → ``(b, dim)``, as the window path pools and heads it."""
        if self.forward_features:  # the window path averages forward_features itself
            return pooled
        return self.module.forward_head(pooled[:, :, None, None])

    def _require_dense(self) -> ConvMapSpec:
        spec = self.dense_spec
        if spec is None:
            msg = f"Backbone {self.name!r} has no dense feature map: {self.dense_reason}."
            raise ValueError(msg)
        return spec

    def dense_cell_um(self, window_um: float) -> float:
        """Side in µm of a map cell for windows of ``window_um``: ``stride`` pixels at ``window_um / patch_px``."""
        return self._require_dense().stride * float(window_um) / self.patch_px

    def read_um(self, window_um: float) -> float:
        """Side of what a window of ``window_um`` reads: the window itself."""
        return float(window_um)

    def map_cost_px(self, lo_um: np.ndarray, hi_um: np.ndarray, window_um: float, *, tile_px: int = 1024) -> float:
        """Input pixels the trunk processes for a map of ``[lo_um, hi_um]`` (tiles with their margins)."""
        import numpy as np

        spec = self._require_dense()
        cell = self.dense_cell_um(window_um)
        n = np.maximum(np.ceil((np.asarray(hi_um, float) - np.asarray(lo_um, float)) / cell - 1e-9), 1).astype(int)
        core, k, n_tiles = tile_plan((int(n[0]), int(n[1])), spec, tile_px)
        return float(n_tiles * ((core + 2 * k) * spec.stride) ** 2)

    def feature_map(
        self,
        read_tile: Callable[[np.ndarray, float, int], np.ndarray],
        lo_um: np.ndarray,
        hi_um: np.ndarray,
        *,
        cell_um: float | None = None,
        tile_px: int = 1024,
        progress: bool = False,
        device: Any = None,
        batch_size: int | None = None,
    ) -> CellMap:
        """The trunk's last feature map over ``[lo_um, hi_um]`` as float32 cells, tile by tile with a margin.

        Tiles are read at ``cell_um / stride`` µm/px (default: that of :attr:`default_patch_um` windows),
        normalised exactly as windows are (:meth:`preprocess`, without the resize), and run under
        ``inference_mode`` (autocast and channels_last on CUDA) in batches of about ``batch_size`` windows'
        pixels. Memory: ``channels × area / cell_um²`` float32 values (512 × 406² cells, 340 MB, for resnet18
        over a 6.5 mm capture area at 16 µm cells) plus one batch of tiles' activations.

        Parameters
        ----------
        read_tile
            ``read_tile(center_um_xy, size_um, out_px) -> (1, 3, out_px, out_px)`` uint8 (a tile reader).
        lo_um, hi_um
            Rectangle to cover, in µm.
        cell_um
            Cell side in µm (:meth:`dense_cell_um` of the windows to read).
        tile_px
            Core side of a tile in input pixels (rounded to cells; at least four margins).
        progress
            Show a progress bar over tiles.
        device, batch_size
            As for :meth:`embed` and the window loop (default: :attr:`stpredict.settings`).
        """
        import torch

        spec = self._require_dense()
        cell = self.dense_cell_um(self.default_patch_um) if cell_um is None else float(cell_um)
        self.to(device if device is not None else (self._device or "auto"))
        dev = self._device
        side = (max(tile_px // spec.stride, 4 * (spec.margin_px // spec.stride)) * spec.stride) + 2 * spec.margin_px
        batch_tiles = max(1, (batch_size or settings.batch_size) * self.patch_px**2 // side**2)

        def features(rgb: np.ndarray) -> np.ndarray:
            with torch.inference_mode(), autocast(dev):
                fmap = self._trunk(self.preprocess(rgb, dev, resize=False))
            return fmap.float().cpu().numpy()

        return conv_cell_map(
            features,
            read_tile,
            lo_um,
            hi_um,
            spec=spec,
            cell_um=cell,
            tile_px=tile_px,
            batch_tiles=batch_tiles,
            progress=progress,
            desc=f"{self.name} feature map",
        )

    def map_features(
        self, cmap: CellMap, centers_um: np.ndarray, window_um: float, *, chunk: int = 65536
    ) -> np.ndarray:
        """Features of windows of ``window_um`` at ``centers_um`` (µm): the head of the map's window means.

        Windows are read ``chunk`` at a time (bounded memory); each is ``patch_px / stride`` cells wide,
        bilinear between cell-aligned positions.
        """
        import numpy as np
        import torch

        want = self.dense_cell_um(window_um)
        if abs(cmap.cell_um - want) > 1e-6 * want:
            msg = (
                f"The map has cells of {cmap.cell_um:g} µm, but windows of {window_um:g} µm are embedded at "
                f"{window_um / self.patch_px:g} µm/px ({want:g} µm cells): compute the map with "
                f"cell_um=backbone.dense_cell_um({window_um:g})."
            )
            raise ValueError(msg)
        centers_um = np.asarray(centers_um, dtype=float).reshape(-1, 2)
        out = np.zeros((len(centers_um), self.dim), dtype=np.float32)
        dev = self._device or resolve_device("cpu")
        for a in range(0, len(centers_um), chunk):
            pooled = cmap.window_means(centers_um[a : a + chunk], [float(window_um)])[0]
            with torch.inference_mode(), autocast(dev):
                feats = self._head(torch.from_numpy(pooled).to(dev))
            out[a : a + chunk] = feats.float().cpu().numpy()
        return out
