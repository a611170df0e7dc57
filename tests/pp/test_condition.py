from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

from stpredict.pp import condition_on_spots
from stpredict.pp._condition_core import circle_circle_area, circle_square_area, correction_kernel

# --- synthetic geometry (µm) --------------------------------------------------------------------------


def lattice(layout: str, extent: float = 1000.0) -> tuple[np.ndarray, float, float, np.ndarray]:
    """Spot centres, diameter, pitch and lattice basis of a Visium (hex) or ST (square) layout."""
    if layout == "visium":
        pitch, diam = 100.0, 55.0
        basis = np.array([[pitch, 0.0], [pitch / 2, pitch * np.sqrt(3) / 2]])
    else:
        pitch, diam = 200.0, 100.0
        basis = np.array([[pitch, 0.0], [0.0, pitch]])
    ab = np.array([(a, b) for a in range(-30, 30) for b in range(-30, 30)])
    pts = ab @ basis + 80.0
    keep = (pts >= 60).all(1) & (pts <= extent - 60).all(1)
    return pts[keep], diam, pitch, basis


def bins_over(spots: np.ndarray, side: float, reach: float, extent: float = 1000.0) -> np.ndarray:
    xs = np.arange(side / 2, extent, side)
    b = np.array([(x, y) for y in xs for x in xs])
    d, _ = cKDTree(spots).query(b)
    return b[d <= reach]


def pseudo_spots(spots: np.ndarray, basis: np.ndarray, pitch: float) -> np.ndarray:
    ab = np.array([(a, b) for a in range(-80, 80) for b in range(-80, 80)])
    pts = spots[0] + ab @ basis / 2
    d, _ = cKDTree(spots).query(pts)
    return pts[d <= pitch * (1 + 1e-9)]


def texture(xy: np.ndarray, n_genes: int, seed: int = 0) -> np.ndarray:
    """A positive, stationary, cell-scale pattern per gene."""
    rng = np.random.default_rng(seed)
    fx, fy = rng.uniform(1 / 30, 1 / 12, (2, n_genes))
    ph = rng.uniform(0, 2 * np.pi, (2, n_genes))
    return 1.0 + 0.6 * np.cos(2 * np.pi * xy[:, :1] * fx + ph[0]) * np.cos(2 * np.pi * xy[:, 1:] * fy + ph[1])


