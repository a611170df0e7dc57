"""Measured vs predicted maps (matplotlib) and super-resolved grids (spatialdata-plot) over the H&E."""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING

import numpy as np

from .._genes import display_names, resolve_genes
from .._image import image_levels
from .._keys import LAYER_IMAGE_ONLY, LAYER_PREDICTED
from .._records import read_record
from ..pp._spots import spots as resolve_spots

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.collections import PathCollection
    from matplotlib.figure import Figure
    from spatialdata import SpatialData

__all__ = ["grid_values", "predicted_vs_measured"]


_VALUE_LABEL = "log1p(counts per 10k)"


def _natural_key(label: object) -> list[object]:
    """Sort key putting ``"2"`` before ``"10"`` and ``"a2"`` before ``"a10"`` (numbers compared as numbers)."""
    return [int(t) if t.isdigit() else t.casefold() for t in re.split(r"(\d+)", str(label))]


def natural_sorted(labels: Iterable[object]) -> list[str]:
    """Labels as strings in natural order: 0, 1, 2, …, 10, 11 (not 0, 1, 10, 11, 2)."""
    return sorted({str(c) for c in labels}, key=_natural_key)


def _sort_legend(ax: Axes) -> None:
    """Redraw the axes' categorical legend with its entries in natural order, outside the axes on the right."""
    legend = ax.get_legend()
    if legend is None:
        return
    texts = legend.get_texts()
    labels = [t.get_text() for t in texts]
    artists, names = ax.get_legend_handles_labels()
    handles = dict(zip(names, artists, strict=True))
    if not all(lab in handles for lab in labels):
        handles = dict(zip(labels, legend.legend_handles, strict=True))
    order = sorted(labels, key=_natural_key)
    title = legend.get_title().get_text() or None
    fontsize = texts[0].get_fontsize() if texts else None
    ax.legend(
        [handles[lab] for lab in order],
        order,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        frameon=False,
        ncols=getattr(legend, "_ncols", 1),
        fontsize=fontsize,
        title=title,
    )


def _background(sdata: SpatialData, image_key: str, max_side: int = 1200) -> tuple[np.ndarray, float, float]:
    levels = image_levels(sdata.images[image_key])
    lv = next((lv for lv in levels if max(lv.shape_yx) <= max_side), levels[-1])
    img = np.asarray(lv.array[:3].compute()).transpose(1, 2, 0)
    return img, lv.factor_x, lv.factor_y


def _extent(centers: np.ndarray, pad: float) -> tuple[float, float, float, float]:
    lo, hi = centers.min(0) - pad, centers.max(0) + pad
    return lo[0], hi[0], hi[1], lo[1]


def _um_axes(ax: Axes, microns_per_pixel: float, *, xlabel: bool, ylabel: bool) -> None:
    """Ticks in µm on axes whose data are level-0 pixels, labelled on the outer panels only."""
    from matplotlib.ticker import MaxNLocator

    for lim, set_ticks, set_label, show, name in (
        (ax.get_xlim(), ax.set_xticks, ax.set_xlabel, xlabel, "x (µm)"),
        (ax.get_ylim(), ax.set_yticks, ax.set_ylabel, ylabel, "y (µm)"),
    ):
        lo, hi = sorted(lim)
        ticks = list(MaxNLocator(3).tick_values(lo * microns_per_pixel, hi * microns_per_pixel))
        ticks = [t for t in ticks if lo <= t / microns_per_pixel <= hi]
        set_ticks([t / microns_per_pixel for t in ticks], [f"{t:g}" for t in ticks] if show else [])
        set_label(name if show else "")
    ax.tick_params(labelsize=7, length=2)
    ax.spines[["top", "right"]].set_visible(False)


def _marker_sizes(fig: Figure, panels: Sequence[tuple[Axes, PathCollection, float]]) -> None:
    """Set each scatter's marker size so a region of ``size`` data units is drawn at its size (after layout)."""
    fig.draw_without_rendering()
    for ax, coll, size in panels:
        bbox = ax.get_window_extent()
        x0, x1 = ax.get_xlim()
        pts_per_unit = bbox.width / abs(x1 - x0) * 72.0 / fig.dpi
        coll.set_sizes([(size * pts_per_unit) ** 2])


