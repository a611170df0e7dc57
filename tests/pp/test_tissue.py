"""Tissue detection's morphology."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import morphology

from stpredict.pp._tissue import _disk_closing


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
