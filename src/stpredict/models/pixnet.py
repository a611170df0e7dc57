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

Code: the networks in ``_pixnet_net``, tiled inference and stitching in ``_pixnet_maps``, region aggregation in
:mod:`stpredict.pp._aggregate`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._logging import get_logger
from ..pp._aggregate import region_masks
from ._base import register_predictor
from ._image_tensors import channels_last, dihedral, network_input
from ._pixnet_maps import region_means, stitched_map
from ._pixnet_net import build_network
from ._torch import check_budget, fit_module, load_module_state, module_state
from ._torch_predictor import TorchPredictor

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._base import Regions, SlideData

__all__ = ["PixNet"]

logger = get_logger(__name__)

BUDGETS = {
    "cpu": {"input_mpp": 2.0, "max_epochs": 12, "batch_size": 8},
    "gpu": {"input_mpp": 1.0, "max_epochs": 60, "batch_size": 16},
}


@register_predictor("pixnet")
class PixNet(TorchPredictor):
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
    budgets = BUDGETS

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
        check_budget(budget)
        super().__init__(
            encoder=encoder, weights=None if weights is None else str(weights), budget=budget,
            input_mpp=input_mpp, out_stride=int(out_stride), tile_um=float(tile_um), channels=int(channels),
            lr=float(lr), weight_decay=float(weight_decay), max_epochs=max_epochs, batch_size=batch_size,
            patience=int(patience), val_fraction=float(val_fraction),
        )  # fmt: skip
        self._net: Any = None

    # -- geometry ------------------------------------------------------------------------------------
    def _resolve(self, dev: Any) -> dict[str, Any]:
        r = self._budget(dev)
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
        return self._resolve(self._torch_device())

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

        dev, seed = self._start_fit(seed)
        geo = self._resolve(dev)
        net = build_network(
            self.config["encoder"], len(genes), self.config["channels"], self.config["out_stride"], geo["input_mpp"]
        )
        lin = np.concatenate(
            [np.asarray(s.y_linear if s.y_linear is not None else np.expm1(s.y), float) for s in slides]
        )
        with torch.no_grad():
            net.head.bias.copy_(torch.as_tensor(np.log(np.maximum(lin.mean(0), 1e-3)), dtype=torch.float32))
        handcrafted = self.config["encoder"] == "handcrafted"
        init = self._weights_init("encoder", self.config["encoder"], log=not handcrafted)
        if handcrafted:
            logger.info("pixnet: weight-free 'handcrafted' stain/texture pyramid encoder.")
        elif self.config["weights"]:
            self._load_encoder(net)
        net = channels_last(net, dev)
        tile_um, n_map, map_um = geo["tile_um"], geo["tile_map_px"], geo["map_um"]
        items = []  # per slide: centres µm, diameter µm, targets, train/val masks
        for s, (_, va) in zip(slides, self._validation_split(slides, seed, per_slide=True), strict=True):
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
                    dense = m.to_dense((n_map, n_map))
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
            "budget": {k: geo[k] for k in ("budget", *BUDGETS[geo["budget"]])},
            "init": init,
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
            x, mk = dihedral(x, k), dihedral(mk, k)
        x = network_input(x, dev, divide_first=False)
        return x, mk, torch.as_tensor(ys, device=dev), torch.as_tensor(valid, device=dev)

    def _load_encoder(self, net) -> None:
        self._load_weights(net.encoder, f"encoder {self.config['encoder']}", features_only=True)

    # -- inference ---------------------------------------------------------------------------------
    def predict(self, slide: SlideData, regions: Regions) -> tuple[np.ndarray, None]:
        """Region means of the stitched map (linear), then log1p — the package's output scale."""
        self._check_fitted()
        dev = self._torch_device()
        geo = self._geometry()
        lin = region_means(
            self._net, slide, regions, geo, dev, out_stride=self.config["out_stride"], n_genes=len(self.genes)
        )
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
        self._check_fitted()
        dev = self._torch_device()
        geo = self._geometry(tile_map_px)
        return stitched_map(
            self._net, slide, bbox_um, geo, dev, out_stride=self.config["out_stride"], n_genes=len(self.genes),
            store=store, single_tile=single_tile,
        )  # fmt: skip

    def get_state(self) -> dict[str, np.ndarray]:
        """Encoder and decoder weights."""
        return {**module_state(self._net, "net."), "n_genes": np.array([len(self.genes)])}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Rebuild the network and load its weights."""
        net = build_network(
            self.config["encoder"],
            int(np.asarray(state["n_genes"]).ravel()[0]),
            self.config["channels"],
            self.config["out_stride"],
            float(self.training.get("geometry", {}).get("input_mpp", 2.0)),
        )
        load_module_state(net, state, "net.")
        self._net = net.eval()
