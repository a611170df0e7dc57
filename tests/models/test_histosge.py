"""HisToSGE on the synthetic slide with known truth (the issue's must-shows, at a test-sized budget)."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp

FAST = {"n_models": 1}


@pytest.fixture(scope="module")
def slide():
    sdata = stp.datasets.synthetic(image_size=1600, n_genes=15, image_signal=1.0, seed=1)
    stp.tl.embed(sdata, "handcrafted", progress=False)
    return sdata


@pytest.mark.slow
def test_recovers_hidden_spots_better_than_neighbours(slide):
    kw = {"protocol": "hide_spots", "fraction": 0.5, "progress": False, "seed": 0}
    h = stp.tl.cross_validate(slide, "histosge", backbone="handcrafted", max_epochs=80, **kw, **FAST)
    n = stp.tl.cross_validate(slide, "neighbors", **kw)
    assert h.summary()["pcc_mean"] > n.summary()["pcc_mean"] + 0.02


def _truth_log1p(truth, centers_um, size_um):
    lam = truth.mean_rates(centers_um, size_um, "circle")
    return np.log1p(lam / np.maximum(lam.sum(1, keepdims=True), 1e-12) * 1e4)


@pytest.mark.slow
def test_ps4_tracks_high_resolution_truth_better_than_copying(slide):
    from spatialdata import deepcopy

    sdata = deepcopy(slide)
    stp.tl.superresolve(sdata, "histosge", grid="ps4", backbone="handcrafted", max_epochs=80, progress=False, **FAST)
    g = sdata.tables["histosge_spots_ps4"]
    geo = stp.pp.spots(sdata)
    truth = stp.datasets.synthetic_truth(sdata)
    new = ~g.obs["measured"].to_numpy()
    centers_um = np.asarray(g.obsm["spatial"])[new] * geo.microns_per_pixel
    size = float(g.uns["stpredict"]["superresolve"]["region_size_um"])
    # truth on all genes, normalised like the predictions, then the panel
    t_all = truth.mean_rates(centers_um, size, "circle")
    t = np.log1p(t_all / t_all.sum(1, keepdims=True) * 1e4)[:, [int(x.split("_")[1]) for x in g.var_names]]
    pred = np.asarray(g.X)[new]
    from stpredict.tl._targets import targets

    table = sdata.tables["table"]
    y, _, _ = targets(table, np.arange(table.n_obs), list(g.var_names), None)
    copy = y[table.obs_names.get_indexer(g.obs["nearest_spot"].to_numpy()[new])]
    r_model = np.nanmean(stp.metrics.pearson_per_gene(t, pred))
    r_copy = np.nanmean(stp.metrics.pearson_per_gene(t, copy))
    assert r_model > r_copy


@pytest.mark.parametrize("depth", [1, 2])
def test_query_only_last_block_is_the_full_block(depth):
    """The last block computes only the query token's output: the same function as running it on every token."""
    import torch
    import torch.nn.functional as F

    from stpredict.models.histosge import _build_net

    torch.manual_seed(0)
    cfg = {"dim": 32, "heads": 2, "dim_head": 16, "head_hidden": 64, "dropout": 0.1, "depth": depth}
    net = _build_net(7, 5, cfg).eval()
    feats, offs = torch.randn(6, 9, 7), torch.randn(6, 9, 2) * 100
    mask = torch.ones(6, 9, dtype=torch.bool)
    mask[:, 5:] = False
    ang = offs[..., None] * net.omega
    x = net.inp(feats) + net.pos(torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(-2))
    x = torch.cat([x[:, :1] + net.query, x[:, 1:]], dim=1)
    for blk in net.blocks:  # every token through every block
        x = blk(x, mask)
    full = F.softplus(net.head(x[:, 0]))
    torch.testing.assert_close(net(feats, offs, mask), full, rtol=1e-5, atol=1e-6)
