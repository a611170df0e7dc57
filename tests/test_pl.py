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


def _inside_figure(fig) -> None:
    """After a plain ``savefig``, everything drawn (titles, tick and axis labels, colour bar labels, legends)
    lies inside the figure: nothing is cut off."""
    import io

    fig.savefig(io.BytesIO(), format="png")
    renderer = fig.canvas.get_renderer()
    tight = fig.get_tightbbox(renderer)  # inches, of the artists actually drawn
    w, h = fig.get_size_inches()
    tol = 0.02
    assert tight.x0 >= -tol and tight.y0 >= -tol, (tight, (w, h))
    assert tight.x1 <= w + tol and tight.y1 <= h + tol, (tight, (w, h))
    labels = [a.xaxis.label for a in fig.axes] + [a.yaxis.label for a in fig.axes] + [a.title for a in fig.axes]
    for t in (t for t in labels if t.get_visible() and t.get_text()):
        e = t.get_window_extent(renderer)
        assert fig.bbox.x0 - 1 <= e.x0 and e.x1 <= fig.bbox.x1 + 1, t.get_text()
        assert fig.bbox.y0 - 1 <= e.y0 and e.y1 <= fig.bbox.y1 + 1, t.get_text()
    # no title runs into another panel's title
    titles = [a.title for a in fig.axes if a.title.get_visible() and a.title.get_text()]
    boxes = [t.get_window_extent(renderer) for t in titles]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (titles[i].get_text(), titles[j].get_text())


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
    assert ax.get_ylabel() == "Pearson r per gene"
    assert ax.get_xlabel() == "method"
    assert ax.get_title() == "PCC per gene"
    _inside_figure(fig)


def test_score_distributions_default_title_and_labels():
    fig = stp.pl.score_distributions({"a": [0.1, 0.2], "b": [0.3, 0.4]}, metric="mse")
    ax = fig.axes[0]
    assert ax.get_title() == "Per-gene MSE of 2 methods"
    assert ax.get_ylabel() == "MSE per gene"
    assert ax.get_xlabel() == "method"
    _inside_figure(fig)


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
    assert ax.get_ylabel() == "Spearman ρ per gene"
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
def _measured(sdata):
    """log1p(counts per 10k) of the spots table, the scale of the measured panels."""
    X = sdata.tables["table"].X.toarray().astype(float)
    return np.log1p(X / X.sum(1, keepdims=True) * 1e4)


@pytest.fixture
def hand_predicted():
    """A synthetic slide whose "predictions" are written by hand: gene_g is predicted as measured + g."""
    sdata = _synthetic(n_genes=4, levels="coarsest")
    table = sdata.tables["table"]
    pred = (_measured(sdata) + np.arange(4)).astype(np.float32)
    pred[:, 3] = np.nan  # gene_3 is not in the predicted panel
    table.layers["predicted"] = pred
    table.var["predicted"] = [True, True, True, False]
    return sdata


def _values(ax) -> np.ndarray:
    (coll,) = ax.collections
    return np.asarray(coll.get_array(), dtype=float)


def test_predicted_vs_measured_refuses_unknown_gene(hand_predicted):
    """A gene not in the table used to draw another gene's counts (get_indexer's -1 is the last gene)."""
    with pytest.raises(KeyError, match=r"'gene_9'.*did you mean 'gene_\d'"):
        stp.pl.predicted_vs_measured(hand_predicted, ["gene_0", "gene_9"])
    with pytest.raises(KeyError, match="'Pcp4'"):
        stp.pl.predicted_vs_measured(hand_predicted, "Pcp4")
    assert not plt.get_fignums()  # refused before drawing anything
    # a measured gene the model did not predict (NaN layer): refused, not drawn blank
    with pytest.raises(KeyError, match="Not predicted.*'gene_3'"):
        stp.pl.predicted_vs_measured(hand_predicted, ["gene_3"])


def test_predicted_vs_measured_before_predict():
    sdata = _synthetic(n_genes=3, levels="coarsest")
    with pytest.raises(KeyError, match=r"no predictions in layer 'predicted'.*stp\.tl\.predict"):
        stp.pl.predicted_vs_measured(sdata, ["gene_0"])


def test_predicted_vs_measured_draws_the_asked_gene(hand_predicted):
    table = hand_predicted.tables["table"]
    table.var["gene_symbol"] = ["Aldoc", "Pcp4", "Gfap", "Mbp"]
    measured = _measured(hand_predicted)
    # by symbol, case-insensitively, and by var_name: each panel shows that gene's values
    fig = stp.pl.predicted_vs_measured(hand_predicted, ["pcp4", "gene_2"])
    axes = fig.axes
    assert [ax.get_title() for ax in axes[:4]] == ["Pcp4 measured", "Pcp4 predicted", "Gfap measured", "Gfap predicted"]
    np.testing.assert_allclose(_values(axes[0]), measured[:, 1], rtol=1e-5)
    np.testing.assert_allclose(_values(axes[1]), measured[:, 1] + 1, rtol=1e-5)
    np.testing.assert_allclose(_values(axes[2]), measured[:, 2], rtol=1e-5)
    np.testing.assert_allclose(_values(axes[3]), measured[:, 2] + 2, rtol=1e-5)
    # spatial axes in µm on the outer panels, a labelled colour bar per gene, nothing cut by a plain savefig
    assert axes[0].get_ylabel() == "y (µm)"
    assert axes[2].get_xlabel() == "x (µm)"
    assert axes[1].get_ylabel() == ""
    bars = axes[4:]
    assert [b.get_ylabel() for b in bars] == ["log1p(counts per 10k)"] * 2
    assert fig.get_layout_engine() is not None
    _inside_figure(fig)


