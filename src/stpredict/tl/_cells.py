"""``superresolve(grid="cells", shapes_key=...)``: the argument checks, run before any work."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..pp._cells import CELLS_GRID, resolve_cells
from ..pp._spots import resolve_elements

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ..pp._cells import CellShapes
    from ._options import Elements

__all__ = ["cells_argument"]


def cells_argument(
    sdata: SpatialData, grid: str, bin_size: float | None, shapes_key: str | None, elements: Elements
) -> CellShapes | None:
    """The cells of ``grid="cells"`` resolved on the H&E (see :func:`~stpredict.pp._cells.resolve_cells`), else ``None``.

    Raises
    ------
    ValueError
        If ``shapes_key`` comes with another grid or with ``bin_size``; and every error of ``resolve_cells``.
    """
    if grid != CELLS_GRID and shapes_key is None:
        return None
    if grid != CELLS_GRID or bin_size is not None:
        msg = f"shapes_key goes with grid='cells' only (got grid={grid!r}, bin_size={bin_size!r})."
        raise ValueError(msg)
    image_key, _, _ = resolve_elements(
        sdata, image_key=elements.image_key, spots_key=elements.spots_key, table_key=elements.table_key
    )
    return resolve_cells(sdata, shapes_key, image_key=image_key)
