"""Writing stpredict's results back into the zarr store a SpatialData was read from."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._keys import UNS_KEY
from .._logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spatialdata import SpatialData

__all__ = ["write_back"]

logger = get_logger(__name__)

#: element types whose on-disk copy may be replaced: they are held in memory once read
_REPLACEABLE = ("tables", "shapes")


def write_back(
    sdata: SpatialData,
    elements: str | Sequence[str] | None = None,
    *,
    consolidate: bool = True,
) -> list[str]:
    """Write new or updated elements into the zarr store ``sdata`` was read from.

    ``stp.tl`` verbs change the object in memory only (``predict`` adds layers to a table, ``superresolve``
    adds shapes, a table and optionally an image). This writes them into ``sdata.path`` so that the store
    read back holds them; spatialdata cannot overwrite an element in its own store, so an element already
    on disk is deleted there and written again.

    Parameters
    ----------
    sdata
        A SpatialData read from (or written to) a zarr store.
    elements
        Element names to write. ``None``: every element not yet in the store, plus every table carrying
        stpredict results (``uns["stpredict"]``).
    consolidate
        Rewrite the store's consolidated metadata afterwards (spatialdata's readers use it).

    Returns
    -------
    The names written, in order.

    Raises
    ------
    ValueError
        If ``sdata`` is not backed by a zarr store, or an element to replace is an image, labels or points
        element already in the store: those are read lazily from the store itself, so deleting them there
        would destroy the data being written. Nothing is written in that case.
    KeyError
        If a named element is not in ``sdata``.

    Examples
    --------
    >>> import spatialdata as sd, stpredict as stp  # doctest: +SKIP
    >>> sdata = sd.read_zarr("slide.zarr")  # doctest: +SKIP
    >>> stp.tl.predict(sdata, "ridge")  # doctest: +SKIP
    >>> stp.tl.superresolve(sdata, "ridge", grid="ps4")  # doctest: +SKIP
    >>> stp.io.write_back(sdata)  # doctest: +SKIP
    ['table', 'spots_ps4', 'ridge_spots_ps4']
    """
    if not sdata.is_backed() or sdata.path is None:
        msg = (
            "This SpatialData is not backed by a zarr store (it was not read with spatialdata.read_zarr nor "
            "written with .write): write the whole object with sdata.write(path) instead."
        )
        raise ValueError(msg)
    in_memory = {p.split("/", 1)[1]: p.split("/", 1)[0] for p in sdata.elements_paths_in_memory()}
    on_disk = set(sdata.elements_paths_on_disk())
    if elements is None:
        names = [n for n, kind in in_memory.items() if f"{kind}/{n}" not in on_disk]
        names += [
            n
            for n, kind in in_memory.items()
            if kind == "tables" and f"{kind}/{n}" in on_disk and UNS_KEY in sdata.tables[n].uns
        ]
    else:
        names = [elements] if isinstance(elements, str) else list(elements)
        missing = [n for n in names if n not in in_memory]
        if missing:
            msg = f"Elements {missing} are not in this SpatialData; it holds {sorted(in_memory)}."
            raise KeyError(msg)
    names = list(dict.fromkeys(names))
    replace = [n for n in names if f"{in_memory[n]}/{n}" in on_disk]
    lazy = [n for n in replace if in_memory[n] not in _REPLACEABLE]
    if lazy:
        msg = (
            f"Elements {lazy} are already in {sdata.path} and are read lazily from it: they cannot be replaced "
            "in place. Write the object to a new store with sdata.write(new_path) instead."
        )
        raise ValueError(msg)
    for n in names:
        if n in replace:
            sdata.delete_element_from_disk(n)
        try:
            sdata.write_element(n)
        except Exception as e:
            if n in replace:
                msg = (
                    f"Writing {n!r} into {sdata.path} failed after its old copy there was deleted; the element "
                    f"is intact in memory: fix the cause and call write_back(sdata, {n!r}) again."
                )
                raise RuntimeError(msg) from e
            raise
        logger.info("Wrote %s %r into %s%s.", in_memory[n], n, sdata.path, " (replaced)" if n in replace else "")
    if consolidate and names:
        sdata.write_consolidated_metadata()
    return names