def smooth(xy: np.ndarray, n_genes: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = rng.normal(0, 2 * np.pi / 600, (n_genes, 2))
    return 1.2 + np.cos(xy @ k.T + rng.uniform(0, 2 * np.pi, n_genes))


def measurements(n_spots: int, n_genes: int, seed: int = 0, zeros: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 1.0, (n_spots, n_genes)) * (rng.random((n_spots, n_genes)) >= zeros)


def pooled_error(res, m: np.ndarray) -> float:
    pooled = res.overlap @ res.values
    return float((np.abs(pooled - m) / np.where(m > 0, m, m.mean(0))).max())


# --- geometry -----------------------------------------------------------------------------------------


def test_overlap_areas_match_supersampling():
    rng = np.random.default_rng(0)
    r = 27.5
    for side in (8.0, 25.0, 60.0):
        dx, dy = rng.uniform(-45, 45, (2, 60))
        exact = circle_square_area(dx, dy, r, side)
        g = (np.arange(600) + 0.5) / 600 * side - side / 2
        X, Y = np.meshgrid(g, g)
        ref = np.array([((X + a) ** 2 + (Y + b) ** 2 <= r * r).mean() * side**2 for a, b in zip(dx, dy, strict=True)])
        np.testing.assert_allclose(exact, ref, atol=2e-3 * side * r)
    assert circle_square_area(np.zeros(1), np.zeros(1), r, 200.0)[0] == pytest.approx(np.pi * r * r)
    assert circle_square_area(np.zeros(1), np.zeros(1), r, 8.0)[0] == pytest.approx(64.0)
    d = rng.uniform(0, 45, 60)
    g = (np.arange(800) + 0.5) / 800 * 2 * 13.75 - 13.75
    X, Y = np.meshgrid(g, g)
    inside = X**2 + Y**2 <= 13.75**2
    ref = np.array([(inside & ((X + t) ** 2 + Y**2 <= r * r)).sum() * (g[1] - g[0]) ** 2 for t in d])
    np.testing.assert_allclose(circle_circle_area(d, r, 13.75), ref, atol=0.5)


def test_kernel_is_a_continuous_partition_of_unity_reproducing_linear_fields():
    spots, _, pitch, _ = lattice("visium")
    pts = np.random.default_rng(0).uniform(200, 800, (2000, 2))
    phi = correction_kernel(pts, spots, 0.35 * pitch)
    np.testing.assert_allclose(np.asarray(phi.sum(1)).ravel(), 1.0, atol=1e-9)
    lin = 0.3 + spots @ [0.002, -0.001]
    np.testing.assert_allclose(phi @ lin, 0.3 + pts @ [0.002, -0.001], atol=0.01)  # up to the slope ridge
    # no jump where the set of nearest spots changes: a fine line of points gives small increments
    line = np.column_stack([np.linspace(200, 800, 6001), np.full(6001, 433.0)])
    vals = correction_kernel(line, spots, 0.35 * pitch) @ np.random.default_rng(1).random(len(spots))
    assert np.abs(np.diff(vals)).max() < 0.01


# --- exactness ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "grid", "size"),
    [
        ("visium", "bin", 8.0),
        ("visium", "bin", 25.0),
        ("st", "bin", 8.0),
        ("st", "bin", 25.0),
        ("visium", "ps4", 0.5),
        ("st", "ps4", 0.5),
        ("visium", "ps4", 1.0),
        ("st", "ps4", 1.0),
    ],
)
def test_pooling_the_grid_gives_the_measured_spots(layout, grid, size):
    spots, diam, pitch, basis = lattice(layout)
    if grid == "bin":
        regions, kind, size_um = bins_over(spots, size, pitch), "square", size
    else:  # pseudo-spots at half the spacing, of half (make_grid's ps4) or the full spot diameter
        regions, kind, size_um = pseudo_spots(spots, basis, pitch), "circle", size * diam
    n_genes = 6
    pred = texture(regions, n_genes) * smooth(regions, n_genes)
    m = measurements(len(spots), n_genes)
    res = condition_on_spots(
        pred, regions, spots, m, region_kind=kind, region_size_um=size_um, spot_diameter_um=diam, std=0.2 * pred
    )
    assert res.constrained.all()
    assert res.max_rel_error <= 1e-4
    assert pooled_error(res, m) <= 1e-4
    assert res.values.min() >= 0.0
    assert np.all(res.std >= 0)
    # spots measured at zero: every region overlapping them is zero
    touched = (res.overlap[(m[:, 0] == 0)] > 0).sum(0).A.ravel() > 0
    assert np.all(res.values[touched, 0] == 0.0)
    json.dumps(res.summary())


def test_overlap_rows_are_exact_disk_areas():
    from stpredict.pp._condition_core import overlap_matrix

    for layout in ("visium", "st"):
        spots, diam, pitch, _ = lattice(layout)
        for side in (8.0, 25.0):
            b = bins_over(spots, side, pitch)
            a = overlap_matrix(spots, diam, b, "square", side)
            np.testing.assert_allclose(np.asarray(a.sum(1)).ravel(), np.pi * diam**2 / 4, rtol=1e-9)


@pytest.mark.parametrize("layout", ["visium", "st"])
@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_pseudospot_at_a_measured_spot_takes_its_value(layout, fraction):
    spots, diam, pitch, basis = lattice(layout)
    ps = pseudo_spots(spots, basis, pitch)
    pred = texture(ps, 4) * smooth(ps, 4)
    m = measurements(len(spots), 4, seed=3)
    res = condition_on_spots(
        pred, ps, spots, m, region_kind="circle", region_size_um=fraction * diam, spot_diameter_um=diam
    )
    d, at = cKDTree(ps).query(spots)
    assert d.max() < 1e-6
    np.testing.assert_allclose(res.values[at], m, rtol=1e-4, atol=1e-4 * m.mean())


# --- continuity -----------------------------------------------------------------------------------------


def steps_at_borders(res, values: np.ndarray, nx: int, ok: np.ndarray | None = None) -> tuple[float, float]:
    """Mean |step| between 4-neighbour bins inside one spot, and across a spot border (one bin in, one out)."""
    cov = res.coverage.copy()
    if ok is not None:
        cov[~ok] = np.nan
    cov = cov.reshape(nx, nx)
    owner = np.asarray(sp.csc_matrix(res.overlap).argmax(0)).ravel().reshape(nx, nx)
    v = (values / np.maximum(values.mean(0), 1e-12)).reshape(nx, nx, -1)
    inside, border = [], []
    for a, b, ca, cb, oa, ob in [
        (v[:, :-1], v[:, 1:], cov[:, :-1], cov[:, 1:], owner[:, :-1], owner[:, 1:]),
        (v[:-1], v[1:], cov[:-1], cov[1:], owner[:-1], owner[1:]),
    ]:
        step = np.abs(a - b).mean(-1)
        inside.append(step[(ca >= 1 - 1e-9) & (cb >= 1 - 1e-9) & (oa == ob)])
        border.append(step[((ca > 0) & (cb == 0)) | ((ca == 0) & (cb > 0))])
    return float(np.concatenate(inside).mean()), float(np.concatenate(border).mean())


