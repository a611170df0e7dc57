"""The square lattice a ``bin<N>um`` grid is laid on: recorded as plain numbers, read back after a zarr round trip.

:func:`stpredict.pp.grid` and :func:`stpredict.tl.superresolve` lay µm squares either on the measured bins' own
lattice (Visium HD, rotated and offset in the image; see ``pp/_bin_lattice.py``) or on the image axes from its
origin. The lattice is recorded as plain numbers (:meth:`GridLattice.to_record`) in the grid shapes'
``attrs["lattice_frame"]`` and, by ``superresolve``, in its table's ``uns["stpredict"]["superresolve"]
["lattice_frame"]``, which a zarr round trip always keeps (the shapes' ``attrs`` are written to their parquet
only by recent geopandas). :func:`grid_lattice` is the one reader: the table's record, else the shapes' attrs,
else a fit of the squares' own centres. :func:`pooled_source_lattice` finds the
lattice of the bins that spots were pooled from (:func:`stpredict.pp.pool_to_spots`), so grids super-resolving
pooled spots coincide with the measured bins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._keys import UNS_KEY, parse_grid_name
from .._logging import get_logger
from ._bin_lattice import bin_indices, fit_bin_lattice, measured_bin_lattice

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

    from ._bin_lattice import BinLattice
    from ._spots import SpotGeometry

__all__ = ["GridLattice", "bins_lattice", "grid_lattice", "pooled_source_lattice"]

logger = get_logger(__name__)

FRAME_KEY = "lattice_frame"


@dataclass
class GridLattice:
    """The square lattice of a ``bin<N>um`` grid, in µm of the image frame (level-0 pixels × µm per pixel).

    Square ``(i, j)`` covers ``origin_um + side_um · ((i + a) · u + (j + b) · v)`` for ``a, b`` in ``[0, 1)``,
    ``u, v`` the columns of ``axes``; on measured bins, a square holds the measured bins whose centre falls in it.

    Attributes
    ----------
    origin_um
        ``(2,)`` corner of square ``(0, 0)``: the corner of measured bin ``(0, 0)`` on measured bins, ``(0, 0)``
        on the image axes.
    axes
        ``(2, 2)`` orthonormal columns ``u, v`` (the identity on the image axes).
    side_um
        Side of the grid's squares.
    pitch_um
        Pitch of the measured bins' lattice (the squares' side on the image axes).
    rotation_deg
        Angle of the lattice from the image axes, in ``[-45, 45)`` degrees.
    source
        ``"record"`` (the grid's own record) or ``"refit"`` (fitted on the squares' centres; no record).
    """

    origin_um: np.ndarray
    axes: np.ndarray
    side_um: float
    pitch_um: float
    rotation_deg: float
    source: str = "record"

    @classmethod
    def image_axes(cls, side_um: float) -> GridLattice:
        """Squares of ``side_um`` aligned with the image axes from its origin."""
        return cls(np.zeros(2), np.eye(2), float(side_um), float(side_um), 0.0)

    @classmethod
    def on_bins(cls, lat: BinLattice, side_um: float) -> GridLattice:
        """Squares of ``side_um`` on the measured bins' lattice ``lat`` (they split or group its bins)."""
        return cls(
            np.array(lat.corner_um, float), np.array(lat.axes, float), float(side_um), lat.side_um, lat.rotation_deg
        )

    @classmethod
    def from_record(cls, record: dict[str, Any], source: str = "record") -> GridLattice:
        """Read back :meth:`to_record`."""
        return cls(
            origin_um=np.asarray(record["origin_um"], float).reshape(2),
            axes=np.asarray(record["axes"], float).reshape(2, 2).T,
            side_um=float(record["side_um"]),
            pitch_um=float(record["pitch_um"]),
            rotation_deg=float(record["rotation_deg"]),
            source=source,
        )

    def to_record(self) -> dict[str, Any]:
        """Plain numbers (``uns``- and JSON-safe): rotation, pitch, side, origin and the axes ``[u, v]``."""
        return {
            "rotation_deg": float(self.rotation_deg),
            "pitch_um": float(self.pitch_um),
            "side_um": float(self.side_um),
            "origin_um": [float(v) for v in self.origin_um],
            "axes": [[float(x) for x in col] for col in self.axes.T],
        }

    def cells(self, xy_um: np.ndarray) -> np.ndarray:
        """``(n, 2)`` integer ``(i, j)`` of the square holding each point (x, y) in µm (half-open squares)."""
        q = (np.asarray(xy_um, float).reshape(-1, 2) - self.origin_um) @ self.axes
        return np.floor(q / self.side_um + 1e-9).astype(np.int64)