def _scatter(
    ax: Axes, img, fx, fy, centers, *, values, size_px, title, cmap="viridis", vmin=None, vmax=None, categorical=False
) -> PathCollection | None:
    """Regions over the H&E (marker sizes are set afterwards by :func:`_marker_sizes`)."""
    ax.imshow(img, extent=(0, img.shape[1] * fx, img.shape[0] * fy, 0))
    ax.set_xlim(*_extent(centers, 2 * size_px)[:2])
    ax.set_ylim(*_extent(centers, 2 * size_px)[2:])
    if categorical:
        import matplotlib as mpl

        cats = np.asarray(values).astype(str)
        cm = mpl.colormaps["tab20"]
        for i, c in enumerate(natural_sorted(cats)):
            sel = cats == c
            ax.scatter(*centers[sel].T, s=1.0, color=cm(i % 20), label=c, linewidths=0, marker="s")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False, markerscale=0.5)
        sc = None
    else:
        sc = ax.scatter(*centers.T, c=values, s=1.0, cmap=cmap, vmin=vmin, vmax=vmax, linewidths=0, marker="o")
    ax.set_title(title, fontsize=9)
    return sc


def _column(adata: AnnData, name: str) -> np.ndarray:
    """``X`` of one gene as a dense 1-d array."""
    x = adata[:, name].X
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=float).ravel()


def _prediction_layer(table: AnnData, key: str, table_key: str) -> np.ndarray:
    if key not in table.layers:
        layers = sorted(table.layers)
        msg = (
            f"Table {table_key!r} has no predictions in layer {key!r} (its layers: {layers}). "
            "Run stp.tl.predict(sdata, model=...) first" + (f", or pass key= one of {layers}." if layers else ".")
        )
        raise KeyError(msg)
    return np.asarray(table.layers[key])