def full_bins(extent: float, side: float) -> tuple[np.ndarray, int]:
    nx = int(extent // side)
    xs = (np.arange(nx) + 0.5) * side
    return np.array([(x, y) for y in xs for x in xs]), nx


@pytest.mark.parametrize("layout", ["visium", "st"])
def test_no_seams_at_spot_borders(layout):
    # a cell-scale texture the image sees, times a smooth field it does not: conditioning must bring the field
    spots, diam, pitch, _ = lattice(layout)
    b, nx = full_bins(1000.0, 8.0)
    n_genes = 12
    tex = texture(b, n_genes)
    truth = tex * smooth(b, n_genes)
    kw = {"region_kind": "square", "region_size_um": 8.0, "spot_diameter_um": diam}
    w = condition_on_spots(tex, b, spots, np.ones((len(spots), n_genes)), gate=1.0, **kw).overlap
    m = (w @ truth) * np.random.default_rng(0).lognormal(0, 0.1, (len(spots), n_genes))
    # the texture averages out over a spot, so the gate (which sees spots, not bins) cannot vouch for it: fix w
    res = condition_on_spots(tex, b, spots, m, gate=1.0, **kw)
    inside, border = steps_at_borders(res, res.values, nx)
    inside0, border0 = steps_at_borders(res, truth, nx)  # the field's own ratio: 1 up to sampling (±5 %)
    assert border <= inside * max(1.0, border0 / inside0 + 0.02)
    # the consistent interpolation (w = 0) is smooth across borders too
    flat = condition_on_spots(tex, b, spots, m, gate=0.0, **kw)
    inside_f, border_f = steps_at_borders(flat, flat.values, nx)
    assert border_f <= 1.2 * inside_f
    # the metric detects a seam: rescaling each spot's bins by its ratio, gaps untouched
    ratio = m / (res.overlap @ tex)
    share = sp.csr_matrix(res.overlap.T)
    covered = np.asarray(share.sum(1)).ravel() > 0
    factor = np.ones_like(tex)
    factor[covered] = np.exp((sp.diags(1 / np.asarray(share.sum(1)).ravel()[covered]) @ share[covered]) @ np.log(ratio))
    inside_s, border_s = steps_at_borders(res, tex * factor, nx)
    assert border_s > 1.3 * inside_s


def test_no_seams_on_a_synthetic_slide():
    from stpredict.datasets import SyntheticParams, SyntheticTissue

    p = SyntheticParams(image_size=(1000, 1000), layout="visium", n_genes=5, seed=0)
    t = SyntheticTissue(p)
    spots, _ = t.spot_layout()
    m = np.random.default_rng(1).poisson(p.depth * t.mean_rates(spots, 55.0)) / p.depth
    b, nx = full_bins(1000.0, 8.0)
    truth = t.mean_rates(b, 8.0, "square")
    ok = truth.sum(1) > 0
    res = condition_on_spots(truth, b, spots, m, region_kind="square", region_size_um=8.0, spot_diameter_um=55.0)
    assert res.max_rel_error <= 1e-4
    inside, border = steps_at_borders(res, res.values, nx, ok)
    inside0, border0 = steps_at_borders(res, truth, nx, ok)  # the slide's own border/inside ratio (~1.02)
    assert border <= inside * max(1.0, border0 / inside0 + 0.05)


# --- gate -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_25um():
    from stpredict.datasets import SyntheticParams, SyntheticTissue

    p = SyntheticParams(image_size=(2000, 2000), layout="visium", n_genes=8, seed=2, depth=100.0)
    t = SyntheticTissue(p)
    spots, _ = t.spot_layout()
    rng = np.random.default_rng(0)
    m = rng.poisson(p.depth * t.mean_rates(spots, 55.0)) / p.depth
    b = bins_over(spots, 25.0, 100.0, 2000.0)
    truth = t.mean_rates(b, 25.0, "square")
    return spots, m, b, truth


def pcc_log(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.log1p(a), np.log1p(b)
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def test_gate_keeps_a_true_pattern_and_drops_noise(synthetic_25um):
    spots, m, b, truth = synthetic_25um
    kw = {"region_kind": "square", "region_size_um": 25.0, "spot_diameter_um": 55.0}
    ok = truth.sum(1) > 0
    interp = condition_on_spots(truth, b, spots, m, gate=0.0, **kw)
    good = condition_on_spots(truth, b, spots, m, **kw)
    assert np.median(good.weights) >= 0.9
    assert good.weights.min() >= 0.5
    assert np.mean(pcc_log(good.values[ok], truth[ok])) > np.mean(pcc_log(interp.values[ok], truth[ok])) + 0.1
    noise = np.random.default_rng(5).gamma(1.0, 1.0, truth.shape) * truth.mean(0)
    bad = condition_on_spots(noise, b, spots, m, **kw)
    assert bad.weights.mean() <= 0.1
    assert np.all(bad.weights <= 0.3)
    # w ≈ 0 gives (about) the consistent interpolation
    close = np.median(pcc_log(bad.values[ok], interp.values[ok]))
    assert close > 0.95
    assert set(bad.gate) >= {"slope", "t2", "pcc_image", "pcc_flat", "n_blocks"}


def test_fixed_gate_and_interpolation_are_exact(synthetic_25um):
    spots, m, b, truth = synthetic_25um
    kw = {"region_kind": "square", "region_size_um": 25.0, "spot_diameter_um": 55.0}
    for gate in (0.0, 0.5, np.linspace(0, 1, m.shape[1])):
        res = condition_on_spots(truth, b, spots, m, gate=gate, **kw)
        assert res.max_rel_error <= 1e-4
        np.testing.assert_allclose(res.weights, np.broadcast_to(gate, (m.shape[1],)))
        assert res.gate == {}


# --- std, inputs ----------------------------------------------------------------------------------------


def test_std_is_carried_and_shrunk_where_measured():
    spots, diam, pitch, basis = lattice("visium")
    ps = pseudo_spots(spots, basis, pitch)
    pred = texture(ps, 3) * smooth(ps, 3)
    m = measurements(len(spots), 3, zeros=0.0)
    res = condition_on_spots(
        pred, ps, spots, m, region_kind="circle", region_size_um=diam, spot_diameter_um=diam, std=0.3 * pred, gate=1.0
    )
    gap = res.coverage == 0
    assert gap.any()
    # same multiplicative correction as the values where no spot pins the region down ...
    np.testing.assert_allclose(res.std[gap], 0.3 * res.values[gap], rtol=1e-9)
    # ... zero where the region is the measured spot, never more than the scaled std elsewhere
    _, at = cKDTree(ps).query(spots)
    np.testing.assert_allclose(res.std[at], 0.0, atol=1e-12)
    assert np.all(res.std <= 0.3 * res.values * (1 + 1e-9))
    res2 = condition_on_spots(
        pred, ps, spots, m, region_kind="circle", region_size_um=diam, spot_diameter_um=diam, gate=1.0
    )
    assert res2.std is None


def test_bad_input_is_refused():
    spots, diam, pitch, _ = lattice("visium")
    b = bins_over(spots, 25.0, pitch)
    pred = texture(b, 3)
    m = measurements(len(spots), 3)
    kw = {"region_kind": "square", "region_size_um": 25.0, "spot_diameter_um": diam}
    bad = m.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        condition_on_spots(pred, b, spots, bad, **kw)
    bad[0, 0] = -1.0
    with pytest.raises(ValueError, match="negative"):
        condition_on_spots(pred, b, spots, bad, **kw)
    with pytest.raises(ValueError, match="negative"):
        condition_on_spots(-pred, b, spots, m, **kw)
    with pytest.raises(ValueError, match="shape"):
        condition_on_spots(pred[:, :2], b, spots, m, **kw)
    with pytest.raises(ValueError, match="shape"):
        condition_on_spots(pred, b[:-1], spots, m, **kw)
    with pytest.raises(ValueError, match="shape"):
        condition_on_spots(pred, b, spots, m, std=pred[:-1], **kw)
    with pytest.raises(ValueError, match="overlaps any"):
        condition_on_spots(pred, b + 1e5, spots, m, **kw)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        condition_on_spots(pred, b, spots, m, gate=1.5, **kw)
    with pytest.raises(ValueError, match="region_kind"):
        condition_on_spots(pred, b, spots, m, region_kind="hexagon", region_size_um=25.0, spot_diameter_um=diam)
    with pytest.raises(ValueError, match=r"degree weights must lie in \[0, 1\]"):
        condition_on_spots(pred, b, spots, m, degree=-0.5, **kw)
    with pytest.raises(ValueError, match="degree must be 'learn'"):
        condition_on_spots(pred, b, spots, m, degree="cubic", **kw)


# --- degree of the correction kernel ----------------------------------------------------------------------


def test_degree_is_learned_from_how_smooth_the_slide_is():
    """A field smooth across spots keeps the linear kernel; one that changes at the spot scale gets flatter."""
    spots, diam, pitch, _ = lattice("visium", 1500.0)
    b = bins_over(spots, 16.0, pitch, 1500.0)
    n_genes = 6
    kw = {"region_kind": "square", "region_size_um": 16.0, "spot_diameter_um": diam, "gate": 0.0}
    flat = np.ones((len(b), n_genes))
    w = condition_on_spots(flat, b, spots, np.ones((len(spots), n_genes)), degree=1, **kw).overlap
    smooth_truth = smooth(b, n_genes)
    res = condition_on_spots(flat, b, spots, w @ smooth_truth, **kw)
    assert (res.degree_weights > 0.9).all()
    # each spot its own level (independent between spots), constant over the regions it covers
    _, near = cKDTree(spots).query(b)
    levels = np.random.default_rng(3).gamma(2.0, 1.0, (len(spots), n_genes))
    patchy = levels[near]
    m = w @ patchy
    learned = condition_on_spots(flat, b, spots, m, **kw)
    linear = condition_on_spots(flat, b, spots, m, degree=1, **kw)
    assert np.median(learned.degree_weights) < 0.5
    assert learned.degree_info["n_blocks"] > 0
    # both exact; the learned blend is nearer the truth
    for r in (learned, linear):
        np.testing.assert_allclose(r.overlap @ r.values, m, rtol=1e-4)
    err = [np.abs(np.log1p(r.values) - np.log1p(patchy)).mean() for r in (learned, linear)]
    assert err[0] < err[1]
    rec = learned.summary()
    assert len(rec["degree_weights"]) == n_genes
    assert 0.0 <= rec["degree_weight_median"] <= 1.0
    # a fixed blend is exact too, and 0/1 give the pure kernels
    half = condition_on_spots(flat, b, spots, m, degree=0.5, **kw)
    shepard = condition_on_spots(flat, b, spots, m, degree=0, **kw)
    np.testing.assert_allclose(half.values, 0.5 * (linear.values + shepard.values), rtol=1e-6, atol=1e-9)


def test_condition_grid_on_a_synthetic_slide():
    import stpredict as stp
    from stpredict.pp import condition_grid, make_grid

    sdata = stp.datasets.synthetic(image_size=768, n_genes=4, seed=0)
    geo = stp.pp.spots(sdata)
    grid = make_grid(geo, "ps4")
    counts = np.asarray(
        sdata.tables["table"].X.todense() if sp.issparse(sdata.tables["table"].X) else sdata.tables["table"].X
    )
    lin = counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4
    pred = texture(geo.px_to_um(grid.centers), 4) * 10.0
    res = condition_grid(pred, grid, geo, lin[geo.rows])
    assert res.max_rel_error <= 1e-4
    np.testing.assert_allclose(res.values[grid.measured], lin[geo.rows][grid.nearest_spot[grid.measured]], rtol=1e-4,
                               atol=1e-6)  # fmt: skip


def test_precomputed_overlap_for_pooled_blocks():
    # the pooled 2×2 protocol: regions are the original spots, "spots" the blocks at their centroids
    from stpredict.pp import fit_lattice

    spots, diam, pitch, _ = lattice("visium")
    lab = np.unique(np.floor_divide(fit_lattice(spots).coords, 2), axis=0, return_inverse=True)[1].ravel()
    nb = int(lab.max()) + 1
    memb = sp.csr_matrix((np.ones(len(spots)), (lab, np.arange(len(spots)))), shape=(nb, len(spots)))
    cnt = np.bincount(lab)[:, None]
    m = measurements(len(spots), 4, seed=2)
    pooled = (memb @ m) / cnt
    cent = (memb @ spots) / cnt
    pred = texture(spots, 4) * smooth(spots, 4)
    res = condition_on_spots(
        pred, spots, cent, pooled, region_kind="circle", region_size_um=diam, spot_diameter_um=diam,
        overlap=memb, pitch_um=2 * pitch, gate=1.0,
    )  # fmt: skip
    np.testing.assert_allclose((memb @ res.values) / cnt, pooled, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="overlap must be"):
        condition_on_spots(
            pred, spots, cent, pooled, region_kind="circle", region_size_um=diam, spot_diameter_um=diam,
            overlap=memb[:, :-1],
        )  # fmt: skip
