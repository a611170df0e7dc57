"""Conditioning a grid block by block gives the result of conditioning it in one piece."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import stpredict.pp._condition_plan as plan_module
from stpredict.pp import condition_on_spots
from stpredict.pp._condition_core import correction_kernel, overlap_matrix, solve_blended

from .test_condition import bins_over, lattice, measurements, pseudo_spots, texture


def _case(layout: str, grid: str):
    spots, diam, pitch, basis = lattice(layout, extent=700.0)
    if grid == "bin":  # bins reach past the spots: gap regions, and regions under no spot at all
        regions, kind, size = bins_over(spots, 12.0, pitch * 0.9, extent=700.0), "square", 12.0
    else:
        regions, kind, size = pseudo_spots(spots, basis, pitch), "circle", diam / 2
    n_genes = 5
    pred = texture(regions, n_genes) * np.linspace(0.5, 3.0, n_genes)
    m = measurements(len(spots), n_genes, seed=3)  # a fifth of the spots measured at 0
    kw = {"region_kind": kind, "region_size_um": size, "spot_diameter_um": diam}
    return pred, regions, spots, m, kw


@pytest.mark.parametrize(("layout", "grid"), [("visium", "bin"), ("st", "bin"), ("visium", "ps4")])
@pytest.mark.parametrize("options", [{}, {"gate": 0.6, "degree": 0.3}])
def test_blocks_give_the_one_piece_result(monkeypatch, layout, grid, options):
    pred, regions, spots, m, kw = _case(layout, grid)
    std = 0.2 * pred + 0.01
    whole = condition_on_spots(pred, regions, spots, m, std=std, **kw, **options)
    monkeypatch.setattr(plan_module, "CHUNK_ELEMENTS", 7 * pred.shape[1])  # blocks of 7 regions
    blocks = condition_on_spots(pred, regions, spots, m, std=std, **kw, **options)
    assert len(regions) > 20 * 7
    # the blocks differ only in how the per-gene mean of the prediction was summed
    np.testing.assert_allclose(blocks.values, whole.values, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(blocks.std, whole.std, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(blocks.weights, whole.weights)
    assert blocks.max_rel_error <= 1e-6 and blocks.n_clipped == whole.n_clipped
    assert blocks.summary().keys() == whole.summary().keys()


@pytest.mark.parametrize("layout", ["visium", "st"])
def test_split_solve_is_the_whole_grid_solve(layout):
    # the solve on the regions inside spots, then each region from λ, equals the solve over the whole grid
    pred, regions, spots, m, kw = _case(layout, "bin")
    gate, blend = np.linspace(0.0, 1.0, pred.shape[1]), np.array([1.0, 0.0, 0.5, 0.25, 1.0])
    res = condition_on_spots(pred, regions, spots, m, gate=gate, degree=blend, **kw)
    area = overlap_matrix(spots, kw["spot_diameter_um"], regions, "square", kw["region_size_um"])
    rows = np.asarray(area.sum(1)).ravel() > 0
    w = sp.csr_matrix(sp.diags(1.0 / area.sum(1).A1[rows]) @ area[rows])
    scale = pred.mean(0)
    q = np.maximum((1.0 - gate) * scale + gate * pred, 1e-6 * scale)
    kernels = {d: correction_kernel(regions, spots[rows], res.sigma_um, degree=d) for d in (0, 1)}
    want, *_ = solve_blended(w, kernels, q, m[rows], blend, tol=1e-7)
    gaps = np.asarray(area.sum(0)).ravel() == 0
    assert gaps.sum() > 100
    np.testing.assert_allclose(res.values, want, rtol=1e-12, atol=1e-14)
