"""``stp.pl``: score distributions per method, measured vs predicted maps, super-resolved grids."""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import stpredict as stp


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def _points(ax) -> list[np.ndarray]:
    """y values of the strip (scatter) of each method, left to right."""
    return [np.asarray(c.get_offsets())[:, 1] for c in ax.collections]


def _synthetic(*, n_genes: int, levels: str):
    """A 768 px synthetic slide with the coarsest (or every) pyramid level rendered once, in memory."""
    from stpredict._image import replace_levels

    sdata = stp.datasets.synthetic(image_size=768, n_genes=n_genes, seed=0)
    tree = sdata.images["he"]
    names = list(tree.children) if levels == "all" else list(tree.children)[-1:]
    arrays = {n: np.asarray(next(iter(tree[n].ds.data_vars.values())).data.compute()) for n in names}
    replace_levels(tree, arrays, chunks=512)
    return sdata


def _has_zero_line(ax) -> bool:
    return any(np.allclose(line.get_ydata(), 0.0) and len(line.get_ydata()) == 2 for line in ax.lines)


# -------------------------------------------------------------------------------------------------
# score_distributions
# -------------------------------------------------------------------------------------------------
def test_score_distributions_arrays_nan_dropped_and_counted():
    a = np.array([0.2, 0.5, np.nan, 0.4])
    b = [0.1, -0.3, 0.0]
    fig = stp.pl.score_distributions({"zeta": a, "alpha": b}, title="PCC per gene")
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    # methods in the order given, not sorted; NaN genes dropped and counted
    assert _labels(ax) == ["zeta\n3 genes, 1 NaN", "alpha\n3 genes"]
    pts = _points(ax)
    assert len(pts) == 2
    np.testing.assert_allclose(np.sort(pts[0]), [0.2, 0.4, 0.5])
    np.testing.assert_allclose(np.sort(pts[1]), [-0.3, 0.0, 0.1])
    assert _has_zero_line(ax)
    assert ax.get_ylabel() == "pearson"
    assert ax.get_title() == "PCC per gene"


def test_score_distributions_tables():
    rng = np.random.default_rng(0)
    t = rng.gamma(2.0, 1.0, size=(30, 5))
    t[:, 4] = 1.0  # constant truth: NaN correlation
    table = stp.metrics.score_table(t, t + rng.normal(0, 1, t.shape))
    series = table["spearman"]
    fig = stp.pl.score_distributions({"table": table, "series": series}, metric="spearman")
    ax = fig.axes[0]
    assert _labels(ax) == ["table\n4 genes, 1 NaN", "series\n4 genes, 1 NaN"]
    np.testing.assert_allclose(np.sort(_points(ax)[0]), np.sort(series.dropna().to_numpy()))
    assert ax.get_ylabel() == "spearman"
    # a metric where nothing is NaN
    fig = stp.pl.score_distributions({"table": table}, metric="mse")
    assert _labels(fig.axes[0]) == ["table\n5 genes"]


def test_score_distributions_cv_results_and_evaluate():
    sdata = _synthetic(n_genes=6, levels="coarsest")
    kw = {"protocol": "hide", "fraction": 0.5, "progress": False}
    results = {
        "neighbors": stp.tl.cross_validate(sdata, "neighbors", **kw),
        "mean": stp.tl.cross_validate(sdata, "mean", **kw),
    }
    fig, ax = plt.subplots()
    out = stp.pl.score_distributions(results, ax=ax)
    assert out is fig
    assert len(fig.axes) == 1
    n = [int(results[k].scores["pearson"].notna().sum()) for k in results]
    assert [lab.split("\n")[0] for lab in _labels(ax)] == ["neighbors", "mean"]
    assert [len(p) for p in _points(ax)] == n
    # the mean baseline predicts a constant: every gene scores 0
    np.testing.assert_array_equal(_points(ax)[1], 0.0)
    # an evaluate() table (one row per gene)
    X = sdata.tables["table"].X.toarray().astype(float)
    sdata.tables["table"].layers["predicted"] = np.log1p(X / X.sum(1, keepdims=True) * 1e4).astype(np.float32)
    scores = stp.tl.evaluate(sdata)
    fig = stp.pl.score_distributions({"in-sample": scores})
    assert [len(p) for p in _points(fig.axes[0])] == [int(scores["pearson"].notna().sum())]
    np.testing.assert_allclose(_points(fig.axes[0])[0], 1.0, atol=1e-5)