def pooled_source_lattice(sdata: SpatialData, geo: SpotGeometry, table: AnnData | None) -> BinLattice | None:
    """The lattice of the square bins that ``geo``'s spots were pooled from, or ``None``.

    Spots made by :func:`stpredict.pp.pool_to_spots` record their source regions in their table's
    ``uns["stpredict"]["pool_to_spots"]``; when those are square measured bins (Visium HD) still in ``sdata``,
    their lattice is fitted (``measured_bin_lattice``, from their ``array_row``/``array_col``
    when the source table has them) in the same image µm frame as ``geo``.
    """
    record = (table.uns.get(UNS_KEY) or {}).get("pool_to_spots") if table is not None else None
    if not isinstance(record, dict):
        return None
    shapes_key, table_key = record.get("source_shapes_key"), record.get("source_table_key")
    if shapes_key not in sdata.shapes or table_key not in sdata.tables:
        return None
    from ._spots import spots

    try:
        src = spots(
            sdata, image_key=geo.image_key, spots_key=shapes_key, table_key=table_key,
            microns_per_pixel=geo.microns_per_pixel, check_image=False,
        )  # fmt: skip
    except ValueError as err:
        logger.info("The pooled spots' source %r is not usable for the grid's lattice: %s", shapes_key, err)
        return None
    return measured_bin_lattice(src, bin_indices(sdata.tables[table_key], src))


def bins_lattice(
    sdata: SpatialData, geo: SpotGeometry, table: AnnData | None, grid: str, bin_size: float | None = None
) -> BinLattice | None:
    """The measured bins' lattice a ``bin<N>um`` grid over ``geo`` follows: its own bins', or its pooled source's.

    ``None`` for pseudo-spot grids and when neither ``geo`` nor the regions its spots were pooled from are
    square bins on a lattice (the squares are then aligned with the image axes).
    """
    try:
        is_bin = bin_size is not None or parse_grid_name(grid)[0] == "bin"
    except (TypeError, ValueError):  # not a grid name: make_grid says so
        is_bin = False
    if not is_bin:
        return None
    if geo.kind == "square":
        return measured_bin_lattice(geo, bin_indices(table, geo))
    return pooled_source_lattice(sdata, geo, table)


def grid_lattice(sdata: SpatialData, shapes_key: str) -> GridLattice | None:
    """The square lattice of the ``bin<N>um`` grid ``sdata.shapes[shapes_key]``, also after a zarr round trip.

    Read from the record of the :func:`stpredict.tl.superresolve` table annotating the grid
    (``uns["stpredict"]["superresolve"]["lattice_frame"]``), else from the shapes' ``attrs`` that
    :func:`stpredict.pp.grid` sets (lost on write by geopandas before 1.x's ``attrs`` support), else fitted on the
    squares' centres (``fit_bin_lattice``; its origin is then a square's corner, not necessarily that
    of measured bin ``(0, 0)``).

    Parameters
    ----------
    sdata
        The SpatialData holding the grid.
    shapes_key
        The grid's shapes element (e.g. ``"spots_bin8um"``).

    Returns
    -------
    The :class:`GridLattice` (µm of the image frame), or ``None`` when the grid's regions are not squares on a
    lattice (pseudo-spots, cells).
    """
    from spatialdata.models import get_table_keys

    for table in sdata.tables.values():
        record = (table.uns.get(UNS_KEY) or {}).get("superresolve")
        if not isinstance(record, dict) or FRAME_KEY not in record:
            continue
        try:
            regions = get_table_keys(table)[0]
        except (KeyError, ValueError, TypeError):
            continue
        if shapes_key in ([regions] if isinstance(regions, str) else list(regions)):
            return GridLattice.from_record(record[FRAME_KEY])
    attrs = getattr(sdata.shapes[shapes_key], "attrs", {})
    if isinstance(attrs.get(FRAME_KEY), dict):
        return GridLattice.from_record(attrs[FRAME_KEY])
    return _refit(sdata, shapes_key)


def _refit(sdata: SpatialData, shapes_key: str) -> GridLattice | None:
    """The lattice fitted on the grid's square centres (no record of it), or ``None`` if they are not squares."""
    from ._spots import spots

    try:
        geo = spots(sdata, spots_key=shapes_key, check_image=False)
    except (ValueError, KeyError) as err:
        logger.info("No lattice for %r: %s", shapes_key, err)
        return None
    if geo.kind != "square" or geo.n_spots < 4:
        return None
    try:
        lat = fit_bin_lattice(geo.centers_um, geo.diameter_um)
    except ValueError as err:
        logger.info("No lattice for %r: %s", shapes_key, err)
        return None
    out = GridLattice.on_bins(lat, lat.side_um)
    out.source = "refit"
    return out