def test_natural_order():
    from stpredict.pl._maps import natural_sorted

    assert natural_sorted(["10", "2", "1", "0", "11", "2"]) == ["0", "1", "2", "10", "11"]
    assert natural_sorted(["a10", "b2", "a2", "B1"]) == ["a2", "a10", "B1", "b2"]


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
    np.testing.assert_allclose(_values(fig.axes[1]), predicted.tables["table"].layers["predicted"][:, 0], rtol=1e-6)
    # a conditioned grid: its map and, beside it, the same call's image-only prediction, one colour scale
    fig = stp.pl.predicted_vs_measured(predicted, ["gene_1"], grid_table="ridge_spots_ps4")
    assert len(fig.axes) == 4 + 1
    assert fig.axes[2].get_title() == "gene_1\nridge_spots_ps4 (conditioned)"
    assert fig.axes[3].get_title() == "gene_1\nridge_spots_ps4 (image only)"
    grid = predicted.tables["ridge_spots_ps4"]
    np.testing.assert_allclose(_values(fig.axes[2]), np.asarray(grid[:, "gene_1"].X).ravel(), rtol=1e-6)
    np.testing.assert_allclose(_values(fig.axes[3]), grid[:, "gene_1"].layers["image_only"].ravel(), rtol=1e-6)
    assert fig.axes[2].collections[0].get_clim() == fig.axes[3].collections[0].get_clim()
    _inside_figure(fig)
    fig = stp.pl.predicted_vs_measured(predicted, ["gene_1"], grid_table="ridge_spots_ps4", image_only=False)
    assert len(fig.axes) == 3 + 1
    plain = predicted.tables["ridge_spots_ps4"].copy()
    del plain.layers["image_only"]
    predicted.tables["plain_grid"] = plain
    with pytest.raises(KeyError, match="image_only=False"):
        stp.pl.predicted_vs_measured(predicted, ["gene_1"], grid_table="plain_grid", image_only=True)
    fig = stp.pl.predicted_vs_measured(predicted, ["gene_1"], grid_table="plain_grid")
    assert len(fig.axes) == 3 + 1
    assert fig.axes[2].get_title() == "gene_1\nplain_grid"
    del predicted.tables["plain_grid"]


@pytest.mark.slow
def test_grid_values(predicted):
    table = predicted.tables["ridge_spots_ps4"]
    fig = stp.pl.grid_values(predicted, "ridge_spots_ps4", "gene_3")
    assert len(fig.axes) == 2  # the map and its colour bar
    assert fig.axes[0].get_title() == "ridge_spots_ps4: gene_3"
    assert fig.axes[0].get_xlabel() == "x (global)"
    assert fig.axes[0].get_ylabel() == "y (global)"
    assert fig.axes[1].get_ylabel() == "gene_3, log1p(counts per 10k)"
    _inside_figure(fig)
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
    # domains appearing in any order: the legend lists them 0, 1, 2, …, 10, 11 and survives a plain savefig
    rng = np.random.default_rng(0)
    table.obs["domain"] = pd.Categorical(rng.permutation(np.arange(table.n_obs) % 12).astype(str))
    fig = stp.pl.grid_values(predicted, "ridge_spots_ps4", "domain")
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [str(i) for i in range(12)]
    # each entry keeps its colour: the shapes of domain "10" are drawn in the colour of legend entry "10"
    (shapes,) = fig.axes[0].collections[:1]
    faces = shapes.get_facecolors()[:, :3]
    handle = dict(zip([t.get_text() for t in legend.get_texts()], legend.legend_handles, strict=True))["10"]
    sel = (table.obs["domain"] == "10").to_numpy()
    np.testing.assert_allclose(faces[sel], np.broadcast_to(handle.get_facecolor()[0][:3], faces[sel].shape), atol=1e-6)
    _inside_figure(fig)
    # genes by a symbol column
    table.var["gene_symbol"] = [f"Sym{i}" for i in range(table.n_vars)]
    fig = stp.pl.grid_values(predicted, "ridge_spots_ps4", "sym2")
    assert fig.axes[0].get_title() == "ridge_spots_ps4: Sym2"
    with pytest.raises(KeyError, match="neither a gene nor an obs column"):
        stp.pl.grid_values(predicted, "ridge_spots_ps4", "no_such_gene")
