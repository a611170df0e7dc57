"""Measured vs predicted maps (matplotlib) and super-resolved grids (spatialdata-plot) over the H&E."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from .._image import image_levels
from .._keys import LAYER_PREDICTED
from ..pp._spots import spots as resolve_spots

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from spatialdata import SpatialData

__all__ = ["grid_values", "predicted_vs_measured"]


def _background(sdata: SpatialData, image_key: str, max_side: int = 1200) -> tuple[np.ndarray, float, float]:
    levels = image_levels(sdata.images[image_key])
    lv = next((lv for lv in levels if max(lv.shape_yx) <= max_side), levels[-1])
    img = np.asarray(lv.array[:3].compute()).transpose(1, 2, 0)
    return img, lv.factor_x, lv.factor_y


def _extent(centers: np.ndarray, pad: float) -> tuple[float, float, float, float]:
    lo, hi = centers.min(0) - pad, centers.max(0) + pad
    return lo[0], hi[0], hi[1], lo[1]


def _scatter(
    ax: Axes, img, fx, fy, centers, values, size_px, title, cmap="viridis", vmin=None, vmax=None, *, categorical=False
):
    ax.imshow(img, extent=(0, img.shape[1] * fx, img.shape[0] * fy, 0))
    # marker size in points² from the region size in data units
    ax.set_xlim(*_extent(centers, 2 * size_px)[:2])
    ax.set_ylim(*_extent(centers, 2 * size_px)[2:])
    fig = ax.figure
    fig.canvas.draw()
    bbox = ax.get_window_extent()
    x0, x1 = ax.get_xlim()
    pts_per_unit = bbox.width / abs(x1 - x0) * 72.0 / fig.dpi
    s = (size_px * pts_per_unit) ** 2
    if categorical:
        cats = np.asarray(values).astype(str)
        uniq = sorted(set(cats.tolist()), key=lambda c: (len(c), c))
        import matplotlib as mpl

        cm = mpl.colormaps["tab20"]
        for i, c in enumerate(uniq):
            sel = cats == c
            ax.scatter(*centers[sel].T, s=s, color=cm(i % 20), label=c, linewidths=0, marker="s")
        if len(uniq) <= 20:
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False, markerscale=0.5)
        sc = None
    else:
        sc = ax.scatter(*centers.T, c=values, s=s, cmap=cmap, vmin=vmin, vmax=vmax, linewidths=0, marker="o")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return sc


def predicted_vs_measured(
    sdata: SpatialData,
    genes: Sequence[str],
    *,
    key: str = LAYER_PREDICTED,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
    grid_table: str | None = None,
    figsize_per_panel: float = 3.2,
) -> Figure:
    """Measured vs predicted expression of chosen genes, side by side over the H&E.

    Measured values are log1p of counts normalised to 1e4 (the prediction scale); both panels of a gene share
    a colour scale. With ``grid_table``, a third panel shows the super-resolved grid.

    Parameters
    ----------
    sdata
        The SpatialData with predictions (:func:`stpredict.tl.predict`).
    genes
        Genes to show (rows of the figure).
    key
        Prediction layer.
    image_key, spots_key, table_key
        Elements (``None``: resolved as everywhere in stpredict).
    grid_table
        A table written by :func:`stpredict.tl.superresolve` to show as a third column.
    figsize_per_panel
        Inches per panel.

    Returns
    -------
    The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    from ..tl._targets import targets

    geo = resolve_spots(sdata, image_key=image_key, spots_key=spots_key, table_key=table_key)
    table = sdata.tables[geo.table_key]
    genes = list(genes)
    y, _, _ = targets(table, geo.rows, genes, None)
    pred = np.asarray(table.layers[key])[np.ix_(geo.rows, table.var_names.get_indexer(genes))]
    img, fx, fy = _background(sdata, geo.image_key)
    ncol = 3 if grid_table else 2
    fig, axes = plt.subplots(
        len(genes), ncol, figsize=(figsize_per_panel * ncol + 1, figsize_per_panel * len(genes)), squeeze=False
    )
    for i, g in enumerate(genes):
        both = np.concatenate([y[:, i], pred[:, i][np.isfinite(pred[:, i])]])
        vmin, vmax = np.percentile(both, [1, 99])
        _scatter(axes[i, 0], img, fx, fy, geo.centers, y[:, i], geo.diameter, f"{g} measured", vmin=vmin, vmax=vmax)
        sc = _scatter(
            axes[i, 1],
            img,
            fx,
            fy,
            geo.centers,
            pred[:, i],
            geo.diameter,
            f"{g} predicted" + ("" if key == LAYER_PREDICTED else f" ({key})"),
            vmin=vmin,
            vmax=vmax,
        )
        if grid_table:
            gt = sdata.tables[grid_table]
            gi = gt.var_names.get_loc(g)
            size = float(gt.uns["stpredict"]["superresolve"]["region_size_um"]) / geo.microns_per_pixel
            _scatter(
                axes[i, 2],
                img,
                fx,
                fy,
                np.asarray(gt.obsm["spatial"]),
                np.asarray(gt.X[:, gi]).ravel(),
                size,
                f"{g} {grid_table}",
                vmin=vmin,
                vmax=vmax,
            )
        fig.colorbar(sc, ax=axes[i, -1], fraction=0.046, pad=0.02, label="log1p(norm.)")
    fig.tight_layout()
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
        A gene (from ``X``) or an ``obs`` column; categorical columns get a legend.
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

    Returns
    -------
    The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    import spatialdata_plot  # noqa: F401 - registers the .pl accessor
    from spatialdata.transformations import get_transformation

    if table not in sdata.tables:
        msg = f"No table {table!r}; the tables are {sorted(sdata.tables)}."
        raise KeyError(msg)
    t = sdata.tables[table]
    if color not in t.obs and color not in t.var_names:
        msg = f"{color!r} is neither a gene nor an obs column of table {table!r}."
        raise KeyError(msg)
    region = t.uns.get("spatialdata_attrs", {}).get("region")
    region = region[0] if isinstance(region, list | tuple) else region
    if region not in sdata.shapes:
        msg = f"Table {table!r} does not annotate shapes (it annotates {region!r}); grid_values draws grids of shapes."
        raise ValueError(msg)
    rec = t.uns.get("stpredict", {}).get("superresolve", {})
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
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
    else:
        fig = ax.figure
    from pandas.api.types import is_numeric_dtype

    kw = {} if color in t.obs and not is_numeric_dtype(t.obs[color]) else {"cmap": cmap}
    with warnings.catch_warnings():
        # spatialdata-plot 0.4 calls Colormap.set_bad, which matplotlib 3.10+ marks for deprecation
        warnings.filterwarnings("ignore", message=".*set_bad.*", category=PendingDeprecationWarning)
        (
            sdata.pl.render_images(image_key)
            .pl.render_shapes(region, color=color, table_name=table, **kw)
            .pl.show(ax=ax, coordinate_systems=coordinate_system, title=title or f"{table}: {color}", frameon=False)
        )
    # zoom on the grid (the slide around the tissue is mostly glass)
    from spatialdata import get_extent

    ext = get_extent(sdata.shapes[region], coordinate_system=coordinate_system)
    (x0, x1), (y0, y1) = ext["x"], ext["y"]
    pad = 0.05 * max(x1 - x0, y1 - y0)
    ax.set_xlim(x0 - pad, x1 + pad)
    top_down = ax.get_ylim()[0] > ax.get_ylim()[1]
    ax.set_ylim((y1 + pad, y0 - pad) if top_down else (y0 - pad, y1 + pad))
    return fig
