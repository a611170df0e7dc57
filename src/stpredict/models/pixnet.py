"""PixNet: a dense gene-expression map from the image, aggregated inside any region at any scale.

Zhang, Yang & Pan, "Spatial Transcriptomics Analysis of Spatially Dense Gene Expression Prediction"
(PixNet), arXiv:2503.01347 (2025). No public code; this follows the paper's description:

- a pyramid image encoder (any timm backbone with multi-scale features: ``features_only`` CNNs, or a ViT's
  token maps) feeds a U-Net/FPN-style decoder that outputs a per-pixel map of G genes at ``out_stride`` × the
  input pixel size (default 4: 8 µm map pixels on the CPU budget at 2 µm/px input, 4 µm on the GPU budget);
- the map is in linear normalised-expression units: the decoder predicts the log of the map (exponential
  output, non-negative), its bias initialised at the log of each gene's mean spot expression, so training starts
  from the right scale (counts per 1e4 are in the hundreds; a softplus output starts near 1 and learns the
  scale before any pattern);
- training is sparsely supervised: the map is averaged inside each measured spot's disk (exact fractional
  disk masks at the map resolution) and ``log1p`` of that linear mean is regressed on the spot's
  log1p-normalised expression (MSE). Tiles are sampled around spots with random offsets so that each
  supervised spot lies wholly inside its tile; spots cut by a tile border are not supervised by that tile
  (their other tiles supervise them) — no spot is ever scored on part of its disk;
- augmentation: the 8 dihedral transforms, applied to the tile and to its spot masks together;
- inference stitches overlapping tiles (stride half a tile) weighted by a separable sin² window, which sums
  to exactly one in the tiled interior, so the blended map has no seams; each tile is computed with a context
  margin of a quarter tile that is cropped away, so the network sees tissue rather than padding; region means are accumulated tile by
  tile (memory bounded by the tile, not the slide), and the map itself can be written chunk by chunk into a
  zarr array for viewing (``predict_map``).

Deviations: the paper's encoder is a pathology foundation model. Without downloadable weights the default
encoder is the weight-free ``handcrafted`` stain/texture pyramid (the ``handcrafted`` backbone's per-pixel maps
in torch, summarised at cell-to-tissue scales) with a learned decoder; any timm CNN can be the encoder instead,
from local weights or trained from scratch (measured on the synthetic slide: from scratch on the CPU budget it
does not learn the pattern; the pyramid does). Defaults are sized for a CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .._logging import get_logger
from ..pp._aggregate import region_masks
from ._base import Predictor, register_predictor
from ._torch import fit_module, load_module_state, module_state, seed_everything, split_validation

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from ._base import Regions, SlideData

__all__ = ["PixNet"]

logger = get_logger(__name__)

BUDGETS = {
    "cpu": {"input_mpp": 2.0, "max_epochs": 12, "batch_size": 8},
    "gpu": {"input_mpp": 1.0, "max_epochs": 60, "batch_size": 16},
}


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
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1) * 255
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1) * 255
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


def _build(encoder: str, n_genes: int, channels: int, out_stride: int, input_mpp: float = 2.0) -> torch.nn.Module:
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


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    import torch

    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1))


def _window(n: int) -> np.ndarray:
    """sin² weights of a tile of ``n`` map pixels; with stride ``n/2`` they sum to one."""
    t = (np.arange(n) + 0.5) / n
    return np.sin(np.pi * t) ** 2


@register_predictor("pixnet")
class PixNet(Predictor):
    """PixNet (Zhang et al. 2025): a dense expression map trained through spot-disk aggregation.

    Parameters
    ----------
    encoder
        ``"handcrafted"`` (default: a weight-free stain/texture pyramid — optical density, H/E concentrations,
        colour, gradient energy and nucleus maps summarised over 1–9 map pixels — that trains in a minute or two
        on a CPU), or a timm backbone with multi-scale features (``features_only``), e.g. ``resnet18``,
        ``convnext_tiny``, initialised from ``weights`` (the paper's setting is a pathology foundation model).
    weights
        Local weights of the encoder (safetensors / weights-only torch); ``None`` trains it from scratch.
    budget
        ``"auto"`` (GPU budget on CUDA), ``"cpu"`` or ``"gpu"``: input µm/px, epochs, batch size.
    input_mpp
        Input resolution in µm/px (``None``: from the budget).
    out_stride
        Map pixels per input pixel (map resolution = ``input_mpp × out_stride``).
    tile_um
        Tile side in µm (training and inference).
    channels
        Decoder width.
    lr, weight_decay
        AdamW settings.
    max_epochs, batch_size
        Training budget (``None``: from the budget).
    patience
        Early-stopping patience in epochs.
    val_fraction
        Share of spots (spatial blocks) whose labels are held out for early stopping.
    """

    consumes = "tiles"
    default_backbone = None
    provides_std = False
    smoke_config: ClassVar[dict[str, Any]] = {"input_mpp": 4.0, "tile_um": 192.0, "channels": 16}

    def __init__(
        self,
        *,
        encoder: str = "handcrafted",
        weights: str | None = None,
        budget: str = "auto",
        input_mpp: float | None = None,
        out_stride: int = 4,
        tile_um: float = 256.0,
        channels: int = 64,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        max_epochs: int | None = None,
        batch_size: int | None = None,
        patience: int = 4,
        val_fraction: float = 0.1,
    ) -> None:
        if budget not in ("auto", "cpu", "gpu"):
            msg = f"budget must be 'auto', 'cpu' or 'gpu', got {budget!r}."
            raise ValueError(msg)
        super().__init__(
            encoder=encoder, weights=None if weights is None else str(weights), budget=budget,
            input_mpp=input_mpp, out_stride=int(out_stride), tile_um=float(tile_um), channels=int(channels),
            lr=float(lr), weight_decay=float(weight_decay), max_epochs=max_epochs, batch_size=batch_size,
            patience=int(patience), val_fraction=float(val_fraction),
        )  # fmt: skip
        self._net: Any = None

    # -- geometry ------------------------------------------------------------------------------------
    def _resolve(self, dev: Any) -> dict[str, Any]:
        b = self.config["budget"]
        name = ("gpu" if dev.type == "cuda" else "cpu") if b == "auto" else b
        r = dict(BUDGETS[name], budget=name)
        for k in ("input_mpp", "max_epochs", "batch_size"):
            if self.config[k] is not None:
                r[k] = self.config[k]
        mpp = float(r["input_mpp"])
        stride = self.config["out_stride"]
        map_um = mpp * stride
        # tile: a whole number of map pixels, and an even number so that half-tile strides stay on the grid
        n_map = max(4, 2 * round(self.config["tile_um"] / map_um / 2))
        r.update({"map_um": map_um, "tile_map_px": n_map, "tile_px": n_map * stride, "tile_um": n_map * map_um})
        return r

    def _geometry(self, tile_map_px: int | None = None) -> dict[str, Any]:
        g = self.training.get("geometry")
        if g and tile_map_px is not None:
            n = max(4, 2 * (int(tile_map_px) // 2))
            g = {**g, "tile_map_px": n, "tile_px": n * self.config["out_stride"], "tile_um": n * g["map_um"]}
        if g:
            return g
        from ._device import resolve_device

        return self._resolve(resolve_device(self.device))

    # -- training ------------------------------------------------------------------------------------
    def fit(
        self,
        slides: Sequence[SlideData],
        *,
        genes: Sequence[str],
        max_epochs: int | None = None,
        seed: int | None = None,
    ) -> PixNet:
        """Train encoder and decoder through spot-disk aggregation on tiles around the slides' spots."""
        import torch

        from ..pp._folds import spatial_folds
        from ._device import resolve_device

        dev = resolve_device(self.device)
        geo = self._resolve(dev)
        seed = seed_everything(seed)
        net = _build(
            self.config["encoder"], len(genes), self.config["channels"], self.config["out_stride"], geo["input_mpp"]
        )
        lin = np.concatenate(
            [np.asarray(s.y_linear if s.y_linear is not None else np.expm1(s.y), float) for s in slides]
        )
        with torch.no_grad():
            net.head.bias.copy_(torch.as_tensor(np.log(np.maximum(lin.mean(0), 1e-3)), dtype=torch.float32))
        if self.config["encoder"] == "handcrafted":
            logger.info("pixnet: weight-free 'handcrafted' stain/texture pyramid encoder.")
        elif self.config["weights"]:
            self._load_encoder(net)
        else:
            logger.info("pixnet: no encoder weights given; training %s from scratch.", self.config["encoder"])
        if dev.type == "cuda":
            net = net.to(dev, memory_format=torch.channels_last)
        tile_um, n_map, map_um = geo["tile_um"], geo["tile_map_px"], geo["map_um"]
        items = []  # per slide: centres µm, diameter µm, targets, train/val masks
        for i, s in enumerate(slides):
            blocks, _ = spatial_folds(s.centers_um, 10, seed=seed + i)
            tr, va = split_validation(s.n, self.config["val_fraction"], seed + i, groups=blocks)
            is_val = np.zeros(s.n, bool)
            is_val[va] = True
            items.append((s, s.centers_um, s.spot_diameter_um, np.asarray(s.y, np.float32), is_val))
        margin = map_um  # keep supervised disks one map pixel inside the tile

        def tiles(rng: np.random.Generator | None, *, want_val: bool):
            """Yield (image uint8 (3,P,P), masks (S,h,w), targets (S,G)) for tiles around spots."""
            for s, xy, d, y, is_val in items:
                sel = np.flatnonzero(is_val == want_val)
                if rng is not None:
                    sel = sel[rng.permutation(len(sel))]
                slack = max(tile_um / 2 - d / 2 - margin, 0.0)
                for j in sel:
                    off = rng.uniform(-slack, slack, 2) if rng is not None else np.zeros(2)
                    centre = xy[j] + off
                    origin = np.floor((centre - tile_um / 2) / map_um) * map_um  # on the global map grid
                    local = (xy - origin) / map_um  # spot centres in tile map px
                    r = d / 2 / map_um
                    inside = np.all((local - r >= 0) & (local + r <= n_map), axis=1)
                    inside &= is_val == want_val
                    if not inside.any():
                        continue
                    m = region_masks((n_map, n_map), centers=local[inside], size=2 * r, kind="circle")
                    dense = np.zeros((int(inside.sum()), n_map, n_map), np.float32)
                    dense[m.region, m.rows, m.cols] = m.weight
                    yield s, origin + tile_um / 2, dense, y[inside]

        def batches(rng, *, want_val):
            # the epoch's tiles first, then one patch reader per slide (its chunk cache serves every tile)
            todo = list(tiles(rng, want_val=want_val))
            readers = {}
            from ..pp._patches import PatchExtractor

            for s, *_rest in items:
                cen = [t[1] for t in todo if t[0] is s]
                if cen:
                    mpp = np.asarray(s.microns_per_pixel_xy)
                    readers[id(s)] = (
                        PatchExtractor(
                            s.image_levels,
                            np.asarray(cen) / mpp,
                            tuple(mpp),
                            size_um=geo["tile_um"],
                            patch_px=geo["tile_px"],
                        ),
                        iter(range(len(cen))),
                    )
            bs = int(geo["batch_size"])
            for s0 in range(0, len(todo), bs):
                chunk = todo[s0 : s0 + bs]
                imgs = []
                for s, _, _, _ in chunk:
                    ext, counter = readers[id(s)]
                    imgs.append(ext.read([next(counter)])[0])
                yield self._collate(chunk, imgs, geo, dev, rng)

        def loss_fn(m, x, masks, y, valid):
            lin = m(x)  # (b, G, h, w)
            num = torch.einsum("bghw,bshw->bsg", lin.float(), masks)
            area = masks.sum((-1, -2)).clamp_min(1e-6)
            pred = torch.log1p(num / area[..., None])
            err = ((pred - y) ** 2).mean(-1)
            return (err * valid).sum() / valid.sum().clamp_min(1.0)

        log = fit_module(
            net, lambda rng: batches(rng, want_val=False), loss_fn,
            val_batches=(lambda: batches(None, want_val=True)) if any(it[4].any() for it in items) else None,
            max_epochs=int(max_epochs if max_epochs is not None else geo["max_epochs"]),
            patience=self.config["patience"], lr=self.config["lr"], weight_decay=self.config["weight_decay"],
            device=dev, seed=seed, progress=self.progress, desc="pixnet",
        )  # fmt: skip
        self._net = net
        self.genes = list(genes)
        self.training = {
            "n_spots": int(sum(s.n for s in slides)),
            "seed": seed,
            "geometry": geo,
            "init": f"weights {self.config['weights']}" if self.config["weights"] else "random (trained from scratch)",
            **log.as_dict(),
        }
        return self

    def _collate(self, buf, imgs, geo, dev, rng):
        import torch

        n_max = max(b[2].shape[0] for b in buf)
        n_map, G = geo["tile_map_px"], buf[0][3].shape[1]
        masks = np.zeros((len(buf), n_max, n_map, n_map), np.float32)
        ys = np.zeros((len(buf), n_max, G), np.float32)
        valid = np.zeros((len(buf), n_max), np.float32)
        for i, (_, _, m, y) in enumerate(buf):
            masks[i, : len(m)] = m
            ys[i, : len(y)] = y
            valid[i, : len(y)] = 1.0
        x = torch.as_tensor(np.stack(imgs), device=dev).float()
        mk = torch.as_tensor(masks, device=dev)
        if rng is not None:
            k = int(rng.integers(8))
            x, mk = _dihedral(x, k), _dihedral(mk, k)
        x = self._normalise(x)
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x, mk, torch.as_tensor(ys, device=dev), torch.as_tensor(valid, device=dev)

    @staticmethod
    def _normalise(x: torch.Tensor) -> torch.Tensor:
        import torch

        mean = torch.tensor((0.485, 0.456, 0.406), device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor((0.229, 0.224, 0.225), device=x.device).view(1, 3, 1, 1) * 255
        return (x - mean) / std

    def _load_encoder(self, net) -> None:
        from .backbones import load_trunk_weights, load_weights_file

        path = self.config["weights"]
        what = f"encoder {self.config['encoder']} from {path}"
        load_trunk_weights(net.encoder, load_weights_file(path), what=what, features_only=True)

    # -- inference -----------------------------------------------------------------------------------
    def _tile_grid(self, lo_um: np.ndarray, hi_um: np.ndarray, geo: dict) -> tuple[np.ndarray, int]:
        """Tile origins (µm, on the map grid) covering [lo, hi] with half-tile stride and one tile of margin."""
        map_um, n_map = geo["map_um"], geo["tile_map_px"]
        half = n_map // 2
        start = np.floor(lo_um / map_um) - n_map  # in map px
        stop = np.ceil(hi_um / map_um) + half
        xs = np.arange(start[0], stop[0], half)
        ys = np.arange(start[1], stop[1], half)
        gx, gy = np.meshgrid(xs, ys)
        return np.column_stack([gx.ravel(), gy.ravel()]) * map_um, n_map

    def _tile_maps(self, slide: SlideData, origins_um: np.ndarray, geo: dict, dev: Any, *, window: bool = True):
        """Yield ``(origin_um, weighted map (G, n, n))`` for each tile, in batches."""
        import torch

        from ..pp._patches import PatchExtractor
        from ._device import autocast

        mpp = np.asarray(slide.microns_per_pixel_xy)
        n_map = geo["tile_map_px"]
        # each tile is computed with a context margin of a quarter tile on every side, then cropped: the
        # network sees real tissue, not padding, around the part of the map that is kept
        ctx = max(2, n_map // 4)
        full = n_map + 2 * ctx
        stride = self.config["out_stride"]
        w1 = _window(n_map)
        win = torch.as_tensor(np.outer(w1, w1) if window else np.ones((n_map, n_map)), device=dev, dtype=torch.float32)
        centres = (origins_um + geo["tile_um"] / 2) / mpp
        ext = PatchExtractor(
            slide.image_levels, centres, tuple(mpp), size_um=full * geo["map_um"], patch_px=full * stride
        )
        net = self._net.to(dev).eval()
        bs = 16
        with torch.inference_mode(), autocast(dev):
            for s0 in range(0, len(origins_um), bs):
                idx = np.arange(s0, min(s0 + bs, len(origins_um)))
                x = self._normalise(torch.as_tensor(ext.read(idx), device=dev).float())
                if dev.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                maps = net(x).float()[:, :, ctx : ctx + n_map, ctx : ctx + n_map] * win
                for j, i in enumerate(idx):
                    yield origins_um[i], maps[j].cpu().numpy()

    def predict(self, slide: SlideData, regions: Regions) -> tuple[np.ndarray, None]:
        """Region means of the stitched map (linear), then log1p — the package's output scale."""
        from ._device import resolve_device

        self._check_fitted()
        dev = resolve_device(self.device)
        geo = self._geometry()
        map_um, n_map = geo["map_um"], geo["tile_map_px"]
        c_um = regions.centers_um(slide)
        polys = regions.meta.get("polygons_um")
        half_ext = (
            regions.size_um / 2
            if polys is None
            else max(max(p.bounds[2] - p.bounds[0], p.bounds[3] - p.bounds[1]) for p in polys) / 2
        )
        lo, hi = c_um.min(0) - half_ext, c_um.max(0) + half_ext
        origins, _ = self._tile_grid(lo, hi, geo)
        num = np.zeros((regions.n, len(self.genes)))
        area = np.zeros(regions.n)
        from scipy.spatial import cKDTree

        tree = cKDTree(c_um)
        reach = geo["tile_um"] * 0.75 + half_ext
        for origin, wmap in self._tile_maps(slide, origins, geo, dev):
            centre = origin + geo["tile_um"] / 2
            hits = tree.query_ball_point(centre, reach)
            if not hits:
                continue
            hits = np.asarray(hits)
            if polys is None:
                local = (c_um[hits] - origin) / map_um
                m = region_masks((n_map, n_map), centers=local, size=regions.size_um / map_um, kind=regions.kind)
            else:
                from shapely import affinity

                local = [
                    affinity.affine_transform(
                        polys[h], [1 / map_um, 0, 0, 1 / map_um, -origin[0] / map_um, -origin[1] / map_um]
                    )
                    for h in hits
                ]
                m = region_masks((n_map, n_map), polygons=local)
            if len(m.region) == 0:
                continue
            w1 = _window(n_map)
            wgt = m.weight * w1[m.rows] * w1[m.cols]
            vals = wmap[:, m.rows, m.cols] * m.weight[None]
            np.add.at(num, hits[m.region], vals.T)
            np.add.at(area, hits[m.region], wgt)
        with np.errstate(invalid="ignore", divide="ignore"):
            lin = num / area[:, None]
        return np.log1p(np.maximum(lin, 0.0)).astype(np.float32), None

    def predict_map(
        self,
        slide: SlideData,
        bbox_um: tuple[float, float, float, float],
        *,
        store: Any = None,
        tile_map_px: int | None = None,
        single_tile: bool = False,
    ) -> tuple[Any, float, tuple[float, float]]:
        """The stitched linear map over ``bbox_um = (x0, y0, x1, y1)``: ``(array (G, h, w), map µm/px, origin µm)``.

        ``store`` (a path) writes it chunk by chunk into a zarr array instead of memory; ``tile_map_px``
        overrides the tile size (in map pixels) used for inference; ``single_tile`` runs the network once on
        the whole box (for small boxes: the reference the stitched map is tested against).
        """
        from ._device import resolve_device

        self._check_fitted()
        dev = resolve_device(self.device)
        geo = self._geometry(tile_map_px)
        map_um, n_map = geo["map_um"], geo["tile_map_px"]
        x0, y0, x1, y1 = bbox_um
        g0 = np.floor(np.array([x0, y0]) / map_um)
        g1 = np.ceil(np.array([x1, y1]) / map_um)
        w, h = (g1 - g0).astype(int)
        G = len(self.genes)
        if single_tile:
            n = int(max(w, h))
            n += n % 2
            geo1 = {**geo, "tile_map_px": n, "tile_px": n * self.config["out_stride"], "tile_um": n * map_um}
            origin = g0 * map_um
            ext_map = next(self._tile_maps(slide, origin[None], geo1, dev, window=False))[1]
            return ext_map[:, :h, :w].astype(np.float32), map_um, (float(origin[0]), float(origin[1]))
        wsum = np.zeros((h, w), np.float32)
        if store is None:
            out = np.zeros((G, h, w), np.float32)
        else:
            import zarr

            out = zarr.open_array(str(store), mode="w", shape=(G, h, w), chunks=(G, 512, 512), dtype="f4")
        w1 = _window(n_map)
        win = np.outer(w1, w1).astype(np.float32)
        origins, _ = self._tile_grid(g0 * map_um, g1 * map_um, geo)
        for origin, wmap in self._tile_maps(slide, origins, geo, dev):
            o = np.round(origin / map_um).astype(int) - g0.astype(int)
            ys, xs = max(o[1], 0), max(o[0], 0)
            ye, xe = min(o[1] + n_map, h), min(o[0] + n_map, w)
            if ys >= ye or xs >= xe:
                continue
            patch = wmap[:, ys - o[1] : ye - o[1], xs - o[0] : xe - o[0]]
            out[:, ys:ye, xs:xe] = out[:, ys:ye, xs:xe] + patch
            wsum[ys:ye, xs:xe] += win[ys - o[1] : ye - o[1], xs - o[0] : xe - o[0]]
        # normalise by the summed window (exactly one in the interior; corrects the bbox's edges)
        for r0 in range(0, h, 512):
            out[:, r0 : r0 + 512] = out[:, r0 : r0 + 512] / np.maximum(wsum[r0 : r0 + 512], 1e-6)
        return out, map_um, (float(g0[0] * map_um), float(g0[1] * map_um))

    def get_state(self) -> dict[str, np.ndarray]:
        """Encoder and decoder weights."""
        return {**module_state(self._net, "net."), "n_genes": np.array([len(self.genes)])}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Rebuild the network and load its weights."""
        net = _build(
            self.config["encoder"],
            int(np.asarray(state["n_genes"]).ravel()[0]),
            self.config["channels"],
            self.config["out_stride"],
            float(self.training.get("geometry", {}).get("input_mpp", 2.0)),
        )
        load_module_state(net, state, "net.")
        self._net = net.eval()
