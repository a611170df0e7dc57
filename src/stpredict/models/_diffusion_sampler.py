"""Conditions, noise schedule and DDIM sampling of the cross-modal diffusion, and its residual calibration.

See :mod:`stpredict.models.diffusion` for the method. Maps are ``(G, H, W)`` arrays on a spot lattice
(:class:`stpredict.pp._lattice.LatticeMap`); :func:`region_samples` reads sampled maps at the requested regions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..pp._lattice import fill, lattice_map, pool2, read_regions

if TYPE_CHECKING:
    import torch

    from ..pp._lattice import LatticeMap
    from ._base import Regions, SlideData

__all__ = [
    "coarse_condition",
    "cosine_alphas",
    "ddim_sample",
    "gate_and_spread",
    "image_features",
    "region_samples",
    "resample",
    "training_pair",
]


def cosine_alphas(T: int) -> np.ndarray:
    """Cumulative signal fractions ``ᾱ_t`` of the cosine schedule (Nichol & Dhariwal 2021), ``t = 1..T``."""
    s = 0.008
    x = np.linspace(0, T, T + 1)
    f = np.cos(((x / T) + s) / (1 + s) * np.pi / 2) ** 2
    abar = f / f[0]
    return np.clip(abar[1:], 1e-5, 0.9999)


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


def image_features(slide: SlideData, lm: LatticeMap) -> np.ndarray:
    """Hand-crafted features at every cell of ``lm`` over views of 1, 3 and 9 cells: ``(F, H, W)``."""
    from ..pp._tiles import tile_reader
    from .backbones import HandcraftedBackbone
    from .backbones._cellmap import map_bounds

    mpp = np.asarray(slide.microns_per_pixel_xy)
    cell_um = float(np.sqrt(abs(np.linalg.det(lm.basis_px * lm.step))) * np.sqrt(mpp[0] * mpp[1]))
    centers_um = lm.centers_px() * mpp
    res = max(1.0, cell_um / 16.0)  # ~16 px per cell side, at least 1 µm/px
    bb = HandcraftedBackbone(window_um=cell_um, context=3.0, mpp=res)

    # one pass over the pixels; both window sizes are read from the same map
    fine = max(res * 2, cell_um / 8)
    lo, hi = map_bounds(centers_um, bb.read_um(3 * cell_um) / 2, fine)
    tile_um = max(1024.0, 16 * cell_um)
    cmap = bb.feature_map(tile_reader(slide.image_levels, mpp), lo, hi, cell_um=fine, tile_um=tile_um)
    f1 = bb.map_features(cmap, centers_um, cell_um)
    f3 = bb.map_features(cmap, centers_um, 3 * cell_um)
    feats = np.concatenate([f1, f3], 1)
    H, W = lm.shape
    return feats.T.reshape(-1, H, W).astype(np.float32)


def training_pair(slide: SlideData) -> dict[str, np.ndarray]:
    """One slide's self-supervised training pair, from its measured map.

    ``high`` and ``mask``: the measured map; ``low`` and ``low_mask``: its library-weighted 2 × 2 pooling,
    interpolated back to the measured cells; ``img``: image features; ``library``: each cell's library size.
    """
    lm = lattice_map(slide.centers_px, np.asarray(slide.y))
    lib = slide.library_size if slide.library_size is not None else np.full(slide.n, 1e4)
    library = lattice_map(slide.centers_px, np.asarray(lib, float)[:, None]).values[0]
    low, low_mask = pool2(lm.values, lm.mask, weights=library)
    low_up, mask_up = coarse_condition(low, low_mask, lm.shape, training=True)
    img = image_features(slide, lm)
    return {"high": lm.values, "mask": lm.mask, "low": low_up, "low_mask": mask_up, "img": img, "library": library}


def ddim_sample(
    net: torch.nn.Module,
    low_std: np.ndarray,
    low_mask: np.ndarray,
    img: np.ndarray,
    *,
    n: int,
    seed: int,
    timesteps: int,
    steps: int,
    guidance: float,
    device: torch.device,
) -> torch.Tensor:
    """``n`` deterministic DDIM samples ``(n, G, H, W)`` of the standardised residual, on ``device``.

    The initial noise comes from a CPU generator seeded with ``seed`` (the same samples on every device);
    ``guidance`` ≠ 1 extrapolates from the histology-free prediction (classifier-free guidance).
    """
    import torch

    from ._device import autocast

    dev = device
    T = timesteps
    abar = torch.as_tensor(cosine_alphas(T), dtype=torch.float64, device=dev)
    ts = np.linspace(T - 1, 0, steps).round().astype(int)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    x = torch.randn((n, *low_std.shape), generator=gen).to(dev)
    low = torch.as_tensor(low_std, device=dev)[None]
    lm = torch.as_tensor(low_mask, device=dev)[None, None]
    im = torch.as_tensor(img, device=dev)[None]
    w = guidance
    with torch.inference_mode(), autocast(dev):
        # the conditions are the same for every sample and step: encoded once, broadcast over the batch
        enc = net.encode(low, im, lm, torch.zeros(1, dtype=torch.bool, device=dev))
        enc_u = net.encode(low, im, lm, torch.ones(1, dtype=torch.bool, device=dev)) if w != 1.0 else None
        for i, t in enumerate(ts):
            tt = torch.full((1,), int(t), device=dev)  # one time for the whole batch (broadcast)
            eps = net.denoise(x, tt, enc).float()
            if enc_u is not None:
                eps_u = net.denoise(x, tt, enc_u).float()
                eps = eps_u + w * (eps - eps_u)
            a = abar[t].float()
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            x0 = x0.clamp(-6, 6)
            a_prev = abar[ts[i + 1]].float() if i + 1 < len(ts) else torch.tensor(1.0, device=dev)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x.float()


def gate_and_spread(
    r_true: np.ndarray, r_pred: np.ndarray, sd: np.ndarray, noise: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene residual gate and spread factor from held-out cells (``(G, m)`` arrays, standardised units).

    ``r_true`` is the true residual over the interpolated map, ``r_pred`` the samples' mean residual, ``sd``
    their spread and ``noise`` the count-noise variance of each measurement. The gate ``w`` ∈ [0, 1] is the
    least-squares slope of ``r_true`` on ``r_pred``, shrunk towards 0 by its standard error (positive-part
    James–Stein, ``w·max(0, 1 - 1/t²)``); the factor ``f`` is the smallest for which 90 % of ``|r_true - w·r_pred|``
    fall within ``1.645 · sqrt((f · sd)² + noise)`` (bisected in log space; coverage is monotone in ``f``).
    """
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


def region_samples(
    slide: SlideData, fine: LatticeMap, maps: np.ndarray, regions: Regions
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample region values (:func:`~stpredict.pp._lattice.read_regions`), then their mean and sd over samples.

    ``maps`` are ``(n, G, H, W)`` samples on the lattice ``fine``; the result is two ``(m, G)`` float32 arrays.
    """
    mpp = np.asarray(slide.microns_per_pixel_xy)
    size_px = regions.size_um / float(np.sqrt(mpp[0] * mpp[1]))
    # polygons (cells) are read as the disk of equal area at their centroid
    kind = "circle" if regions.kind == "polygon" else regions.kind
    vals = read_regions(fine, maps, regions.centers_px, size_px, kind)  # (n, m, G)
    return vals.mean(0).astype(np.float32), vals.std(0).astype(np.float32)