def predicted_vs_measured(
    sdata: SpatialData,
    genes: str | Sequence[str],
    *,
    key: str = LAYER_PREDICTED,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
    grid_table: str | None = None,
    image_only: bool | None = None,
    gene_symbols_key: str | None = None,
    figsize_per_panel: float = 3.2,
) -> Figure:
    """Measured vs predicted expression of chosen genes, side by side over the H&E.

    Measured values are log1p of counts normalised to 1e4 (the prediction scale); every panel of a gene shares
    a colour scale. With ``grid_table``, a third panel shows the super-resolved grid (conditioned on the
    measured spots, :func:`stpredict.tl.superresolve`'s default) and a fourth the same grid's image-only
    prediction before that step (``layers["image_only"]``). Axes are in µm.

    Parameters
    ----------
    sdata
        The SpatialData with predictions (:func:`stpredict.tl.predict`).
    genes
        Genes to show (rows of the figure): ``var_names``, Ensembl ids with or without version, or symbols
        from a symbol column of ``var`` (see ``gene_symbols_key``). Titles show symbols where there are some.
    key
        Prediction layer.
    image_key, spots_key, table_key
        Elements (``None``: resolved as everywhere in stpredict).
    grid_table
        A table written by :func:`stpredict.tl.superresolve` to show as a third column.
    image_only
        With ``grid_table``: also show the grid's ``layers["image_only"]`` beside it (``None``: when the grid
        has that layer, i.e. it was conditioned; ``True`` on a grid without it raises ``KeyError``).
    gene_symbols_key
        The ``var`` column of gene symbols (default ``gene_symbol``, then ``gene_symbols``, ``gene_ids``).
    figsize_per_panel
        Inches per panel.

    Returns
    -------
    The matplotlib figure (constrained layout: a plain ``fig.savefig`` keeps every label).

    Raises
    ------
    KeyError
        If a gene is not in the table (with close matches), was not predicted, or the table has no layer
        ``key`` (run :func:`stpredict.tl.predict` first).
    """
    import matplotlib.pyplot as plt

    from ..tl._targets import targets

    geo = resolve_spots(sdata, image_key=image_key, spots_key=spots_key, table_key=table_key)
    table = sdata.tables[geo.table_key]
    names = resolve_genes(table.var, genes, gene_symbols_key=gene_symbols_key, what=f"table {geo.table_key!r}")
    if not names:
        msg = "genes is empty: name at least one gene to plot."
        raise ValueError(msg)
    labels = display_names(table.var, names, gene_symbols_key=gene_symbols_key)
    layer = _prediction_layer(table, key, geo.table_key)
    pred = layer[np.ix_(geo.rows, table.var_names.get_indexer(names))]
    not_predicted = [lab for lab, col in zip(labels, pred.T, strict=True) if not np.isfinite(col).any()]
    if not_predicted:
        msg = (
            f"Not predicted (layer {key!r} is NaN): {', '.join(map(repr, not_predicted))}. Choose genes of the "
            f"predicted panel (var[{key!r}]) or predict these with stp.tl.predict(sdata, model=..., genes=[...])."
        )
        raise KeyError(msg)
    grid = None
    if grid_table:
        if grid_table not in sdata.tables:
            msg = f"No table {grid_table!r}; the tables are {sorted(sdata.tables)}."
            raise KeyError(msg)
        grid = sdata.tables[grid_table]
        in_grid = [n for n in names if n not in grid.var_names]
        if in_grid:
            msg = f"Genes {in_grid} are not in grid table {grid_table!r} (its genes: {len(grid.var_names)})."
            raise KeyError(msg)
        has_layer = LAYER_IMAGE_ONLY in grid.layers
        if image_only and not has_layer:
            msg = (
                f"Grid table {grid_table!r} has no layer {LAYER_IMAGE_ONLY!r}: it was not conditioned on the measured "
                "spots (superresolve(condition='none') writes the image-only prediction as X). Pass image_only=False."
            )
            raise KeyError(msg)
        image_only = has_layer if image_only is None else image_only
    y, _, _ = targets(table, geo.rows, names, None)
    img, fx, fy = _background(sdata, geo.image_key)
    ncol = 2 if grid is None else 3 + bool(image_only)
    fig, axes = plt.subplots(
        len(names),
        ncol,
        figsize=(figsize_per_panel * ncol + 1, figsize_per_panel * len(names)),
        squeeze=False,
        layout="constrained",
    )
    sized = []
    suffix = "" if key == LAYER_PREDICTED else f" ({key})"
    for i, (name, label) in enumerate(zip(names, labels, strict=True)):
        both = np.concatenate([y[:, i], pred[:, i][np.isfinite(pred[:, i])]])
        vmin, vmax = np.percentile(both, [1, 99])
        panels = [(geo.centers, y[:, i], geo.diameter, f"{label} measured")]
        panels.append((geo.centers, pred[:, i], geo.diameter, f"{label} predicted{suffix}"))
        if grid is not None:
            size = float(read_record(grid, "superresolve")["region_size_um"]) / geo.microns_per_pixel
            where = np.asarray(grid.obsm["spatial"])
            tag = " (conditioned)" if LAYER_IMAGE_ONLY in grid.layers else ""
            # two lines: a gene and a grid name side by side overrun the neighbouring panel's title
            panels.append((where, _column(grid, name), size, f"{label}\n{grid_table}{tag}"))
            if image_only:
                col = np.asarray(grid[:, name].layers[LAYER_IMAGE_ONLY], dtype=float).ravel()
                panels.append((where, col, size, f"{label}\n{grid_table} (image only)"))
        for j, (centers, values, size, title) in enumerate(panels):
            ax = axes[i, j]
            sc = _scatter(ax, img, fx, fy, centers, values=values, size_px=size, title=title, vmin=vmin, vmax=vmax)
            _um_axes(ax, geo.microns_per_pixel, xlabel=i == len(names) - 1, ylabel=j == 0)
            sized.append((ax, sc, size))
        fig.colorbar(sc, ax=axes[i, -1], fraction=0.046, pad=0.02, label=_VALUE_LABEL)
    _marker_sizes(fig, sized)
    return fig


