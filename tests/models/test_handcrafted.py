"""Hand-crafted features: a patch's features do not depend on the batch it is read in."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

import stpredict as stp
from stpredict.models import HandcraftedBackbone
from stpredict.models.backbones._handcrafted import _sobel, pixel_maps


def test_sobel_is_per_image_and_matches_scipy_in_2d():
    rng = np.random.default_rng(0)
    imgs = rng.random((3, 20, 24))
    for axis in (1, 2):
        ours = _sobel(imgs, axis)
        for b in range(3):
            np.testing.assert_allclose(np.abs(ours[b]), np.abs(ndi.sobel(imgs[b], axis=axis - 1)), atol=1e-12)


def test_features_do_not_depend_on_the_batch():
    sdata = stp.datasets.synthetic(image_size=768, n_genes=3, seed=2)
    bb = HandcraftedBackbone()
    read_um, px = bb.input_spec(112.0)
    ds = stp.pp.patches(sdata, size_um=read_um, patch_px=px)
    batch = np.stack([np.asarray(ds[i]) for i in range(5)])
    together = bb.embed(batch)
    alone = np.concatenate([bb.embed(batch[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    maps_together = pixel_maps(batch)
    np.testing.assert_allclose(maps_together[2:3], pixel_maps(batch[2:3]), rtol=1e-5, atol=1e-6)