def test_score_distributions_all_nan_method():
    fig = stp.pl.score_distributions({"empty": [np.nan, np.nan], "ok": [0.5, 0.6]})
    ax = fig.axes[0]
    assert _labels(ax) == ["empty\n0 genes, 2 NaN", "ok\n2 genes"]
    assert len(_points(ax)) == 1


def test_score_distributions_errors():
    with pytest.raises(ValueError, match="empty"):
        stp.pl.score_distributions({})
    with pytest.raises(KeyError, match="no column 'ssim'"):
        stp.pl.score_distributions({"a": pd.DataFrame({"pearson": [0.1, 0.2]})}, metric="ssim")
    with pytest.raises(TypeError, match="CVResult"):
        stp.pl.score_distributions({"a": 0.3})
    with pytest.raises(ValueError, match="1-d"):
        stp.pl.score_distributions({"a": np.zeros((3, 2))})


# -------------------------------------------------------------------------------------------------
# maps over the H&E
# -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def predicted():
    """A synthetic slide with ridge predictions at the spots and on the ps4 grid (image rendered once)."""
    sdata = _synthetic(n_genes=4, levels="all")
    stp.tl.predict(sdata, "ridge", progress=False)
    stp.tl.superresolve(sdata, "ridge", grid="ps4", progress=False)
    return sdata


@pytest.mark.slow
def test_predicted_vs_measured(predicted):
    fig = stp.pl.predicted_vs_measured(predicted, ["gene_0", "gene_2"])
    # measured and predicted panel per gene, and one colour bar per gene
    assert len(fig.axes) == 2 * 2 + 2
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == ["gene_0 measured", "gene_0 predicted", "gene_2 measured", "gene_2 predicted"]
    fig = stp.pl.predicted_vs_measured(predicted, ["gene_1"], grid_table="ridge_spots_ps4")
    assert len(fig.axes) == 3 + 1
    assert fig.axes[2].get_title() == "gene_1 ridge_spots_ps4"


@pytest.mark.slow
def test_grid_values(predicted):
    table = predicted.tables["ridge_spots_ps4"]
    fig = stp.pl.grid_values(predicted, "ridge_spots_ps4", "gene_3")
    assert len(fig.axes) == 2  # the map and its colour bar
    assert fig.axes[0].get_title() == "ridge_spots_ps4: gene_3"
    # spatialdata-plot draws every shape the table annotates, coloured by the table's values
    (shapes,) = fig.axes[0].collections
    assert len(shapes.get_paths()) == table.n_obs
    values = np.asarray(table[:, "gene_3"].X).ravel()
    expected = mpl.colormaps["viridis"](mpl.colors.Normalize(values.min(), values.max())(values))
    np.testing.assert_allclose(shapes.get_facecolors()[:, :3], expected[:, :3], atol=1e-6)
    # a categorical obs column: a legend instead of a colour bar, into given axes
    table.obs["half"] = pd.Categorical(np.where(np.arange(table.n_obs) % 2, "a", "b"))
    fig, ax = plt.subplots()
    out = stp.pl.grid_values(predicted, "ridge_spots_ps4", "half", ax=ax, title="halves")
    assert out is fig
    assert len(fig.axes) == 1
    assert ax.get_title() == "halves"
    assert ax.get_legend() is not None
    with pytest.raises(KeyError, match="neither a gene nor an obs column"):
        stp.pl.grid_values(predicted, "ridge_spots_ps4", "no_such_gene")
