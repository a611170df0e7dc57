"""Cross-modal conditional diffusion for super-resolved expression maps.

Wang, Huang, Price & Li, "Cross-modal Diffusion Modelling for Super-resolved Spatial Transcriptomics",
arXiv:2404.12973 (2024). No public code; this implements the paper's three components in a denoiser small
enough to train on one slide on a laptop:

1. **Multi-modal disentangling with cross-modal adaptive modulation.** Histology and expression conditions
   have separate encoders (modality-specific features) plus a shared fusion branch; every denoiser block is
   modulated by a spatial scale-and-shift from each of them, mixed by learned gates — the denoiser's
   features are steered by both modalities without concatenating them into one input.
2. **Dynamic cross-attention to hierarchical cell-to-tissue image features.** At the bottleneck and the
   first decoder level, each map location attends over image features at three scales around it (cell:
   one fine map cell; neighbourhood: 3 cells; tissue: 9 cells, each summarised at three concentric views)
   plus slide-level tissue tokens; a gate computed from the diffusion time and the query re-weights the
   scales at every step (coarse context early in denoising, cell detail late).
3. **Co-expression gene-correlation graph.** A graph over genes from the measured map's gene-gene
   correlations (``|r|`` above a threshold, symmetric-normalised, with self loops) couples genes that co-vary:
   the denoiser's output passes through a learned graph convolution over the gene channels.

Map representation
    Measured spots are rasterised in the coordinates of their own fitted lattice (:func:`stpredict.pp.fit_lattice`):
    square ST, hexagonal Visium and the 2k centred-rectangular array all become a regular grid with one spot per
    cell. A map ``f``× finer has cells at ``origin + basis · (i, j) / f`` — exactly the ``ps4`` (``f = 2``) and
    ``ps16`` (``f = 4``) pseudo-spot lattices, so grid tables come straight out of the sampler; µm bins and other
    regions get coverage-weighted means of the fine cells in linear space (log1p after aggregation).
    Image features for each fine cell come from the ``handcrafted`` backbone's dense path (weight-free).

The denoiser generates the *residual* of the fine map over the bilinearly interpolated coarse map (scaled to unit
variance per gene), as SR3/SRDiff-style super-resolution models do: the paper does not say whether it diffuses the
map or a residual; the residual keeps an under-trained model at interpolation rather than at the mean and makes the
sampled spread the uncertainty of the refinement alone.

Training (DDPM, ε-prediction, cosine schedule; DDIM sampling with ``steps``, deterministic; optional
classifier-free guidance on histology: the histology condition is dropped with probability ``p_uncond`` in
training and ``guidance`` > 1 extrapolates at sampling)

- ``mode="self"`` (default; no high-resolution truth needed): the slide's measured map ``M`` is pooled 2 × 2
  (over the measured cells, in linear space weighted by library size: what a spot twice the size would have
  measured) to make low/high pairs ``(pool(M), M)``; the model learns that step
  conditioned on histology and is then applied to ``M`` itself to predict the ``2×`` finer map (``4×`` by applying
  it twice). *Assumption:* the relation between a map and its 2× refinement, given histology, does not depend
  on the absolute scale (it is learned one octave coarser than it is used).
- ``mode="paired"``: the training slides carry high-resolution measurements (e.g. Visium HD bins or Xenium
  cells pooled to a grid) as their "spots"; pairs are (pool(H), H) at the target scale and the model is
  applied to a spot-level slide whose lattice spacing equals the pooled one. *Assumption:* the training slides'
  tissue and chemistry match the predicted slide's.

Values are log1p-normalised expression, standardised per gene for the network; each requested region gets
the mean over ``n_samples`` samples (``training["n_samples"]`` and ``.uns`` record it) and their sd scaled by
the calibrated spread factor of the gene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .._logging import get_logger
from ._base import Predictor, register_predictor
from ._torch import fit_module, load_module_state, module_state, seed_everything

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from ._base import Regions, SlideData

__all__ = ["CrossModalDiffusion", "LatticeMap", "lattice_map"]

logger = get_logger(__name__)


# ------------------------------------------------------------------------------------------------------
# maps in lattice coordinates
# ------------------------------------------------------------------------------------------------------
@dataclass
class LatticeMap:
    """Spots rasterised in their lattice's coordinates.

    Attributes
    ----------
    values
        ``(G, H, W)`` values (0 where unmeasured).
    mask
        ``(H, W)`` True where a spot was measured.
    origin_px, basis_px
        ``position = origin + basis @ (i, j) * step`` in level-0 pixels, with ``i`` the column.
    step
        Lattice units per map cell (1 for the measured map, 0.5 for 2× finer...).
    offset
        Lattice coordinates of map cell ``(0, 0)``.
    """

    values: np.ndarray
    mask: np.ndarray
    origin_px: np.ndarray
    basis_px: np.ndarray
    step: float
    offset: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.mask.shape  # type: ignore[return-value]

    def centers_px(self) -> np.ndarray:
        """Level-0 pixel positions of every cell, ``(H*W, 2)`` row-major."""
        h, w = self.shape
        jj, ii = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        lat = self.offset + np.column_stack([ii.ravel(), jj.ravel()]) * self.step
        return lat @ self.basis_px.T + self.origin_px

    def finer(self, factor: int = 2) -> LatticeMap:
        """An empty map ``factor`` times finer over the same lattice extent (mask: within one fine cell of a measured one)."""
        from scipy.ndimage import binary_dilation

        h, w = self.shape
        H, W = (h - 1) * factor + 1, (w - 1) * factor + 1
        m = np.zeros((H, W), bool)
        m[::factor, ::factor] = self.mask
        m = binary_dilation(m, iterations=factor - 1) if factor > 1 else m
        return LatticeMap(
            np.zeros((self.values.shape[0], H, W), np.float32),
            m,
            self.origin_px,
            self.basis_px,
            self.step / factor,
            self.offset,
        )


def lattice_map(centers_px: np.ndarray, values: np.ndarray) -> LatticeMap:
    """Rasterise spots (``values`` ``(n, G)``) in their fitted lattice's coordinates."""
    from ..pp._grid import fit_lattice

    lat = fit_lattice(centers_px)
    c = lat.coords
    lo = c.min(0)
    ij = c - lo
    w, h = ij.max(0) + 1
    vals = np.zeros((values.shape[1], h, w), np.float32)
    mask = np.zeros((h, w), bool)
    vals[:, ij[:, 1], ij[:, 0]] = np.asarray(values, np.float32).T
    mask[ij[:, 1], ij[:, 0]] = True
    return LatticeMap(vals, mask, lat.origin, lat.basis, 1.0, lo.astype(float))


