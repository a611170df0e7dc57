"""CUDA paths (skipped without a CUDA device): same results as on the CPU within mixed-precision tolerance.

Run on a GPU machine with ``python -m pytest -m gpu``.
"""

from __future__ import annotations

import numpy as np
import pytest
from smoke import smoke_config

import stpredict as stp

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _levels(sdata):
    from stpredict._image import image_levels

    geo = stp.pp.spots(sdata)
    return geo, image_levels(sdata.images[geo.image_key])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_embedding_on_cuda_matches_cpu(sdata_syn, num_workers):
    from stpredict.tl._embedding_loop import compute_embeddings

    bb = stp.models.get_backbone("resnet18", pretrained=False)
    geo, levels = _levels(sdata_syn)
    kw = {"patch_size_um": 56.0, "batch_size": 8, "progress": False, "num_workers": num_workers}
    cpu = compute_embeddings(levels, geo.centers, geo.microns_per_pixel_xy, bb, device="cpu", **kw)
    gpu = compute_embeddings(levels, geo.centers, geo.microns_per_pixel_xy, bb, device="cuda", **kw)
    assert bb.module.training is False
    # bf16 autocast: per-feature agreement, not bitwise
    r = [np.corrcoef(cpu[:, j], gpu[:, j])[0, 1] for j in range(cpu.shape[1]) if cpu[:, j].std() > 1e-6]
    assert np.median(r) > 0.99


@pytest.mark.parametrize("model", ["histosge", "pixnet", "stnet"])
def test_networks_train_and_predict_on_cuda(sdata_syn, model):
    smoke = smoke_config(model)
    stp.tl.predict(sdata_syn, model, device="cuda", max_epochs=2, progress=False, **smoke)
    pred = sdata_syn.tables["table"].layers["predicted"]
    assert np.isfinite(pred[:, sdata_syn.tables["table"].var["predicted"].to_numpy()]).all()
    rec = sdata_syn.tables["table"].uns["stpredict"]["predicted"]
    assert "cuda" in str(rec.get("device", "cuda"))
