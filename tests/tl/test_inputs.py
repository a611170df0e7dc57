"""``select_genes`` on small panels: all detected genes, and a dispersion ranking where seurat_v3's loess fails."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import stpredict as stp
from stpredict.tl._targets import select_genes


def _table(n_spots: int, n_genes: int, seed: int, *, prefix: str = "spot") -> ad.AnnData:
    rng = np.random.default_rng(seed)
    rates = rng.gamma(2.0, 2.0, size=n_genes)
    X = rng.poisson(rates * rng.gamma(4.0, 0.25, size=(n_spots, 1)))
    return ad.AnnData(
        X=sp.csr_matrix(X.astype(np.float32)),
        obs=pd.DataFrame(index=[f"{prefix}_{i}" for i in range(n_spots)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
    )


@pytest.fixture
def stp_warnings(caplog):
    """Records the package logger's warnings (it does not propagate to the root logger)."""
    log = logging.getLogger("stpredict")
    log.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="stpredict")
    yield caplog
    log.removeHandler(caplog.handler)


def _dispersion(X: np.ndarray) -> np.ndarray:
    """By hand: variance / mean of counts normalised to 1e4."""
    Xn = X / X.sum(1, keepdims=True) * 1e4
    return Xn.var(0) / Xn.mean(0)


def test_tiny_panel_falls_back_to_dispersion(stp_warnings):
    """6 genes, 3 wanted: seurat_v3's loess fails on so few genes; the top-dispersion genes are taken."""
    import scanpy as sc

    t = _table(40, 6, 0)
    rows = np.arange(t.n_obs)
    with pytest.raises(ValueError):  # the failure being worked around (skmisc raises it with a bytes message)
        sc.pp.highly_variable_genes(t.copy(), flavor="seurat_v3", n_top_genes=3, inplace=False)
    panel, how = select_genes([(t, rows)], 3)
    expected = t.var_names[np.argsort(-_dispersion(t.X.toarray()), kind="stable")[:3]].tolist()
    assert panel == expected
    assert "dispersion" in how and "seurat_v3 failed" in how and how.startswith("top 3 of 6")
    assert any("seurat_v3" in r.getMessage() and r.levelno == logging.WARNING for r in stp_warnings.records)


def test_tiny_panel_several_slides(stp_warnings):
    """With several slides (shared spot names) the fallback ranks by the mean within-slide rank."""
    a, b = _table(40, 6, 1), _table(35, 6, 2)
    assert a.obs_names[0] == b.obs_names[0]
    panel, how = select_genes([(a, np.arange(a.n_obs)), (b, np.arange(b.n_obs))], 2)
    ra = pd.Series(-_dispersion(a.X.toarray())).rank().to_numpy()
    rb = pd.Series(-_dispersion(b.X.toarray())).rank().to_numpy()
    best = np.sort((ra + rb) / 2)[:2]
    got = (ra + rb)[a.var_names.get_indexer(panel)] / 2
    np.testing.assert_allclose(np.sort(got), best)
    assert len(panel) == len(set(panel)) == 2
    assert "dispersion" in how
    assert stp_warnings.records


def test_panel_not_larger_than_detected_genes_takes_all(stp_warnings):
    t = _table(40, 6, 3)
    X = t.X.toarray()
    X[:, 5] = 0  # never detected
    X[:, 4] = 0
    X[:2, 4] = 1  # detected in 2 < 3 spots
    t.X = sp.csr_matrix(X)
    panel, how = select_genes([(t, np.arange(t.n_obs))], 4)
    assert panel == ["g0", "g1", "g2", "g3"]
    assert how == "all 4 detected genes"
    assert not stp_warnings.records  # seurat_v3 was not run, nothing failed


def test_larger_panels_still_use_seurat_v3(stp_warnings):
    t = _table(60, 40, 4)
    rows = np.arange(t.n_obs)
    panel, how = select_genes([(t, rows)], 5)
    assert how == "top 5 highly variable genes (seurat_v3) of the training spots"
    assert len(panel) == 5
    assert not stp_warnings.records


def test_cross_validate_on_a_tiny_panel(stp_warnings):
    sdata = stp.datasets.synthetic(image_size=512, n_genes=6, seed=0)
    res = stp.tl.cross_validate(sdata, "mean", protocol="hide", n_genes=3, progress=False)
    assert len(res.genes[0]) == 3
    how = res.folds.loc[0, "gene_selection"]
    assert "dispersion" in how and "seurat_v3 failed" in how
    assert stp_warnings.records
    assert how in res.params["gene_selection"]


def test_empty_panels_are_refused():
    rare = _table(40, 6, seed=5)
    X = np.zeros((40, 6), dtype=np.float32)
    X[0] = 5.0  # every gene seen in one spot only: below the detection floor of 3 spots
    rare.X = sp.csr_matrix(X)
    with pytest.raises(ValueError, match="No gene is detected in at least 3"):
        select_genes([(rare, np.arange(40))], None, layer=None, n_genes=10)
    with pytest.raises(ValueError, match="empty panel"):
        select_genes([(rare, np.arange(40))], [], layer=None, n_genes=10)


def test_repeated_slide_names_are_all_told_apart():
    from stpredict.tl._pipeline import Elements, prepare_training

    slides = [stp.datasets.synthetic(image_size=512, n_genes=4, seed=s) for s in range(3)]
    tr = prepare_training(
        slides, stp.models.create_predictor("mean"), genes=None, n_genes=4, backbone=None, weights=None,
        patch_size_um=None, elements=Elements(), layer=None,
    )  # fmt: skip
    assert [sl.name for sl in tr.slides] == ["spots#0", "spots#1", "spots#2"]