def pool2(values: np.ndarray, mask: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """2 × 2 pooling of a log1p map over its measured cells, as a spot twice the size would measure it.

    Values are log1p of normalised expression; the pooled value is the log1p of their mean in linear space,
    weighted by ``weights`` (each cell's library size, when given): exactly the normalised expression of the
    summed counts. Averaging the log values instead would make the training inputs smaller than real coarse
    measurements (Jensen), and the model would learn a residual that biases its refinements upwards.
    """
    G, h, w = values.shape
    H, W = (h + 1) // 2, (w + 1) // 2
    wt = np.where(mask, 1.0 if weights is None else np.asarray(weights, np.float64), 0.0)
    v = np.zeros((G, 2 * H, 2 * W), np.float64)
    m = np.zeros((2 * H, 2 * W), np.float64)
    v[:, :h, :w] = np.expm1(np.asarray(values, np.float64)) * wt
    m[:h, :w] = wt
    s = v.reshape(G, H, 2, W, 2).sum((2, 4))
    n = m.reshape(H, 2, W, 2).sum((1, 3))
    out = np.log1p(np.divide(s, n, out=np.zeros_like(s), where=n > 0)).astype(np.float32)
    return out, n > 0


def fill(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Unmeasured cells take the value of the nearest measured cell."""
    from scipy.ndimage import distance_transform_edt

    if mask.all() or not mask.any():
        return values
    idx = distance_transform_edt(~mask, return_distances=False, return_indices=True)
    return values[..., idx[0], idx[1]]


def resample(values: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear values ``(G, H, W)`` of a coarse map at fractional coarse coordinates ``rows`` × ``cols``."""
    from scipy.ndimage import map_coordinates

    R, C = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([map_coordinates(v, [R, C], order=1, mode="nearest") for v in values]).astype(np.float32)


def coarse_condition(
    values: np.ndarray, mask: np.ndarray, shape: tuple[int, int], *, training: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The coarse map interpolated at every fine cell's position, and its coverage.

    At inference fine cell ``i`` of a ``2×`` finer lattice sits at coarse coordinate ``i / 2``. In
    self-supervised training the coarse map is the 2 × 2 pooling of the fine one, whose pooled centres sit at
    fine coordinate ``2k + 0.5``, so fine cell ``i`` is at coarse coordinate ``(i - 0.5) / 2``. Using the true
    geometry in both cases keeps the conditioning consistent.
    """
    H, W = shape
    shift = 0.5 if training else 0.0
    rows = (np.arange(H) - shift) / 2.0
    cols = (np.arange(W) - shift) / 2.0
    v = resample(fill(values, mask), rows, cols)
    m = resample(mask[None].astype(np.float32), rows, cols)[0]
    return v, m


# ------------------------------------------------------------------------------------------------------
# network
# ------------------------------------------------------------------------------------------------------
def _build(n_genes: int, n_img: int, adjacency: np.ndarray, cfg: dict[str, Any]) -> torch.nn.Module:
    import torch
    import torch.nn.functional as F
    from torch import nn

    C = int(cfg["channels"])
    T_DIM = 4 * C

    def gn(c: int) -> nn.GroupNorm:
        return nn.GroupNorm(min(8, c), c)

    class TimeEmbed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(C, T_DIM), nn.SiLU(), nn.Linear(T_DIM, T_DIM))

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            half = C // 2
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
            a = t.float()[:, None] * freqs[None]
            return self.mlp(torch.cat([a.sin(), a.cos()], -1))

    class CMAM(nn.Module):
        """Cross-modal adaptive modulation: per-modality and shared spatial scale/shift, gated."""

        def __init__(self, c: int) -> None:
            super().__init__()
            self.norm = gn(c)
            self.img = nn.Conv2d(C, 2 * c, 1)
            self.expr = nn.Conv2d(C, 2 * c, 1)
            self.shared = nn.Conv2d(C, 2 * c, 1)
            self.gate = nn.Linear(T_DIM, 3)
            for m in (self.img, self.expr, self.shared):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

        def forward(self, h, z_img, z_expr, z_shared, temb):
            g = torch.softmax(self.gate(temb), -1)[:, :, None, None, None]  # (b, 3, 1, 1, 1)
            mods = torch.stack([self.img(z_img), self.expr(z_expr), self.shared(z_shared)], 1)  # (b, 3, 2c, H, W)
            mod = (g * F.interpolate(mods.flatten(1, 2), size=h.shape[-2:], mode="nearest").unflatten(1, (3, -1))).sum(
                1
            )
            scale, shift = mod.chunk(2, dim=1)
            return self.norm(h) * (1 + scale) + shift

    class ResBlock(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.mod1 = CMAM(cin)
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
            self.t = nn.Linear(T_DIM, cout)
            self.mod2 = CMAM(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
            self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

        def forward(self, x, cond, temb):
            h = self.conv1(F.silu(self.mod1(x, *cond, temb)))
            h = h + self.t(temb)[:, :, None, None]
            h = self.conv2(F.silu(self.mod2(h, *cond, temb)))
            return h + self.skip(x)

    class DynamicCrossAttention(nn.Module):
        """Each location attends over its cell / neighbourhood / tissue image tokens and slide tokens."""

        def __init__(self, c: int, n_scales: int = 3, n_global: int = 4, heads: int = 4) -> None:
            super().__init__()
            self.heads, self.dh = heads, c // heads
            self.q = nn.Linear(c, c)
            self.kv = nn.Linear(C, 2 * c)
            self.scale_gate = nn.Linear(T_DIM + c, n_scales)
            self.global_tokens = nn.Parameter(torch.zeros(n_global, C))
            self.out = nn.Linear(c, c)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
            self.norm = gn(c)

        def forward(self, h, scales, temb):
            # h: (b, c, H, W); scales: list of (b, C, H', W') image features; temb: (b, T)
            b, c, H, W = h.shape
            q_in = self.norm(h).flatten(2).transpose(1, 2)  # (b, HW, c)
            toks = [
                F.interpolate(s, size=(H, W), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
                for s in scales
            ]
            gate = torch.softmax(
                self.scale_gate(torch.cat([temb[:, None].expand(-1, H * W, -1), q_in], -1)), -1
            )  # (b, HW, S)
            local = torch.stack(toks, 2) * gate[..., None]  # (b, HW, S, C)
            glob = (
                torch.stack([s.mean((2, 3)) for s in scales], 1).mean(1, keepdim=True) + self.global_tokens[None]
            ).unsqueeze(1)
            kv_in = torch.cat([local, glob.expand(-1, H * W, -1, -1)], 2)  # (b, HW, S+G, C)
            k, v = self.kv(kv_in).chunk(2, -1)
            q = self.q(q_in)
            sh = lambda z: z.view(*z.shape[:-1], self.heads, self.dh)  # noqa: E731
            att = torch.einsum("bnhd,bnshd->bnhs", sh(q), sh(k)) / math.sqrt(self.dh)
            o = torch.einsum("bnhs,bnshd->bnhd", att.softmax(-1), sh(v)).reshape(b, H * W, c)
            return h + self.out(o).transpose(1, 2).view(b, c, H, W)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            G = n_genes
            self.temb = TimeEmbed()
            # modality-specific and shared condition encoders (disentangling)
            self.enc_img = nn.Sequential(nn.Conv2d(n_img, C, 1), nn.SiLU(), nn.Conv2d(C, C, 3, padding=1))
            self.enc_expr = nn.Sequential(nn.Conv2d(G + 1, C, 3, padding=1), nn.SiLU(), nn.Conv2d(C, C, 3, padding=1))
            self.enc_shared = nn.Sequential(nn.Conv2d(2 * C, C, 1), nn.SiLU(), nn.Conv2d(C, C, 3, padding=1))
            self.null_img = nn.Parameter(torch.zeros(n_img))
            # image features at three scales for cross-attention (cell, neighbourhood, tissue)
            self.img_scales = nn.ModuleList([nn.Conv2d(n_img, C, 1) for _ in range(3)])
            self.inp = nn.Conv2d(G, C, 3, padding=1)
            self.down1 = ResBlock(C, C)
            self.down2 = ResBlock(C, 2 * C)
            self.mid = ResBlock(2 * C, 2 * C)
            self.attn_mid = DynamicCrossAttention(2 * C)
            self.up2 = ResBlock(4 * C, C)
            self.attn_up = DynamicCrossAttention(C)
            self.up1 = ResBlock(2 * C, C)
            self.out = nn.Conv2d(C, G, 3, padding=1)
            # co-expression graph convolution over genes (adjacency fixed, weights learned)
            self.register_buffer("adj", torch.as_tensor(adjacency, dtype=torch.float32))
            self.gcn_w = nn.Parameter(torch.zeros(G, G))
            self.gcn_gate = nn.Parameter(torch.zeros(G))

        def forward(self, x, t, low, img, mask_low, drop_img):
            # x, low: (b, G, H, W); img: (b, F, H, W); mask_low: (b, 1, H, W); drop_img: (b,) bool
            temb = self.temb(t)
            img = torch.where(drop_img[:, None, None, None], self.null_img[None, :, None, None].expand_as(img), img)
            z_img = self.enc_img(img)
            z_expr = self.enc_expr(torch.cat([low, mask_low], 1))
            z_sh = self.enc_shared(torch.cat([z_img, z_expr], 1))
            cond = (z_img, z_expr, z_sh)
            scales = []
            for i, conv in enumerate(self.img_scales):
                s = conv(img)
                k = 3**i
                scales.append(F.avg_pool2d(s, k, stride=1, padding=k // 2, count_include_pad=False) if k > 1 else s)
            h0 = self.inp(x)
            h1 = self.down1(h0, cond, temb)
            h2 = self.down2(F.avg_pool2d(h1, 2, ceil_mode=True), cond, temb)
            m = self.attn_mid(self.mid(h2, cond, temb), scales, temb)
            u2 = self.up2(torch.cat([m, h2], 1), cond, temb)
            u2 = self.attn_up(F.interpolate(u2, size=h1.shape[-2:], mode="nearest"), scales, temb)
            u1 = self.up1(torch.cat([u2, h1], 1), cond, temb)
            eps = self.out(u1)
            graph = torch.einsum("gk,bkhw->bghw", self.adj * self.gcn_w, eps)
            return eps + torch.tanh(self.gcn_gate)[None, :, None, None] * graph

    return Net()


def coexpression_adjacency(values: np.ndarray, mask: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """Symmetric-normalised |correlation| > threshold graph over genes (with self loops) from a measured map."""
    x = values[:, mask].T  # (n, G)
    G = x.shape[1]
    if x.shape[0] < 3:
        return np.eye(G, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.nan_to_num(np.corrcoef(x.T))
    a = (np.abs(r) > threshold).astype(np.float64) * np.abs(r)
    np.fill_diagonal(a, 1.0)
    d = 1.0 / np.sqrt(a.sum(1))
    return (a * d[:, None] * d[None, :]).astype(np.float32)


def _cosine_alphas(T: int) -> np.ndarray:
    s = 0.008
    x = np.linspace(0, T, T + 1)
    f = np.cos(((x / T) + s) / (1 + s) * np.pi / 2) ** 2
    abar = f / f[0]
    return np.clip(abar[1:], 1e-5, 0.9999)


# ------------------------------------------------------------------------------------------------------
# predictor
# ------------------------------------------------------------------------------------------------------
@register_predictor("diffusion")
class CrossModalDiffusion(Predictor):
    """Cross-modal conditional diffusion (Wang et al. 2024): sampled super-resolved maps with uncertainty.

    A within-slide super-resolution method: it refines the measured map of the slide it predicts (see the
    module docstring for the components, the map representation and the two training modes).

    Parameters
    ----------
    mode
        ``"self"`` (pairs from 2 × 2 pooling of the slide's own map) or ``"paired"`` (training slides carry
        high-resolution measurements).
    factor
        Refinement of the predicted map over the measured one: 2 (ps4) or 4 (ps16; two 2× steps).
    channels
        Denoiser width.
    timesteps
        Diffusion steps in training.
    steps
        DDIM sampling steps (deterministic).
    n_samples
        Samples per prediction (mean and sd are reported).
    guidance
        Classifier-free guidance weight on histology (1: none).
    p_uncond
        Probability of dropping the histology condition in training.
    corr_threshold
        ``|r|`` above which two genes are linked in the co-expression graph.
    lr, weight_decay, batch_size
        Optimiser settings; the batch is made of random crops of the training maps.
    max_epochs
        Epochs of ``steps_per_epoch`` optimisation steps.
    steps_per_epoch
        Steps per epoch.
    crop
        Side of the training crops in map cells.
    calibrate
        Hold out a random fifth of the measured cells from the loss and use them to gate the sampled residual per
        gene and to rescale the sampled spread so that the central 90 % of the samples covers 90 % of them
        (noise-aware, split-conformal style; see ``_calibrate``). ``False`` keeps the raw samples.
    """

    consumes = "map"
    default_backbone = None
    provides_std = True
    uses_slide_targets = True
    smoke_config: ClassVar[dict[str, Any]] = {"channels": 16, "steps": 4, "n_samples": 3, "steps_per_epoch": 5}

    def __init__(
        self,
        *,
        mode: str = "self",
        factor: int = 2,
        channels: int = 48,
        timesteps: int = 1000,
        steps: int = 25,
        n_samples: int = 16,
        guidance: float = 1.0,
        p_uncond: float = 0.1,
        corr_threshold: float = 0.3,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 8,
        max_epochs: int = 30,
        steps_per_epoch: int = 50,
        crop: int = 16,
        calibrate: bool = True,
    ) -> None:
        if mode not in ("self", "paired"):
            msg = f"mode must be 'self' or 'paired', got {mode!r}."
            raise ValueError(msg)
        if factor not in (2, 4):
            msg = f"factor must be 2 or 4, got {factor!r}."
            raise ValueError(msg)
        super().__init__(
            mode=mode, factor=int(factor), channels=int(channels), timesteps=int(timesteps), steps=int(steps),
            n_samples=int(n_samples), guidance=float(guidance), p_uncond=float(p_uncond),
            corr_threshold=float(corr_threshold), lr=float(lr), weight_decay=float(weight_decay),
            batch_size=int(batch_size), max_epochs=int(max_epochs), steps_per_epoch=int(steps_per_epoch), crop=int(crop),
            calibrate=bool(calibrate),
        )  # fmt: skip
        self._net: Any = None
        self._mu: np.ndarray | None = None
        self._sd: np.ndarray | None = None
        self._rsd: np.ndarray | None = None
        self._spread: np.ndarray | None = None
        self._gate: np.ndarray | None = None
        self._img_mu: np.ndarray | None = None
        self._img_sd: np.ndarray | None = None

    # -- conditions ----------------------------------------------------------------------------------
    @staticmethod
    def _image_features(slide: SlideData, lm: LatticeMap) -> np.ndarray:
        """Hand-crafted features at every cell of ``lm`` over views of 1, 3 and 9 cells: ``(F, H, W)``."""
        from ..pp._patches import PatchExtractor
        from .backbones import HandcraftedBackbone

        mpp = np.asarray(slide.microns_per_pixel_xy)
        cell_um = float(np.sqrt(abs(np.linalg.det(lm.basis_px * lm.step))) * np.sqrt(mpp[0] * mpp[1]))
        centers_um = lm.centers_px() * mpp
        h, w = slide.image_shape
        extent = (w * mpp[0], h * mpp[1])
        res = max(1.0, cell_um / 16.0)  # ~16 px per cell side, at least 1 µm/px
        bb = HandcraftedBackbone(window_um=cell_um, context=3.0, mpp=res)

        def read_tile(center_um, size_um, out_px):
            ext = PatchExtractor(
                slide.image_levels, (np.asarray(center_um) / mpp)[None], tuple(mpp), size_um=size_um, patch_px=out_px
            )
            return ext.read([0])

        f1 = bb.dense(
            read_tile,
            centers_um,
            extent,
            window_um=cell_um,
            cell_um=max(res * 2, cell_um / 8),
            tile_um=max(1024.0, 16 * cell_um),
        )
        f3 = bb.dense(
            read_tile,
            centers_um,
            extent,
            window_um=3 * cell_um,
            cell_um=max(res * 2, cell_um / 4),
            tile_um=max(1024.0, 32 * cell_um),
        )
        feats = np.concatenate([f1, f3], 1)
        H, W = lm.shape
        return feats.T.reshape(-1, H, W).astype(np.float32)

    def _pairs(self, slide: SlideData) -> dict[str, np.ndarray]:
        """(low, high, masks, image features) of one slide's training pair."""
        lm = lattice_map(slide.centers_px, np.asarray(slide.y))
        lib = slide.library_size if slide.library_size is not None else np.full(slide.n, 1e4)
        library = lattice_map(slide.centers_px, np.asarray(lib, float)[:, None]).values[0]
        low, low_mask = pool2(lm.values, lm.mask, weights=library)
        low_up, mask_up = coarse_condition(low, low_mask, lm.shape, training=True)
        img = self._image_features(slide, lm)
        return {"high": lm.values, "mask": lm.mask, "low": low_up, "low_mask": mask_up, "img": img, "library": library}

    def _standardise(self, a: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
        return (a - mu[:, None, None]) / sd[:, None, None]

    def _residual(self, pair: dict[str, np.ndarray], high: np.ndarray) -> np.ndarray:
        """The diffusion target: standardised ``high`` minus the standardised coarse condition, per-gene unit variance."""
        r = self._standardise(high, self._mu, self._sd) - self._standardise(pair["low"], self._mu, self._sd)
        return (r / self._rsd[:, None, None]).astype(np.float32)

    # -- training ------------------------------------------------------------------------------------
    def fit(
        self,
        slides: Sequence[SlideData],
        *,
        genes: Sequence[str],
        max_epochs: int | None = None,
        seed: int | None = None,
    ) -> CrossModalDiffusion:
        """Train the denoiser on low/high pairs made by pooling the slides' measured maps."""
        import torch

        from ._device import resolve_device

        cfg = self.config
        seed = seed_everything(seed)
        dev = resolve_device(self.device)
        pairs = [self._pairs(s) for s in slides]
        # a random fifth of the measured cells is kept out of the loss to calibrate the sampled spread on
        split_rng = np.random.default_rng(seed)
        for p in pairs:
            held = (
                p["mask"] & (split_rng.random(p["mask"].shape) < 0.2) if cfg["calibrate"] else np.zeros_like(p["mask"])
            )
            p["calib"], p["train"] = held, p["mask"] & ~held
        allv = np.concatenate([p["high"][:, p["mask"]] for p in pairs], 1)
        self._mu, self._sd = allv.mean(1), allv.std(1) + 1e-3
        imgs = np.concatenate([p["img"].reshape(p["img"].shape[0], -1) for p in pairs], 1)
        self._img_mu, self._img_sd = imgs.mean(1), imgs.std(1) + 1e-6
        adj = coexpression_adjacency(
            np.concatenate([p["high"][:, p["mask"]] for p in pairs], 1)[:, None, :],
            np.ones((1, allv.shape[1]), bool),
            cfg["corr_threshold"],
        )
        self._adj = adj
        # the denoiser generates the residual over the interpolated coarse map, scaled to unit variance per gene
        res = np.concatenate(
            [
                (self._standardise(p["high"], self._mu, self._sd) - self._standardise(p["low"], self._mu, self._sd))[
                    :, p["mask"]
                ]
                for p in pairs
            ],
            1,
        )
        self._rsd = res.std(1) + 1e-3
        net = _build(len(genes), imgs.shape[0], adj, cfg).to(dev)
        T = cfg["timesteps"]
        abar = torch.as_tensor(_cosine_alphas(T), dtype=torch.float32, device=dev)
        data = []
        for p in pairs:
            data.append(
                {
                    "x0": torch.as_tensor(self._residual(p, p["high"]), device=dev),
                    "mask": torch.as_tensor(p["train"], device=dev),
                    "low": torch.as_tensor(self._standardise(p["low"], self._mu, self._sd), device=dev),
                    "low_mask": torch.as_tensor(p["low_mask"][None], device=dev),
                    "img": torch.as_tensor(self._standardise(p["img"], self._img_mu, self._img_sd), device=dev),
                }
            )
        crop, bs = cfg["crop"], cfg["batch_size"]

        def sample_batch(rng):
            xs, ms, ls, lms, ims = [], [], [], [], []
            for _ in range(bs):
                d = data[int(rng.integers(len(data)))]
                H, W = d["mask"].shape
                ch, cw = min(crop, H), min(crop, W)
                r0, c0 = int(rng.integers(H - ch + 1)), int(rng.integers(W - cw + 1))
                sl = (slice(None), slice(r0, r0 + ch), slice(c0, c0 + cw))
                xs.append(_pad(d["x0"][sl], crop))
                ms.append(_pad(d["mask"][None, r0 : r0 + ch, c0 : c0 + cw].float(), crop))
                ls.append(_pad(d["low"][sl], crop))
                lms.append(_pad(d["low_mask"][sl], crop))
                ims.append(_pad(d["img"][sl], crop))
            return torch.stack(xs), torch.stack(ms), torch.stack(ls), torch.stack(lms), torch.stack(ims)

        def train_batches(rng):
            for _ in range(cfg["steps_per_epoch"]):
                x0, m, low, lm_, img = sample_batch(rng)
                t = torch.as_tensor(rng.integers(0, T, len(x0)), device=dev)
                noise = torch.randn_like(x0)
                a = abar[t][:, None, None, None]
                xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
                drop = torch.as_tensor(rng.random(len(x0)) < cfg["p_uncond"], device=dev)
                yield xt, t, low, img, lm_, drop, noise, m

        def loss_fn(model, xt, t, low, img, lm_, drop, noise, m):
            pred = model(xt, t, low, img, lm_, drop)
            return (((pred - noise) ** 2) * m).sum() / (m.sum() * pred.shape[1]).clamp_min(1.0)

        log = fit_module(
            net, train_batches, loss_fn, val_batches=None,
            max_epochs=int(max_epochs if max_epochs is not None else cfg["max_epochs"]), patience=10**9,
            lr=cfg["lr"], weight_decay=cfg["weight_decay"], device=dev, seed=seed, progress=self.progress, desc="diffusion",
        )  # fmt: skip
        self._net = net.cpu()
        self._spread = np.ones(len(genes), np.float32)
        self._gate = np.ones(len(genes), np.float32)
        if cfg["calibrate"]:
            self._gate, self._spread = self._calibrate(pairs, seed)
        self.genes = list(genes)
        self.training = {
            "n_spots": int(sum(s.n for s in slides)), "seed": seed, "mode": cfg["mode"], "n_samples": cfg["n_samples"],
            "spread_factor_median": float(np.median(self._spread)), "residual_gate_median": float(np.median(self._gate)),
            **log.as_dict(),
        }  # fmt: skip
        return self

    def _calibrate(self, pairs: list[dict[str, np.ndarray]], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-gene residual gate and spread factor, from the training octave (pooled map → measured map).

        Samples the measured map from its own 2 × 2 pooling. The gate ``w`` ∈ [0, 1] scales the sampled mean
        residual over the interpolated map by its least-squares fit to the held-out cells' true residual, shrunk
        towards 0 by its standard error (positive-part James–Stein, ``w·max(0, 1 - 1/t²)``), so a model that has
        not clearly learned a gene's refinement falls back to interpolation instead of adding noise (small
        slides, short training). Then it chooses, per gene, the factor ``f`` for which
        90 % of the measured values of the held-out calibration cells (a random fifth of the measured cells,
        excluded from the training loss) fall within ``mean ± 1.645 · sqrt((f · sd)² + noise²)``, where ``noise`` is
        the Poisson count noise of each measured spot in log1p units (delta method from its library size and the
        sampled mean). The factor thus calibrates the model's uncertainty about the expected expression, not the
        count noise the measurements add to it (split-conformal, on the octave the model learned).
        """
        zs, ns = [], []
        n = max(int(self.config["n_samples"]), 4)
        for i, p in enumerate(pairs):
            low = self._standardise(p["low"], self._mu, self._sd).astype(np.float32)
            img = self._standardise(p["img"], self._img_mu, self._img_sd).astype(np.float32)
            x = self._sample(low, p["low_mask"].astype(np.float32), img, n, seed + 7919 + i, spread=None)
            high = self._standardise(p["high"], self._mu, self._sd)
            m = p["calib"]
            mean_log = np.maximum(x.mean(0) * self._sd[:, None, None] + self._mu[:, None, None], 0.0)
            lib = np.maximum(p["library"], 1.0)[None]
            noise_var = np.expm1(mean_log) * (1e4 / lib) * np.exp(-2 * mean_log) / self._sd[:, None, None] ** 2
            zs.append(np.stack([(high - low)[:, m], (x.mean(0) - low)[:, m], x.std(0)[:, m]]))
            ns.append(noise_var[:, m])
        r_true, r_pred, sd = np.concatenate(zs, 2)
        noise = np.concatenate(ns, 1)
        ones = np.ones(r_true.shape[0], np.float32)
        if r_true.shape[1] < 5:
            logger.warning("diffusion: fewer than 5 held-out cells; the samples are left uncalibrated.")
            return ones, ones
        ss = np.maximum((r_pred**2).sum(1), 1e-12)
        slope = (r_true * r_pred).sum(1) / ss
        # positive-part James-Stein shrinkage of the slope towards 0 by its own noise: a gate estimated from a
        # few dozen held-out cells is kept only as far as it stands out of its standard error
        resid = ((r_true - slope[:, None] * r_pred) ** 2).sum(1) / max(r_true.shape[1] - 1, 1)
        t2 = slope**2 * ss / np.maximum(resid, 1e-12)
        shrunk = slope * np.clip(1.0 - 1.0 / np.maximum(t2, 1e-12), 0.0, 1.0)
        gate = np.clip(shrunk, 0.0, 1.0).astype(np.float32)
        err = np.abs(r_true - gate[:, None] * r_pred)
        factors = np.ones(err.shape[0], np.float32)
        for g in range(err.shape[0]):
            lo, hi = 0.05, 50.0
            for _ in range(40):  # coverage is monotone in f: bisect in log space
                f = np.sqrt(lo * hi)
                cover = np.mean(err[g] <= 1.6449 * np.sqrt((f * sd[g]) ** 2 + noise[g]))
                lo, hi = (lo, f) if cover >= 0.9 else (f, hi)
            factors[g] = hi
        return gate, factors

    # -- sampling ------------------------------------------------------------------------------------
    def _sample(
        self,
        low_std: np.ndarray,
        low_mask: np.ndarray,
        img: np.ndarray,
        n: int,
        seed: int,
        *,
        spread: np.ndarray | None | str = "fitted",
    ) -> np.ndarray:
        """DDIM samples ``(n, G, H, W)`` in standardised units (the coarse condition plus a sampled residual).

        ``spread="fitted"``: the residual's sample mean is gated and the samples' spread around it scaled by the
        calibrated factors; ``"gate"``: gated mean, raw spread; ``None``: raw samples; an array: raw mean, that
        spread factor per gene.
        """
        import torch

        from ._device import autocast, resolve_device

        cfg = self.config
        dev = resolve_device(self.device)
        net = self._net.to(dev).eval()
        T = cfg["timesteps"]
        abar = torch.as_tensor(_cosine_alphas(T), dtype=torch.float64, device=dev)
        ts = np.linspace(T - 1, 0, cfg["steps"]).round().astype(int)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        x = torch.randn((n, *low_std.shape), generator=gen).to(dev)
        low = torch.as_tensor(low_std, device=dev)[None].expand(n, -1, -1, -1)
        lm = torch.as_tensor(low_mask, device=dev)[None, None].expand(n, -1, -1, -1)
        im = torch.as_tensor(img, device=dev)[None].expand(n, -1, -1, -1)
        keep = torch.zeros(n, dtype=torch.bool, device=dev)
        drop = torch.ones(n, dtype=torch.bool, device=dev)
        w = cfg["guidance"]
        with torch.inference_mode(), autocast(dev):
            for i, t in enumerate(ts):
                tt = torch.full((n,), int(t), device=dev)
                eps = net(x, tt, low, im, lm, keep).float()
                if w != 1.0:
                    eps_u = net(x, tt, low, im, lm, drop).float()
                    eps = eps_u + w * (eps - eps_u)
                a = abar[t].float()
                x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
                x0 = x0.clamp(-6, 6)
                a_prev = abar[ts[i + 1]].float() if i + 1 < len(ts) else torch.tensor(1.0, device=dev)
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        rsd = torch.as_tensor(self._rsd, dtype=torch.float32, device=dev)[None, :, None, None]
        x = x.float()
        if isinstance(spread, str):
            gate = torch.as_tensor(self._gate, dtype=torch.float32, device=dev)[None, :, None, None]
            mean = x.mean(0, keepdim=True)
            x = gate * mean + (x - mean)
            spread = self._spread if spread == "fitted" else None
        if spread is not None and n > 1:
            f = torch.as_tensor(spread, dtype=torch.float32, device=dev)[None, :, None, None]
            mean = x.mean(0, keepdim=True)
            x = mean + f * (x - mean)
        return (low.float() + x * rsd).cpu().numpy()

    def predict(self, slide: SlideData, regions: Regions) -> tuple[np.ndarray, np.ndarray]:
        """Sample the refined map of ``slide``'s measured spots and read it at the regions (mean, sd)."""
        self._check_fitted()
        if slide.y is None:
            msg = "diffusion super-resolves the measured map of the slide it predicts; this slide has no measurements."
            raise ValueError(msg)
        seed = int(regions.meta.get("seed") or 0)
        lm = lattice_map(slide.centers_px, np.asarray(slide.y))
        # The point prediction is read from the samples' mean map (log1p units, before clipping): reading each
        # noisy sample through the clip at zero and expm1/log1p and then averaging would bias it upwards wherever
        # the samples spread widely (an undertrained denoiser, a lowly expressed gene). The sd is the spread of
        # the samples' region values (not inflated), scaled by the gene's calibrated factor.
        raw, fine = self.sample_maps(slide, lm, seed=seed, calibrated_spread=False, clip=False)  # (n, G, H, W)
        mean, _ = self._read_regions(slide, fine, np.maximum(raw.mean(0, keepdims=True), 0.0), regions)
        _, sd = self._read_regions(slide, fine, np.maximum(raw, 0.0), regions)
        if self._spread is not None:
            sd = sd * self._spread[None, :].astype(np.float32)
        return mean, sd

    def sample_maps(
        self,
        slide: SlideData,
        lm: LatticeMap,
        *,
        seed: int = 0,
        calibrated_spread: bool = True,
        clip: bool = True,
    ) -> tuple[np.ndarray, LatticeMap]:
        """``n_samples`` refined maps (log1p-normalised units) and the fine lattice they live on.

        ``factor=4`` applies the 2× step twice; each first-octave sample is refined once more. With
        ``calibrated_spread`` the samples' spread around their mean is scaled by the calibrated factors (so that
        their central 90 % is a 90 % interval); otherwise they are the denoiser's samples (residual mean gated
        either way). ``clip`` sets negative log1p values to 0 (expression cannot be negative).
        """
        n = self.config["n_samples"]
        cur, cur_mask = lm, lm.mask
        cur_std = self._standardise(lm.values, self._mu, self._sd)[None]  # (1, G, h, w)
        for step in range(int(np.log2(self.config["factor"]))):
            fine = cur.finer(2)
            img = self._standardise(self._image_features(slide, fine), self._img_mu, self._img_sd)
            reps = n if cur_std.shape[0] == 1 else 1
            outs = []
            for i in range(cur_std.shape[0]):
                low_up, mask_up = coarse_condition(cur_std[i], cur_mask, fine.shape, training=False)
                outs.append(
                    self._sample(
                        low_up, mask_up, img, reps, seed + 1000 * step + i,
                        spread="fitted" if calibrated_spread else "gate",
                    )
                )  # fmt: skip
            cur_std, cur, cur_mask = np.concatenate(outs), fine, fine.mask
        out = cur_std * self._sd[None, :, None, None] + self._mu[None, :, None, None]
        return (np.maximum(out, 0.0) if clip else out), cur

    def _read_regions(
        self, slide: SlideData, fine: LatticeMap, maps: np.ndarray, regions: Regions
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample region values, then their mean and sd over samples.

        Regions on the fine lattice read their cell; regions no larger than a fine cell elsewhere (e.g. original
        spots between the cells of a pooled map) are read by bilinear interpolation in linear space; larger
        regions (µm bins) take the mean of the fine cells they cover, in linear space. log1p after aggregation.
        """
        from scipy.ndimage import map_coordinates
        from scipy.spatial import cKDTree

        cells = fine.centers_px()
        n, G, H, W = maps.shape
        flat = maps.reshape(n, G, H * W)
        d, idx = cKDTree(cells).query(regions.centers_px)
        cell_vec = fine.basis_px * fine.step
        spacing = float(np.min(np.linalg.norm(cell_vec, axis=0)))
        mpp = np.asarray(slide.microns_per_pixel_xy)
        size_px = regions.size_um / float(np.sqrt(mpp[0] * mpp[1]))
        if regions.kind == "circle" and np.all(d < 0.05 * spacing):
            vals = flat[:, :, idx]  # (n, G, m)
        elif size_px <= 1.5 * spacing:
            ij = np.linalg.solve(
                cell_vec, (regions.centers_px - fine.origin_px).T - fine.basis_px @ fine.offset[:, None]
            )  # (2, m)
            lin = np.expm1(maps)
            coords = [ij[1], ij[0]]
            vals = np.stack(
                [
                    np.stack([map_coordinates(lin[k, g], coords, order=1, mode="nearest") for g in range(G)])
                    for k in range(n)
                ]
            )
            vals = np.log1p(np.maximum(vals, 0.0))
        else:
            r_px = size_px / 2
            tree = cKDTree(cells)
            lin = np.expm1(flat)
            vals = np.zeros((n, G, regions.n))
            for j, c in enumerate(regions.centers_px):
                near = tree.query_ball_point(c, max(r_px, spacing / 2) * 1.5)
                if not near:
                    near = [int(idx[j])]
                near = np.asarray(near)
                off = cells[near] - c
                inside = (
                    (np.abs(off) <= max(r_px, spacing / 2)).all(1)
                    if regions.kind == "square"
                    else np.hypot(*off.T) <= max(r_px, spacing / 2)
                )
                sel = near[inside] if inside.any() else near[[np.argmin(np.hypot(*off.T))]]
                vals[:, :, j] = np.log1p(lin[:, :, sel].mean(-1))
        vals = np.transpose(vals, (0, 2, 1))  # (n, m, G)
        return vals.mean(0).astype(np.float32), vals.std(0).astype(np.float32)

    def get_state(self) -> dict[str, np.ndarray]:
        """Denoiser weights, standardisation and the gene graph."""
        st = {
            "mu": self._mu,
            "sd": self._sd,
            "rsd": self._rsd,
            "spread": self._spread,
            "gate": self._gate,
            "img_mu": self._img_mu,
            "img_sd": self._img_sd,
            "adj": self._adj,
        }
        st.update(module_state(self._net, "net."))
        return st

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Rebuild the denoiser."""
        self._mu, self._sd, self._rsd = np.asarray(state["mu"]), np.asarray(state["sd"]), np.asarray(state["rsd"])
        self._spread = np.asarray(state["spread"])
        self._gate = np.asarray(state["gate"])
        self._img_mu, self._img_sd = np.asarray(state["img_mu"]), np.asarray(state["img_sd"])
        self._adj = np.asarray(state["adj"])
        net = _build(len(self._mu), len(self._img_mu), self._adj, self.config)
        load_module_state(net, state, "net.")
        self._net = net.eval()


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    return F.pad(x, (0, size - w, 0, size - h))
