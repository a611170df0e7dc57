"""Checks run before any heavy work: element keys, table linkage, counts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ._args import check_layer

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from spatialdata import SpatialData

    from .models._base import SlideData

__all__ = [
    "check_element_free",
    "LOG_LIKE_MAX",
    "MIN_SPOT_PX",
    "check_count_values",
    "check_counts",
    "warn_coarse_image",
    "pick_key",
    "table_region",
]


def _listing(keys) -> str:
    keys = list(keys)
    return ", ".join(repr(k) for k in keys) if keys else "none"


def pick_key(sdata: SpatialData, kind: str, key: str | None, *, candidates: list[str] | None = None) -> str:
    """Return ``key`` if it names an element of ``kind``; if ``None``, the only candidate.

    Raises a :class:`KeyError` that lists what exists.
    """
    elements = getattr(sdata, kind)
    arg = {"images": "image_key", "shapes": "spots_key", "tables": "table_key"}.get(kind, f"{kind}_key")
    if key is not None:
        if key not in elements:
            from ._args import close_matches  # case-insensitive: "HE" finds "he"

            close = close_matches(key, elements, n=1)
            hint = f" Did you mean {arg}={close[0]!r}?" if close else ""
            msg = f"No {kind[:-1]} element {key!r} in the SpatialData; it has {kind}: {_listing(elements)}.{hint}"
            raise KeyError(msg)
        return key
    pool = list(elements) if candidates is None else candidates
    if len(pool) == 1:
        return pool[0]
    if not pool:
        msg = f"The SpatialData has no {kind} element to use; it has {kind}: {_listing(elements)}."
        raise KeyError(msg)
    msg = f"Several {kind} elements could be meant ({_listing(pool)}): pass {arg}=... to choose one."
    raise KeyError(msg)


def check_element_free(sdata: SpatialData, name: str, kind: str, *, overwrite: bool) -> None:
    """Raise a ``KeyError`` if an element of ``sdata`` is named ``name`` (any case), naming it and the fix.

    The ``kind`` element (``"shapes"``, ``"tables"``, ...) of exactly that name may be replaced with ``overwrite``.
    """
    for found_kind, found, _ in sdata.gen_elements():
        if found.lower() != name.lower():
            continue
        same = found_kind == kind and found == name
        if overwrite and same:
            continue
        what = found_kind[:-1]
        article = "an" if what[0] in "aeiou" else "a"
        hint = " or overwrite=True." if same else "."
        msg = f"The SpatialData already has {article} {what} element {found!r}: pass another key_added{hint}"
        raise KeyError(msg)


def table_region(table: AnnData) -> tuple[list[str], str, str]:
    """``(regions, region_key, instance_key)`` of a spatialdata table."""
    attrs = table.uns.get("spatialdata_attrs", {})
    region = attrs.get("region")
    regions = [region] if isinstance(region, str) else list(region or [])
    return regions, attrs.get("region_key"), attrs.get("instance_key")


#: Non-integer values that all stay under this look log-transformed, not counts: log1p of counts per 10,000
#: stays under 10, log1p of counts per million under 14, while counts of real spots reach hundreds.
LOG_LIKE_MAX = 30.0


def check_count_values(X, where: str, *, fix: str, require_integer: bool = False) -> None:
    """Raise unless ``X`` (array or sparse) holds finite, non-negative counts that do not look log-normalised.

    Non-integer values larger than :data:`LOG_LIKE_MAX` are taken as counts (ambient-corrected counts are
    not whole numbers) with a warning, unless ``require_integer`` (pooling, which sums raw counts) refuses
    them. ``where`` names the matrix in the messages, ``fix`` says how to pass the raw counts instead.
    """
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    if not data.size:
        return
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        msg = f"The {where} has dtype {data.dtype}; counts must be numbers. {fix}"
        raise TypeError(msg)
    finite = np.isfinite(data)
    if not finite.all():
        n = int((~finite).sum())
        msg = f"The {where} has {n} NaN or infinite values; counts must be finite. Fill or drop them first."
        raise ValueError(msg)
    lo, hi = data.min(), data.max()
    if lo < 0:
        msg = f"The {where} has negative values (min {lo:g}); stpredict expects raw counts. {fix}"
        raise ValueError(msg)
    if not np.issubdtype(data.dtype, np.floating):
        return
    fractional = data != np.round(data)
    if not fractional.any():
        return
    example = float(data[np.flatnonzero(fractional)[0]])
    if hi <= LOG_LIKE_MAX:
        msg = (
            f"The {where} holds non-integer values no larger than {hi:.3g} (e.g. {example:.4g}): they look "
            "log-normalised (e.g. by sc.pp.log1p), not counts. stpredict normalises and log-transforms raw counts "
            f"itself, so fitting on these would transform them twice. {fix} If they really are counts that are not "
            "whole numbers, round them (numpy.rint) into a layer and pass that layer."
        )
        raise ValueError(msg)
    if require_integer:
        msg = (
            f"The {where} holds {int(fractional.sum())} non-integer values (e.g. {example:.4g}): this step sums raw "
            f"counts, which must be whole numbers. {fix}"
        )
        raise ValueError(msg)
    from ._logging import get_logger

    get_logger(__name__).warning(
        "The %s holds non-integer values (e.g. %.4g, max %.4g): taken as counts (e.g. ambient-corrected). If they "
        "are normalised values, pass the raw counts instead.", where, example, hi,
    )  # fmt: skip


def check_counts(table: AnnData, table_key: str, *, layer: str | None = None, require_integer: bool = False) -> None:
    """Raise unless the table holds finite, non-negative counts of distinctly named genes.

    Non-integer values that look log-normalised are refused too, and any non-integer value with
    ``require_integer`` (see :func:`check_count_values`).
    """
    check_layer(table, table_key, layer)  # the one message for a missing layer (verbs call it first)
    X = table.layers[layer] if layer is not None else table.X
    where = f"table {table_key!r}" + (f" layer {layer!r}" if layer else " .X")
    if X is None or table.n_obs == 0 or table.n_vars == 0:
        msg = f"The {where} is empty ({table.n_obs} observations × {table.n_vars} genes): nothing to fit on."
        if table.n_vars == 0:
            msg += (
                " Fitting needs measured counts of at least one gene; an H&E-only slide (no genes) can only be "
                "predicted, with a model fitted on another slide."
            )
        raise ValueError(msg)
    dup = table.var_names[table.var_names.duplicated()]
    if len(dup):
        msg = (
            f"The table {table_key!r} names {len(dup)} genes more than once (e.g. {list(dup.unique()[:3])}): "
            f"a gene must be one column. Merge the duplicates, or rename them with "
            f"sdata.tables[{table_key!r}].var_names_make_unique()."
        )
        raise ValueError(msg)
    others = [str(k) for k in table.layers if k != layer]
    raw = [k for k in others if k.lower() in ("counts", "raw", "raw_counts", "umi", "umis")]
    if raw:
        fix = f"Pass the raw counts with layer={raw[0]!r} (a layer of this table)."
    elif others:
        fix = f"Pass the raw counts with layer=... (its layers: {_listing(others)}), or put them in .X."
    else:
        fix = "Pass the raw counts: put them in .X, or in a layer named by layer=..."
    check_count_values(X, where, fix=fix, require_integer=require_integer)


#: A spot narrower than this (pixels of the finest image level) shows colour, hardly any histology.
MIN_SPOT_PX = 12.0


def warn_coarse_image(slides: Sequence[SlideData]) -> None:
    """Warn about each slide whose spots are under :data:`MIN_SPOT_PX` pixels across (a low-resolution image)."""
    from ._logging import get_logger

    for s in slides:
        if s.spot_diameter_px < MIN_SPOT_PX:
            mpp = float(np.mean(s.microns_per_pixel_xy))
            get_logger(__name__).warning(
                "Slide %r: a spot is %.1f px across in its finest image (%.2f µm/px), under %g px: the image shows "
                "little beyond colour and predictions from it are near chance. Use the full-resolution H&E (the "
                "original scan, or Space Ranger's hires image), not a low-resolution one.",
                s.name, s.spot_diameter_px, mpp, MIN_SPOT_PX,
            )  # fmt: skip
