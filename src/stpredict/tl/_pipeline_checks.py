"""Checks of a verb's slides before any heavy work: elements, counts, image, enough spots, a measured table."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from .._args import check_layer
from .._image import check_rgb
from .._validate import check_counts
from ..pp._spots import resolve_elements
from ..pp._spots import spots as resolve_spots

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spatialdata import SpatialData

    from ..models._base import SlideData
    from ..pp._spots import SpotGeometry
    from ._options import Elements

__all__ = ["MIN_TRAINING_SPOTS", "check_enough_spots", "distinct_names", "require_measured", "spot_geometry"]


def spot_geometry(sdata: SpatialData, elements: Elements, *, need_targets: bool, layer: str | None) -> SpotGeometry:
    """Resolve the elements and the spots' geometry of one slide; with ``need_targets``, check its counts."""
    image_key, spots_key, table_key = resolve_elements(
        sdata, image_key=elements.image_key, spots_key=elements.spots_key, table_key=elements.table_key,
        need_table=need_targets,
    )  # fmt: skip
    geo = resolve_spots(
        sdata, image_key=image_key, spots_key=spots_key, table_key=table_key,
        microns_per_pixel=elements.microns_per_pixel, check_image=False,
    )  # fmt: skip
    if need_targets:  # check_counts checks the layer first
        check_counts(sdata.tables[table_key][geo.rows], table_key, layer=layer)
    elif table_key is not None:
        check_layer(sdata.tables[table_key], table_key, layer)
    check_rgb(sdata.images[image_key], image_key)  # last: the only check that reads pixels
    return geo


#: Fewest measured spots, over all training slides, that a model is fitted on (genes are chosen among those
#: detected in at least 3 spots).
MIN_TRAINING_SPOTS = 3


def check_enough_spots(geos: Sequence[SpotGeometry]) -> None:
    """Refuse to fit on fewer than :data:`MIN_TRAINING_SPOTS` measured spots over all training slides."""
    n = sum(len(g.rows) for g in geos)
    if n < MIN_TRAINING_SPOTS:
        each = ", ".join(f"{g.spots_key!r}: {len(g.rows)}" for g in geos)
        msg = (
            f"Fitting needs at least {MIN_TRAINING_SPOTS} measured spots; the training slides have {n} ({each}). "
            "Fit on a slide with more spots, or predict this one with a model fitted elsewhere."
        )
        raise ValueError(msg)


def require_measured(sdata: SpatialData, elements: Elements, *, verb: str, model: Any) -> None:
    """A model given by name is fitted on the slide's counts: refuse an H&E-only slide, saying what to pass."""
    _, spots_key, table_key = resolve_elements(
        sdata, image_key=elements.image_key, spots_key=elements.spots_key, table_key=elements.table_key
    )
    if table_key is not None:
        return
    msg = (
        f"stp.tl.{verb}(sdata, {model!r}) fits {model!r} on this slide's measured counts, and no table of counts "
        f"annotates its spots {spots_key!r} (tables: {list(sdata.tables) or 'none'}): an H&E-only slide needs a "
        f"fitted model. Fit one on a measured slide, model = stp.tl.fit(measured, {model!r}), and pass it (or the "
        f"path of its checkpoint): stp.tl.{verb}(sdata, model)."
    )
    raise ValueError(msg)


def distinct_names(slides: Sequence[SlideData]) -> None:
    """Repeated names (e.g. several synthetic slides, all "spots") get their position appended."""
    counts = Counter(sl.name for sl in slides)
    for i, sl in enumerate(slides):
        if counts[sl.name] > 1:
            sl.name = f"{sl.name}#{i}"
