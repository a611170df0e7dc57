"""The embedding loop: read-ahead thread, features queued on the device, DataLoader workers — same features."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp
from stpredict.tl._embedding_loop import compute_embeddings, prefetched


def test_prefetched_keeps_order_and_raises_reader_errors():
    assert list(prefetched(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise OSError("chunk unreadable")

    it = prefetched(broken())
    assert next(it) == 1
    with pytest.raises(OSError, match="chunk unreadable"):
        next(it)


def test_prefetched_stops_its_reader_when_closed():
    seen = []

    def source():
        for i in range(10_000):
            seen.append(i)
            yield i

    it = prefetched(source(), depth=2)
    assert next(it) == 0
    it.close()
    n = len(seen)
    assert n < 10  # the reader ran at most a few items ahead and then stopped
    import time

    time.sleep(0.3)
    assert len(seen) == n


@pytest.fixture(scope="module")
def tiny_torch_backbone():
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    return stp.models.get_backbone(module, pretrained=False)


@pytest.mark.parametrize(
    ("prefetch", "sync_every", "num_workers"), [(True, 1, 0), (True, 3, 0), (False, 2, 0), (None, 8, 1)]
)
def test_embedding_loop_variants_agree(sdata_syn, tiny_torch_backbone, prefetch, sync_every, num_workers):
    geo = stp.pp.spots(sdata_syn)
    from stpredict._image import image_levels

    levels = image_levels(sdata_syn.images[geo.image_key])
    kw = {"patch_size_um": 56.0, "batch_size": 4, "progress": False, "device": "cpu"}
    ref = np.stack([tiny_torch_backbone.embed(b[None], device="cpu")[0] for b in _patches(sdata_syn, geo)])
    got = compute_embeddings(
        levels,
        geo.centers,
        geo.microns_per_pixel_xy,
        tiny_torch_backbone,
        prefetch=prefetch,
        sync_every=sync_every,
        num_workers=num_workers,
        **kw,
    )
    assert got.shape == (geo.n_spots, tiny_torch_backbone.dim)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def _patches(sdata, geo):
    """One window per spot, read one at a time in table order (the reference the loop must reproduce)."""
    ds = stp.pp.patches(sdata, size_um=56.0, patch_px=224)
    return [np.asarray(ds[i]) for i in range(geo.n_spots)]
