"""Tissue detection's morphology."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import morphology

from stpredict.pp._tissue import _disk_closing, _read_coarse


@pytest.mark.parametrize("radius", [1, 3, 8, 25])
@pytest.mark.parametrize("density", [0.005, 0.05, 0.5])
def test_disk_closing_is_skimage_closing(radius, density):
    rng = np.random.default_rng(radius)
    mask = ndi.gaussian_filter(rng.random((160, 200)), 2) > 0.5 if density == 0.5 else rng.random((160, 200)) < density
    ours, ref = _disk_closing(mask, radius), morphology.closing(mask, morphology.disk(radius))
    # skimage adds pixels in the top-left corner (its padding); everywhere else the sets are equal
    corner = np.zeros_like(mask)
    corner[:radius, :radius] = True
    assert not (ours != ref)[~corner].any()


def test_disk_closing_edge_cases():
    empty = np.zeros((20, 30), bool)
    assert not _disk_closing(empty, 5).any()
    assert _disk_closing(~empty, 5).all()
    blob = empty.copy()
    blob[5:15, 8:22] = True
    blob[9:11, 14:16] = False  # a hole the closing fills; the rest stays
    closed = _disk_closing(blob, 2)
    assert closed[5:15, 8:22].all() and closed[~blob].sum() <= 4


def _levels(side: int, factors: tuple[int, ...]) -> list:
    import dask.array as da

    rng = da.random.RandomState(0)  # lazy: only the level read is made
    return [
        SimpleNamespace(
            factor_x=float(f),
            factor_y=float(f),
            shape_yx=(side // f, side // f),
            array=rng.randint(0, 256, (3, side // f, side // f), dtype=np.uint8, chunks=1024),
        )
        for f in factors
    ]


@pytest.mark.parametrize(
    ("mpp0", "side", "factors", "want_factor", "want_side"),
    [
        (0.5, 2000, (1, 2, 4), 12.0, 167),  # 1 mm slide: its 2 µm level averaged 3 × 3 (4 × 4: < 128 px)
        (0.5, 20000, (1, 2, 4, 8, 16), 16.0, 1250),  # 10 mm slide: the 8 µm level as it is
        (4.38, 1905, (1, 2, 4), 2.0, 952),  # mob: 8.8 µm/px is nearer 8 than 4.4
        (1.0, 256, (1, 2), 2.0, 128),  # a small image stays at 128 px
    ],
)
def test_mask_level_is_chosen_by_pixel_size(mpp0, side, factors, want_factor, want_side):
    rgb, fx, fy = _read_coarse(_levels(side, factors), mpp0, 8.0, 128)
    assert fx == fy == want_factor
    assert rgb.shape == (3, want_side, want_side)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0


def test_mask_at_8um_matches_the_synthetic_tissue(sdata_syn):
    import stpredict as stp

    mask = stp.pp.tissue_mask(sdata_syn)
    truth = stp.datasets.synthetic_truth(sdata_syn)
    xs = np.arange(2.0, 768, 4.0)
    pts = np.column_stack([a.ravel() for a in np.meshgrid(xs, xs)])
    got, want = mask.contains(pts), truth.tissue(pts[:, 0], pts[:, 1]) > 0.5
    assert max(mask.mask.shape) <= 256  # not the 768 px of level 0
    assert (got & want).sum() / got.sum() > 0.98 and (got & want).sum() / want.sum() > 0.98
