"""Pseudo-spots pooled from high-resolution data: a Visium- or ST-like measured slide with sub-spot truth."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from .._args import check_flag
from .._keys import MICRONS_CS, UNS_KEY
from .._logging import get_logger
from .._records import uns_safe
from .._validate import check_counts, table_region
from ._pool_args import (
    LAYOUTS,
    check_new_names,
    lattice_params,
    resolve_source,
)
from ._spots import shape_centers
from ._spots_units import micrometers_affine

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["pool_to_spots"]

logger = get_logger(__name__)

MEMBERS_KEY = "members"


def pool_to_spots(
    sdata: SpatialData,
    *,
    layout: Literal["visium", "st"] = "visium",
    diameter_um: float | None = None,
    spacing_um: float | None = None,
    offset_um: tuple[float, float] | None = None,
    shapes_key: str | None = None,
    table_key: str | None = None,
    layer: str | None = None,
    min_members: int = 1,
    key_added: str | None = None,
    overwrite: bool = False,
    inplace: bool = True,
) -> SpatialData | None:
    """Pool high-resolution regions (bins, cells) into Visium- or ST-like spots: a measured slide with sub-spot truth.

    Spots are disks on a lattice laid over the source regions in the ``"micrometers"`` coordinate system:
    ``layout="visium"`` gives 55 µm disks on a hexagonal lattice of 100 µm centre-to-centre spacing (rows
    86.6 µm apart, every other row shifted by half a spacing), ``layout="st"`` 100 µm disks on a square lattice
    of 200 µm. A spot's counts are the **sum of the counts of its members**, a member being a source region
    (bin or cell; circle, square or polygon) whose **centroid lies in the disk** (distance to the centre ≤ the
    radius). Each region's molecules are thus counted once, in the spot that holds its centroid, and the pooled
    counts stay integers; area-overlap weighting would give fractional counts and is not offered. Spots whose
    centre lies inside the bounding box of the regions' centroids and with at least ``min_members`` members are
    kept, so spots at the edge of the data may be only partly covered (raise ``min_members`` to drop them).

    Parameters
    ----------
    sdata
        A :class:`~spatialdata.SpatialData` whose table holds raw counts of small regions (Visium HD bins,
        Xenium cells...) annotating a shapes element that has a transformation to ``"micrometers"``.
    layout
        ``"visium"`` (hexagonal lattice, 55 µm / 100 µm) or ``"st"`` (square lattice, 100 µm / 200 µm): the
        lattice kind and the default diameter and spacing.
    diameter_um
        Spot diameter in µm, overriding the layout's.
    spacing_um
        Centre-to-centre spacing of nearest spots in µm, overriding the layout's.
    offset_um
        ``(x, y)`` position in the ``"micrometers"`` coordinate system of the lattice point in row 0, column 0.
        ``None``: the lower corner of the regions' centroids plus the spot radius. The lattice extends from it
        in every direction.
    shapes_key
        Shapes element of the source regions. ``None`` uses the only shapes element annotated by the table.
    table_key
        Table of the source regions' counts. ``None`` uses the only table annotating a shapes element (that
        annotates ``shapes_key`` if given).
    layer
        Layer of the source table holding the counts; ``None`` uses ``.X``.
    min_members
        Fewest members a spot needs to be kept.
    key_added
        Name of the new circles shapes element; the new table is ``f"{key_added}_table"`` (spatialdata element
        names are shared by shapes and tables), and with ``inplace=True`` the source table gets an obs column
        of this name. ``None``: ``f"{shapes_key}_pooled_{layout}"``, with ``f"_d{diameter}_s{spacing}"``
        appended when these differ from the layout's.
    overwrite
        Replace existing elements (and source column) of these names instead of raising.
    inplace
        Add the elements to ``sdata`` (and the source column to its table) and return ``None``; otherwise
        leave ``sdata`` untouched and return a SpatialData holding only the new shapes and table.

    Returns
    -------
    ``None`` when ``inplace``, else a :class:`~spatialdata.SpatialData` with the new elements. They are:

    - ``shapes[key_added]``: circles in the source shapes' intrinsic coordinates, with their transformations
      (a true ``radius``: the spot radius in µm divided by the shapes' µm per unit), indexed ``0..n-1``;
    - ``tables[f"{key_added}_table"]`` annotating them (``region_key="region"``, ``instance_key="spot_id"``):
      ``.X`` the pooled counts (sparse, integer), ``.var`` the source table's, ``obs["n_members"]``,
      ``obs["array_row"]``/``obs["array_col"]`` (lattice coordinates; on the hexagonal lattice columns step by
      2 along a row, as Visium's), ``obsm["spatial"]`` the centres in the shapes' intrinsic coordinates,
      ``obsm["members"]`` the sparse ``(n_spots, n_source_obs)`` 0/1 membership matrix whose columns are the
      source table's rows (``.X == obsm["members"] @ source.X``), and ``uns["stpredict"]["pool_to_spots"]``
      with every parameter;
    - with ``inplace=True``, ``tables[table_key].obs[key_added]``: the obs name of the spot that pooled each
      source region (categorical, NaN outside every spot), for ``groupby`` or plotting; written only when no
      region belongs to two spots (``diameter_um <= spacing_um``).

    Raises
    ------
    KeyError
        If the source elements cannot be resolved, or ``key_added`` (or its table or column) exists and
        ``overwrite=False``.
    ValueError
        If the counts are not non-negative integers, the shapes have no transformation to ``"micrometers"``,
        a parameter is out of range, or no spot has ``min_members`` members. Nothing is modified then.

    Examples
    --------
    A 400 µm square of 8 µm bins (circles of equal area here; squares and cell polygons work alike), pooled
    into Visium-like spots:

    >>> import anndata as ad, numpy as np, pandas as pd
    >>> import stpredict as stp
    >>> from spatialdata import SpatialData
    >>> from spatialdata.models import ShapesModel, TableModel
    >>> from spatialdata.transformations import Identity
    >>> g = np.arange(4.0, 400.0, 8.0)
    >>> xy = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    >>> n = len(xy)
    >>> bins = ShapesModel.parse(
    ...     xy, geometry=0, radius=np.full(n, 4.5), index=np.arange(n), transformations={"micrometers": Identity()}
    ... )
    >>> obs = pd.DataFrame({"region": pd.Categorical(["bins"] * n), "bin_id": np.arange(n)})
    >>> table = TableModel.parse(
    ...     ad.AnnData(np.ones((n, 3), np.int32), obs=obs), region="bins", region_key="region", instance_key="bin_id"
    ... )
    >>> sdata = SpatialData(shapes={"bins": bins}, tables={"bin_counts": table})
    >>> stp.pp.pool_to_spots(sdata)
    >>> pooled = sdata.tables["bins_pooled_visium_table"]
    >>> float(sdata.shapes["bins_pooled_visium"]["radius"].iloc[0])  # µm: the shapes' unit
    27.5
    >>> int(pooled.obs["n_members"].iloc[0]), pooled.X[0].toarray().tolist()  # 32 bins of one count per gene
    (32, [[32, 32, 32]])
    """
    # -- validate everything before any work --------------------------------------------------------------
    check_flag("inplace", inplace)
    check_flag("overwrite", overwrite)
    lattice, diameter, spacing = lattice_params(layout, diameter_um, spacing_um)
    if isinstance(min_members, bool) or not isinstance(min_members, int | np.integer) or min_members < 1:
        msg = f"min_members must be a positive integer, got {min_members!r}."
        raise ValueError(msg)
    table_key, shapes_key = resolve_source(sdata, table_key, shapes_key)
    table = sdata.tables[table_key]
    shapes = sdata.shapes[shapes_key]
    check_counts(table, table_key, layer=layer, require_integer=True)  # pooling sums counts: whole numbers
    to_um = micrometers_affine(shapes, shapes_key)
    if key_added is None:
        key_added = f"{shapes_key}_pooled_{layout}"
        if (diameter, spacing) != LAYOUTS[layout][1:]:
            key_added += f"_d{diameter:g}_s{spacing:g}"
    new_table_key = f"{key_added}_table"
    check_new_names(sdata, key_added, new_table_key, shapes_key, table_key, overwrite=overwrite, inplace=inplace)
    if offset_um is not None:
        offset_um = np.broadcast_to(np.asarray(offset_um, dtype=float), (2,))
        if not np.all(np.isfinite(offset_um)):
            msg = f"offset_um must be two finite numbers (x, y) in µm, got {offset_um!r}."
            raise ValueError(msg)

    # -- members: the source rows and their centroids in µm -------------------------------------------------
    _, region_key, instance_key = table_region(table)
    rows = np.flatnonzero((table.obs[region_key].astype(str) == shapes_key).to_numpy())
    pos = pd.Index(shapes.index).get_indexer(table.obs[instance_key].to_numpy()[rows])
    if (pos < 0).any():
        msg = (
            f"Table {table_key!r} annotates {int((pos < 0).sum())} instances that are not in shapes {shapes_key!r}: "
            "re-link it with TableModel.parse(..., instance_key=...)."
        )
        raise ValueError(msg)
    xy, _ = shape_centers(shapes)
    xy_um = xy[pos] @ to_um[:2, :2].T + to_um[:2, 2]
    radius = diameter / 2.0
    lo, hi = xy_um.min(0), xy_um.max(0)
    origin = lo + radius if offset_um is None else offset_um
    centers_um, ij = _lattice_points(lattice, spacing, origin, lo, hi)

    # -- membership: centroid within the disk (distance <= radius) -----------------------------------------
    hits = cKDTree(xy_um).query_ball_point(centers_um, radius) if len(centers_um) else []
    n_members = np.fromiter((len(h) for h in hits), dtype=np.int64, count=len(hits))
    keep = n_members >= min_members
    if not keep.any():
        msg = (
            f"No spot of the {layout!r} lattice ({diameter:g} µm disks, {spacing:g} µm spacing) holds "
            f"{min_members} or more of the {len(rows)} regions of {shapes_key!r} (their centroids span "
            f"{hi[0] - lo[0]:.0f} × {hi[1] - lo[1]:.0f} µm): lower min_members, or check offset_um and the "
            f"shapes' {MICRONS_CS!r} transformation."
        )
        raise ValueError(msg)
    hits = [hits[i] for i in np.flatnonzero(keep)]
    centers_um, ij, n_members = centers_um[keep], ij[keep], n_members[keep]
    order = np.lexsort((centers_um[:, 0], centers_um[:, 1]))  # by row (y), then x
    hits = [hits[i] for i in order]
    centers_um, ij, n_members = centers_um[order], ij[order], n_members[order]
    n = len(centers_um)
    cols = rows[np.concatenate([np.asarray(h, dtype=np.int64) for h in hits])]
    members = sp.csr_matrix(
        (np.ones(len(cols), np.int64), (np.repeat(np.arange(n), n_members), cols)), shape=(n, table.n_obs)
    )
    members.sort_indices()
    X = table.layers[layer] if layer is not None else table.X
    counts = members @ (sp.csr_matrix(X) if sp.issparse(X) else sp.csr_matrix(np.asarray(X)))
    counts = sp.csr_matrix(counts)
    counts.data = np.round(counts.data)
    int_type = np.int32 if (counts.nnz == 0 or counts.data.max() < 2**31) else np.int64
    counts = counts.astype(int_type)
    members = members.astype(np.int8)

    # -- the new elements ----------------------------------------------------------------------------------
    import anndata as ad
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import get_transformation

    from_um = np.linalg.inv(to_um)
    centers = centers_um @ from_um[:2, :2].T + from_um[:2, 2]
    um_per_unit = float(np.sqrt(abs(np.linalg.det(to_um[:2, :2]))))
    ts = {cs: copy.deepcopy(t) for cs, t in get_transformation(shapes, get_all=True).items()}
    circles = ShapesModel.parse(
        centers, geometry=0, radius=np.full(n, radius / um_per_unit), index=np.arange(n), transformations=ts
    )
    obs_names = pd.Index([f"spot_{i}" for i in range(n)])
    obs = pd.DataFrame(
        {
            "region": pd.Categorical([key_added] * n),
            "spot_id": np.arange(n),
            "n_members": n_members,
            "array_row": ij[:, 0],
            "array_col": ij[:, 1],
        },
        index=obs_names,
    )
    adata = ad.AnnData(X=counts, obs=obs, var=table.var.copy())
    adata.obsm["spatial"] = centers
    adata.obsm[MEMBERS_KEY] = members
    exclusive = bool(members.shape[1] == 0 or np.asarray(members.sum(0)).max() <= 1)
    column = key_added if inplace and exclusive else None
    record = {
        "layout": layout,
        "lattice": lattice,
        "diameter_um": diameter,
        "spacing_um": spacing,
        "offset_um": [float(v) for v in origin],
        "min_members": int(min_members),
        "member_rule": "centroid_in_disk",
        "source_shapes_key": shapes_key,
        "source_table_key": table_key,
        "source_layer": layer,
        "n_source_obs": int(table.n_obs),
        "members_obsm_key": MEMBERS_KEY,
        "source_obs_column": column,
        "coordinate_system": MICRONS_CS,
    }
    adata.uns[UNS_KEY] = {"pool_to_spots": uns_safe(record)}
    new_table = TableModel.parse(adata, region=key_added, region_key="region", instance_key="spot_id")
    n_pooled = int((np.asarray(members.sum(0)).ravel() > 0).sum())
    logger.info("Pooled %d regions of %r into %d %s spots.", n_pooled, shapes_key, n, lattice)
    if not inplace:
        return SpatialData(shapes={key_added: circles}, tables={new_table_key: new_table})
    if not exclusive:
        logger.info("Disks overlap (%g µm > %g µm spacing): no source column, use obsm['members'].", diameter, spacing)
    for k in (key_added, new_table_key):  # overwrite=True (checked above)
        for elements in (sdata.shapes, sdata.tables):
            if k in elements:
                del elements[k]
    if key_added in table.obs.columns:  # a stale column of an overwritten run
        del table.obs[key_added]
    sdata.shapes[key_added] = circles
    sdata.tables[new_table_key] = new_table
    if column is not None:
        mine = np.full(table.n_obs, -1, np.int64)
        mine[members.indices] = np.repeat(np.arange(n), np.diff(members.indptr))
        table.obs[column] = pd.Categorical.from_codes(mine, categories=obs_names)
    return None


def _lattice_points(
    lattice: str, spacing: float, origin: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Lattice points (µm) inside the box ``[lo, hi]`` and their ``(array_row, array_col)``."""
    dy = spacing * np.sqrt(3) / 2 if lattice == "hexagonal" else spacing
    r0, r1 = np.floor((lo[1] - origin[1]) / dy) - 1, np.ceil((hi[1] - origin[1]) / dy) + 1
    c0, c1 = np.floor((lo[0] - origin[0]) / spacing) - 1, np.ceil((hi[0] - origin[0]) / spacing) + 1
    r, c = np.meshgrid(np.arange(r0, r1 + 1, dtype=np.int64), np.arange(c0, c1 + 1, dtype=np.int64), indexing="ij")
    r, c = r.ravel(), c.ravel()
    shift = 0.5 * (r % 2) if lattice == "hexagonal" else 0.0
    xy = np.column_stack([origin[0] + (c + shift) * spacing, origin[1] + r * dy])
    inside = np.all((xy >= lo - 1e-9) & (xy <= hi + 1e-9), axis=1)
    xy, r, c = xy[inside], r[inside], c[inside]
    col = 2 * c + (r % 2) if lattice == "hexagonal" else c
    if len(r):  # non-negative array coordinates; the hexagonal parity (row + col even) is kept
        r0, c0 = 2 * (r.min() // 2), 2 * (col.min() // 2)
        r, col = r - r0, col - c0
    return xy, np.column_stack([r, col])
