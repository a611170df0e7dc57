"""µm bins on the measured bins' own lattice: a Visium HD slide's bins are rotated and offset in the image.

Space Ranger registers the HD capture area onto the H&E, so its bins sit on a square lattice turned by a
fraction of a degree to a few degrees and offset from the image origin. :func:`fit_bin_lattice` fits that
lattice (rotation, pitch, the corner of bin ``(0, 0)``) from the bins' array indices (``array_row``,
``array_col``) or, without them, from their centres; :func:`lattice_bin_centers` lays ``bin<N>um`` squares on it
when ``N`` divides the bin side or is a whole multiple of it, so they coincide with, nest in or group whole
measured bins. Everything here is in µm of the image frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._logging import get_logger
from ._lattice import fit_lattice

if TYPE_CHECKING:
    from anndata import AnnData

    from ._spots import SpotGeometry

__all__ = ["BinLattice", "bin_indices", "fit_bin_lattice", "lattice_bin_centers", "measured_bin_lattice"]

logger = get_logger(__name__)

IMAGE_AXES = "image axes"
_PITCH_RTOL = 0.01  # the lattice pitch and the squares' side may differ by this much (the bins tile)
_RESID_MAX = 0.05  # the median residual of the centres, as a share of the pitch
_NEST_RTOL = 1e-6  # bin_size / side (or its inverse) within this of a whole number


@dataclass
class BinLattice:
    """The square lattice of measured bins, in µm of the image frame.

    Measured bin ``(c, r)`` (column and row index) covers ``corner + side · ((c + a) · u + (r + b) · v)`` for
    ``a, b`` in ``[0, 1]``; its centre is at ``a = b = 1/2`` plus its own offset from the fitted lattice.

    Attributes
    ----------
    corner_um
        ``(2,)`` the corner of bin ``(0, 0)`` where its column and row axes start.
    axes
        ``(2, 2)`` orthonormal columns ``u, v``: the directions of increasing column and row index (``v`` is
        ``u`` turned by +90° or, when the rows run the other way, by -90°).
    side_um
        The lattice pitch: side of a measured bin.
    rotation_deg
        Angle of the lattice from the image axes, in ``[-45, 45)`` degrees (a square lattice is the same every
        90°).
    residual_um
        Median distance of the measured centres from their fitted lattice positions.
    index
        ``(n, 2)`` integer ``(c, r)`` of every measured bin, in the order of the centres fitted.
    offsets_um
        ``(n, 2)`` measured centre minus fitted lattice centre of every measured bin.
    source
        ``"array_row/array_col"`` (the table's indices) or ``"centres"`` (fitted from the centres alone).
    """

    corner_um: np.ndarray
    axes: np.ndarray
    side_um: float
    rotation_deg: float
    residual_um: float
    index: np.ndarray
    offsets_um: np.ndarray
    source: str

    def describe(self) -> str:
        """The lattice as the grid records it, e.g. ``"measured bins (rotation 0.40°)"``."""
        return f"measured bins (rotation {self.rotation_deg:.2f}°)"

    def to_lattice(self, xy_um: np.ndarray) -> np.ndarray:
        """µm of the image frame → µm along ``u, v`` from ``corner_um``."""
        return (np.asarray(xy_um, dtype=float) - self.corner_um) @ self.axes


def fit_bin_lattice(centers_um: np.ndarray, side_um: float, indices: np.ndarray | None = None) -> BinLattice:
    """Fit the square lattice of measured bins: a rotation, a pitch and an offset (no shear, no stretch).

    Parameters
    ----------
    centers_um
        ``(n, 2)`` bin centres (x, y) in µm of the image frame (at least 4).
    side_um
        Side of the measured squares in µm; the lattice pitch must equal it within 1 % (bins tile).
    indices
        ``(n, 2)`` integer ``(array_col, array_row)`` of each bin, when the table has them: the exact lattice
        coordinates and the best source. ``None``: found by :func:`~stpredict.pp.fit_lattice` on the centres,
        columns along the lattice axis closer to the image's x and increasing with x, rows with y.

    Returns
    -------
    The :class:`BinLattice`, fitted by least squares on every centre.

    Raises
    ------
    ValueError
        If the bins are too few, do not sit on a square lattice (median residual above 5 % of the pitch), or
        the pitch differs from ``side_um`` by more than 1 %.
    """
    centers_um = np.asarray(centers_um, dtype=float)
    n = len(centers_um)
    if indices is None:
        fit = fit_lattice(centers_um)
        basis, idx = fit.basis, fit.coords.astype(float)
        if abs(basis[0, 0]) < abs(basis[0, 1]):  # columns along the axis closer to the image's x, rows to its y
            basis, idx = basis[:, ::-1], idx[:, ::-1]
        idx = idx * np.where(np.diag(basis) < 0, -1.0, 1.0)  # increasing with x and with y
        source = "centres"
    else:
        idx = np.asarray(indices, dtype=float).reshape(n, 2)
        source = "array_row/array_col"
    if n < 4 or np.linalg.matrix_rank(np.column_stack([idx, np.ones(n)])) < 3:
        msg = f"The {n} measured bins do not span a 2-D lattice: at least 4 bins in two rows and two columns needed."
        raise ValueError(msg)
    aff, *_ = np.linalg.lstsq(np.column_stack([idx, np.ones(n)]), centers_um, rcond=None)
    sign = 1.0 if np.linalg.det(aff[:2]) >= 0 else -1.0  # rows running the other way: a reflected lattice
    c, r = idx[:, 0], sign * idx[:, 1]
    zero, one = np.zeros(n), np.ones(n)
    # x = a·c − b·r + tx, y = b·c + a·r + ty: a rotation by atan2(b, a) and a pitch of hypot(a, b)
    design = np.concatenate([np.column_stack([c, -r, one, zero]), np.column_stack([r, c, zero, one])])
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, np.concatenate([centers_um[:, 0], centers_um[:, 1]]), rcond=None)
    pitch = float(np.hypot(a, b))
    u = np.array([a, b]) / pitch
    v = sign * np.array([-u[1], u[0]])
    origin = np.array([tx, ty])
    fitted = origin + pitch * (idx[:, :1] * u + idx[:, 1:] * v)
    offsets = centers_um - fitted
    resid = float(np.median(np.linalg.norm(offsets, axis=1)))
    if resid > _RESID_MAX * pitch:
        msg = (
            f"The measured bins ({source}) do not sit on a square lattice: median residual {resid:.3g} µm for a "
            f"{pitch:.3g} µm pitch."
        )
        raise ValueError(msg)
    if abs(pitch - side_um) > _PITCH_RTOL * side_um:
        msg = f"The measured bins' lattice has a {pitch:.4g} µm pitch for {side_um:.4g} µm squares: they do not tile."
        raise ValueError(msg)
    angle = float(np.degrees(np.arctan2(u[1], u[0])))
    return BinLattice(
        corner_um=origin - pitch / 2 * (u + v),
        axes=np.column_stack([u, v]),
        side_um=pitch,
        rotation_deg=rotation if abs(rotation := (angle + 45.0) % 90.0 - 45.0) > 1e-12 else 0.0,
        residual_um=resid,
        index=np.round(idx).astype(np.int64),
        offsets_um=offsets,
        source=source,
    )


def bin_indices(table: AnnData | None, geo: SpotGeometry) -> np.ndarray | None:
    """``(n, 2)`` ``(array_col, array_row)`` of the spots of ``geo`` from their table, or ``None`` without them."""
    if table is None or not {"array_row", "array_col"} <= set(table.obs.columns):
        return None
    arr = table.obs[["array_col", "array_row"]].to_numpy()[np.asarray(geo.rows)]
    try:
        arr = arr.astype(float)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
        return None
    return arr.astype(np.int64)


def measured_bin_lattice(geo: SpotGeometry, indices: np.ndarray | None = None) -> BinLattice | None:
    """The lattice of ``geo``'s measured bins when they are squares on one, else ``None`` (the reason logged).

    Array indices that do not fit (e.g. those of another slide) are ignored in favour of the centres.
    """
    if geo.kind != "square" or geo.n_spots < 4:
        return None
    sources = ([indices] if indices is not None else []) + [None]
    for idx in sources:
        try:
            return fit_bin_lattice(geo.centers_um, geo.diameter_um, idx)
        except ValueError as err:
            logger.info("Bins on the image axes: %s", err)
    return None


def nesting(side_um: float, bin_um: float) -> tuple[str, int] | None:
    """``("split", k)`` when ``bin_um`` is ``side_um / k``, ``("group", k)`` when it is ``k · side_um``, else ``None``."""
    for kind, ratio in (("split", side_um / bin_um), ("group", bin_um / side_um)):
        k = round(ratio)
        if k >= 1 and abs(ratio - k) <= _NEST_RTOL * ratio:
            return kind, k
    return None


def lattice_bin_centers(
    lat: BinLattice, bin_um: float, centers_um: np.ndarray, reach_um: float, extent_um: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray] | None:
    """Centres (µm), side and ``(i, j)`` lattice indices of ``bin_um`` squares on ``lat``, or ``None`` if they do not nest.

    With ``bin_um = side / k`` each measured bin holds ``k × k`` squares that follow it exactly (its offset from
    the fitted lattice included), so ``k = 1`` gives the measured centres; with ``bin_um = k · side`` a square
    groups ``k × k`` measured bins, from bin ``(0, 0)`` as Space Ranger nests its bins. Squares are kept within
    ``reach_um`` (per axis) of the measured bins' bounding box in the lattice frame, with their centre inside
    ``[0, extent_um]``. The side is ``bin_um`` itself when the pitch is nominal (within 1e-6), else the pitch
    divided (or multiplied) by ``k``.
    """
    nest = nesting(lat.side_um, bin_um)
    if nest is None:
        return None
    kind, k = nest
    step = lat.side_um / k if kind == "split" else lat.side_um * k
    step = bin_um if abs(step - bin_um) <= _NEST_RTOL * bin_um else step  # rounding noise of the fit
    q = lat.to_lattice(centers_um)
    lo = np.floor((q.min(0) - reach_um) / step).astype(np.int64)
    hi = np.ceil((q.max(0) + reach_um) / step).astype(np.int64)
    gi, gj = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]))
    ij = np.column_stack([gi.ravel(), gj.ravel()])
    xy = lat.corner_um + ((ij + 0.5) * step) @ lat.axes.T
    if kind == "split":  # squares inside a measured bin follow that bin's own position
        cell = np.floor_divide(ij, k)
        span = int(max(np.abs(lat.index).max(), np.abs(cell).max())) + 1
        enc_bins = lat.index[:, 0] * (2 * span + 1) + lat.index[:, 1]
        enc = cell[:, 0] * (2 * span + 1) + cell[:, 1]
        order = np.argsort(enc_bins)
        pos = np.clip(np.searchsorted(enc_bins, enc, sorter=order), 0, len(order) - 1)
        hit = enc_bins[order[pos]] == enc
        xy[hit] += lat.offsets_um[order[pos[hit]]]
    inside = (xy >= 0).all(1) & (xy <= np.asarray(extent_um, dtype=float)).all(1)
    return xy[inside], float(step), ij[inside]
