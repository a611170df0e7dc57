"""The cells of a synthetic slide as a segmentation, and each cell's true expression.

The synthetic tissue places at most one nucleus in each cell of a ``cell_um`` jittered grid (see
:mod:`._synthetic`). :func:`synthetic_cells` turns the nuclei on tissue into cell polygons, as a nucleus
expansion segmentation does (Xenium's, or a Visium HD segmentation): each nucleus gets the part of its Voronoi
cell within ``radius_um`` of its centre, clipped to the image. :func:`synthetic_cells_truth` averages the
expression rate over each polygon of any shapes element of the slide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._args import check_flag, check_length
from .._validate import check_element_free, table_region
from ._synthetic import synthetic_truth

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ._synthetic_tissue import SyntheticTissue

__all__ = ["synthetic_cells", "synthetic_cells_truth"]

_IMAGE_KEY = "he"  # the image of every slide made by synthetic()
_POINTS_PER_CHUNK = 200_000  # sample points evaluated at once by synthetic_cells_truth


def synthetic_cells(
    sdata: SpatialData,
    *,
    key_added: str = "cells",
    radius_um: float = 8.0,
    table_key: str = "table",
    overwrite: bool = False,
) -> None:
    """Add the cells of a synthetic slide as a segmentation: one polygon per nucleus on tissue.

    The synthetic tissue has one candidate nucleus per cell of a jittered grid of ``cell_um`` (11 µm) side,
    present with its region's nucleus density. Every present nucleus whose centre lies on tissue and inside the
    image becomes one cell: its **Voronoi cell** among those nuclei, **clipped to a disk of** ``radius_um``
    around the nucleus centre (a 32-gon) and to the image. This is the shape of a nucleus-expansion
    segmentation: cells touch where nuclei are dense and are disks of ``radius_um`` where they are sparse. The
    polygons are not clipped to the tissue boundary: a cell at the edge may reach onto glass, where the rate is
    zero (:func:`synthetic_cells_truth` averages over the whole polygon).

    Parameters
    ----------
    sdata
        A SpatialData made by :func:`synthetic` (any layout), or read back from zarr.
    key_added
        Name of the new shapes element.
    radius_um
        Largest distance in µm from a nucleus centre to its cell's boundary. The default, 8 µm, is a nucleus
        (radius 2.3–4.2 µm by region) expanded by about 5 µm, Xenium's default expansion.
    table_key
        Table holding ``uns["synthetic"]`` (the parameters of the slide).
    overwrite
        Replace an existing shapes element ``key_added``.

    Returns
    -------
    ``None``, having added ``sdata.shapes[key_added]``: a GeoDataFrame of polygons in the level-0 pixels of
    image ``"he"``, with its transformations (the spots' coordinate systems: ``"global"`` pixels and
    ``"micrometers"``); index ``0 … n_cells - 1`` ordered by nucleus (x, then y, on the grid); column
    ``domain``, the region at the nucleus centre, labelled as the counts table's ``obs["domain"]``
    (``"region_<k>"``). No other element is changed. Predict the cells with
    ``stp.tl.superresolve(sdata, model, grid="cells", shapes_key=key_added)``.

    Raises
    ------
    KeyError
        If ``sdata`` was not made by :func:`synthetic` (``table_key`` holds no ``uns["synthetic"]``), or if
        ``key_added`` names an existing element (a shapes element: unless ``overwrite``; never the shapes
        that the counts table annotates).
    ValueError
        If no nucleus lies on tissue inside the image.

    Examples
    --------
    >>> import stpredict as stp
    >>> sdata = stp.datasets.synthetic(image_size=256, layout="visium_hd", n_genes=5, seed=0)
    >>> stp.datasets.synthetic_cells(sdata)
    >>> len(sdata.shapes["cells"]) > 100
    True
    """
    import shapely
    from geopandas import GeoDataFrame
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import get_transformation

    check_length("radius_um", radius_um, hint=" It is the largest distance from a nucleus to its cell boundary.")
    check_flag("overwrite", overwrite)
    if table_key not in sdata.tables:
        msg = f"No table {table_key!r} (tables: {list(sdata.tables)}): pass the table made by stp.datasets.synthetic()."
        raise KeyError(msg)
    tissue = synthetic_truth(sdata, table_key=table_key)  # KeyError for a slide not made by synthetic()
    if key_added in table_region(sdata.tables[table_key])[0]:
        msg = f"key_added={key_added!r} names the shapes that table {table_key!r} annotates: choose another name."
        raise KeyError(msg)
    check_element_free(sdata, key_added, "shapes", overwrite=overwrite)
    nx, ny, rad = _nuclei_on_tissue(tissue)
    if len(nx) == 0:
        msg = f"No nucleus lies on the tissue of this {tissue.p.image_size} px synthetic slide: enlarge it."
        raise ValueError(msg)
    w_um, h_um = tissue.extent_um
    polys = _cell_polygons(np.column_stack([nx, ny]), float(radius_um), (w_um, h_um))
    mpp = tissue.p.microns_per_pixel
    polys_px = shapely.transform(polys, lambda xy: xy / mpp)
    domain = tissue.region(nx, ny)
    gdf = GeoDataFrame(
        {
            "domain": pd.Categorical(
                [f"region_{d}" for d in domain], categories=[f"region_{k}" for k in range(tissue.p.n_regions)]
            )
        },
        geometry=polys_px,
        index=pd.RangeIndex(len(polys_px)),
    )
    transformations = get_transformation(sdata.images[_IMAGE_KEY], get_all=True)
    sdata.shapes[key_added] = ShapesModel.parse(gdf, transformations=dict(transformations))


def _nuclei_on_tissue(tissue: SyntheticTissue) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (µm) and radii of the present nuclei whose centre is on tissue and inside the image."""
    c = tissue.p.cell_um
    w_um, h_um = tissue.extent_um
    gi, gj = np.meshgrid(np.arange(int(w_um // c) + 1), np.arange(int(h_um // c) + 1), indexing="ij")
    nx, ny, rad = tissue._cells(gi.ravel(), gj.ravel())
    keep = (rad > 0) & (nx < w_um) & (ny < h_um)
    nx, ny, rad = nx[keep], ny[keep], rad[keep]
    on = tissue.tissue(nx, ny)
    return nx[on], ny[on], rad[on]


def _cell_polygons(centers: np.ndarray, radius: float, extent: tuple[float, float]) -> np.ndarray:
    """Each centre's Voronoi cell ∩ its disk of ``radius`` ∩ the box ``[0, w] × [0, h]``, in the centres' order."""
    import shapely

    box = shapely.box(0.0, 0.0, *extent)
    points = shapely.points(centers)
    disks = shapely.buffer(points, radius, quad_segs=8)
    if len(centers) == 1:
        return shapely.intersection(disks, box)
    cells = np.asarray(shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(centers), extend_to=box)))
    # each centre lies inside exactly one Voronoi cell (the diagram's order is not the input's)
    pt, cell = shapely.STRtree(cells).query(points, predicate="within")
    owner = np.full(len(centers), -1)
    owner[pt] = cell
    if (owner < 0).any() or len(pt) != len(centers):
        msg = "Internal error: the Voronoi diagram does not give one cell per nucleus."
        raise RuntimeError(msg)
    return shapely.intersection(shapely.intersection(cells[owner], disks), box)


def synthetic_cells_truth(
    sdata: SpatialData, shapes_key: str = "cells", *, table_key: str = "table", step_um: float = 0.5
) -> pd.DataFrame:
    """The true expression of each cell of a synthetic slide: the mean rate λ over its polygon.

    Parameters
    ----------
    sdata
        A SpatialData made by :func:`synthetic`.
    shapes_key
        Shapes element of the cells, e.g. added by :func:`synthetic_cells`; any polygons, multipolygons or
        circles that share a coordinate system with image ``"he"`` (the regions ``superresolve(grid="cells")``
        predicts, read the same way).
    table_key
        Table holding ``uns["synthetic"]``.
    step_um
        Spacing of the sample points: λ is averaged over the points of a ``step_um`` grid inside each polygon
        (a polygon containing none takes λ at a point on its surface). The default, 0.5 µm, puts ~600 points in
        a 150 µm² cell and is within ~3 % of a cell's largest rate of the exact mean (median 0.1 %; the error is
        at nucleus edges); 0.25 µm takes 4× as long and is within 1 %.

    Returns
    -------
    A DataFrame of cells × genes (index: the shapes' index; columns: the slide's genes): the mean expression
    rate over each polygon, on the scale of ``synthetic_truth(sdata).mean_rates`` (before normalisation; the
    rate is zero off tissue). ``np.log1p(df.div(df.sum(1), axis=0) * 1e4)`` puts it on the prediction scale.

    Raises
    ------
    KeyError
        If ``sdata`` was not made by :func:`synthetic`, or ``shapes_key`` names no shapes element.
    ValueError
        For shapes that are not regions, or share no coordinate system with the image.

    Examples
    --------
    >>> import stpredict as stp
    >>> sdata = stp.datasets.synthetic(image_size=256, layout="visium_hd", n_genes=5, seed=0)
    >>> stp.datasets.synthetic_cells(sdata)
    >>> truth = stp.datasets.synthetic_cells_truth(sdata)
    >>> truth.shape == (len(sdata.shapes["cells"]), 5)
    True
    """
    import shapely

    from ..pp._cells import polygons_to_um, resolve_cells

    check_length("step_um", step_um, hint=" It is the spacing of the points averaged over each cell.")
    if table_key not in sdata.tables:
        msg = f"No table {table_key!r} (tables: {list(sdata.tables)}): pass the table made by stp.datasets.synthetic()."
        raise KeyError(msg)
    tissue = synthetic_truth(sdata, table_key=table_key)
    cells = resolve_cells(sdata, shapes_key, image_key=_IMAGE_KEY)
    mpp = tissue.p.microns_per_pixel
    polys = polygons_to_um(cells.polygons_px, (mpp, mpp))
    rates = _polygon_mean_rates(tissue, polys, float(step_um))
    empty = np.isnan(rates).any(1)
    if empty.any():  # thinner than the sample grid: the rate at a point on the polygon
        xy = shapely.get_coordinates(shapely.point_on_surface(polys[empty]))
        rates[empty] = tissue.rates(xy[:, 0], xy[:, 1])
    return pd.DataFrame(rates, index=pd.Index(cells.index), columns=pd.Index(tissue.genes))


def _polygon_mean_rates(tissue: SyntheticTissue, polys: np.ndarray, step: float) -> np.ndarray:
    """Mean λ over the points of a ``step`` grid (from each bounding box's corner) inside each polygon (NaN: none)."""
    import shapely

    bounds = shapely.bounds(polys)
    m = np.ceil(np.maximum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1]) / step).astype(int).clip(1)
    order = np.argsort(m, kind="stable")  # similar sizes share a chunk
    out = np.full((len(polys), tissue.p.n_genes), np.nan)
    s = 0
    while s < len(order):
        k = max(1, _POINTS_PER_CHUNK // int(m[order[min(s + 64, len(order)) - 1]]) ** 2)
        idx = order[s : s + min(k, 64)]
        s += len(idx)
        g = (np.arange(int(m[idx].max())) + 0.5) * step
        xs, ys = bounds[idx, :1] + g, bounds[idx, 1:2] + g  # (n, m)
        r = tissue._rates_from(tissue.features_grid(xs, ys))  # (n, m, m, genes), rows y, columns x
        inside = shapely.contains_xy(polys[idx, None, None], xs[:, None, :], ys[:, :, None])  # (n, m, m)
        n_in = inside.sum((1, 2))
        ok = n_in > 0
        out[idx[ok]] = np.einsum("nyxg,nyx->ng", r[ok], inside[ok]) / n_in[ok, None]
    return out
