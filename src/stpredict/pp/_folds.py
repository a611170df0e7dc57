"""Spatially blocked folds: the split every honest within-slide protocol and validation split uses."""

from __future__ import annotations

import numpy as np

__all__ = ["spatial_folds"]


def spatial_folds(
    centers_um: np.ndarray, k: int, *, seed: int | None, block_um: float | None = None
) -> tuple[np.ndarray, float]:
    """Spatially blocked K-fold assignment: square blocks (≈ 4 per fold) dealt to folds at random.

    Neighbouring spots share most of their image context and expression, so a random spot split leaks;
    blocks of side ``sqrt(area / (4 k))`` keep whole neighbourhoods on one side.

    Parameters
    ----------
    centers_um
        ``(n, 2)`` spot centres in µm.
    k
        Number of folds.
    seed
        Seed of the random dealing of blocks to folds.
    block_um
        Block side in µm (default: about four blocks per fold over the spots' bounding box).

    Returns
    -------
    ``(fold, side)``: the fold of each spot (``0 … k-1``) and the block side in µm.
    """
    c = np.asarray(centers_um, dtype=float)
    lo, hi = c.min(0), c.max(0)
    area = max(float(np.prod(np.maximum(hi - lo, 1.0))), 1.0)
    side = block_um or float(np.sqrt(area / (4 * k)))
    ij = np.floor((c - lo) / side).astype(int)
    block = ij[:, 1] * (ij[:, 0].max() + 1) + ij[:, 0]
    ids = np.unique(block)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ids))
    fold_of_block = dict(zip(ids[perm].tolist(), (np.arange(len(ids)) % k).tolist(), strict=True))
    folds = np.array([fold_of_block[b] for b in block.tolist()])
    return folds, side