def grid_values(
    sdata: SpatialData,
    table: str,
    color: str,
    *,
    image_key: str | None = None,
    coordinate_system: str | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    gene_symbols_key: str | None = None,
) -> Figure:
    """A super-resolved grid coloured by a gene or an ``obs`` column (e.g. ``"leiden"`` domains) over the H&E.

    Drawn by spatialdata-plot from the elements themselves: the image, and the shapes the table annotates
    coloured through the table, so every shape is drawn at its true size (pseudo-spot circles, bin squares)
    and what is shown is exactly what :func:`stpredict.tl.superresolve` wrote.

    Parameters
    ----------
    sdata
        The SpatialData.
    table
        A table written by :func:`stpredict.tl.superresolve` (or the spots table).
    color
        An ``obs`` column or a gene (from ``X``: a ``var_name``, an Ensembl id with or without version, or a
        symbol, as in :func:`predicted_vs_measured`); categorical columns get a legend in natural order
        (0, 1, 2, …, 10).
    image_key
        Background image (default the one the grid was predicted from).
    coordinate_system
        Coordinate system to draw in (default the first one holding both the image and the shapes,
        ``"global"`` first).
    ax
        Axes to draw into.
    title
        Panel title.
    cmap
        Colour map of continuous values.
    gene_symbols_key
        The ``var`` column of gene symbols (default ``gene_symbol``, then ``gene_symbols``, ``gene_ids``).

    Returns
    -------
    The matplotlib figure (constrained layout when it is created here: a plain ``fig.savefig`` keeps the
    legend and the colour bar's label).
    """
    import matplotlib.pyplot as plt
    import spatialdata_plot  # noqa: F401 - registers the .pl accessor
    from spatialdata.transformations import get_transformation

    if table not in sdata.tables:
        msg = f"No table {table!r}; the tables are {sorted(sdata.tables)}."
        raise KeyError(msg)
    t = sdata.tables[table]
    label = color
    if color not in t.obs:
        try:
            (color,) = resolve_genes(t.var, color, gene_symbols_key=gene_symbols_key, what=f"table {table!r}")
        except KeyError as e:
            msg = f"{color!r} is neither a gene nor an obs column of table {table!r}: {e.args[0]}"
            raise KeyError(msg) from None
        (label,) = display_names(t.var, [color], gene_symbols_key=gene_symbols_key)
    region = t.uns.get("spatialdata_attrs", {}).get("region")
    region = region[0] if isinstance(region, list | tuple) else region
    if region not in sdata.shapes:
        msg = f"Table {table!r} does not annotate shapes (it annotates {region!r}); grid_values draws grids of shapes."
        raise ValueError(msg)
    rec = read_record(t, "superresolve")
    image_key = image_key or rec.get("image_key") or next(iter(sdata.images))
    if coordinate_system is None:
        both = set(get_transformation(sdata.images[image_key], get_all=True)) & set(
            get_transformation(sdata.shapes[region], get_all=True)
        )
        if not both:
            msg = f"Image {image_key!r} and shapes {region!r} share no coordinate system."
            raise ValueError(msg)
        coordinate_system = "global" if "global" in both else sorted(both)[0]
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 4.5), layout="constrained")
    else:
        fig = ax.figure
    from pandas.api.types import is_numeric_dtype

    categorical = color in t.obs and not is_numeric_dtype(t.obs[color])
    bar_label = label if color in t.obs else f"{label}, {_VALUE_LABEL}"
    kw = {} if categorical else {"cmap": cmap, "colorbar_params": {"label": bar_label}}
    with warnings.catch_warnings():
        # spatialdata-plot 0.4 calls Colormap.set_bad, which matplotlib 3.10+ marks for deprecation
        warnings.filterwarnings("ignore", message=".*set_bad.*", category=PendingDeprecationWarning)
        (
            sdata.pl.render_images(image_key)
            .pl.render_shapes(region, color=color, table_name=table, **kw)
            .pl.show(ax=ax, coordinate_systems=coordinate_system, title=title or f"{table}: {label}", frameon=True)
        )
    if categorical:
        _sort_legend(ax)
    # zoom on the grid (the slide around the tissue is mostly glass)
    from spatialdata import get_extent

    ext = get_extent(sdata.shapes[region], coordinate_system=coordinate_system)
    (x0, x1), (y0, y1) = ext["x"], ext["y"]
    pad = 0.05 * max(x1 - x0, y1 - y0)
    ax.set_xlim(x0 - pad, x1 + pad)
    top_down = ax.get_ylim()[0] > ax.get_ylim()[1]
    ax.set_ylim((y1 + pad, y0 - pad) if top_down else (y0 - pad, y1 + pad))
    ax.set_xlabel(f"x ({coordinate_system})")
    ax.set_ylabel(f"y ({coordinate_system})")
    ax.tick_params(labelsize=7, length=2)
    ax.spines[["top", "right"]].set_visible(False)
    return fig
