"""One dense feature pass per slide and call, shared by the spots and every grid read from it.

A backbone with a dense path (``has_dense``: ``handcrafted``, and convolutional timm backbones whose embedding
is the average of a local feature map, such as resnet18) computes its maps once over the part of the slide
that the call needs, as a :class:`~stpredict.models.backbones._cellmap.CellMap`; the spots' features, a
pseudo-spot grid's and µm bins' are then all read from that one map. :class:`DenseMaps` owns the maps of one
call (they are dropped with it) and decides, when ``dense`` is ``None``, whether the map or one window per
region is cheaper.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._logging import get_logger
from .._settings import settings

if TYPE_CHECKING:
    from ..models.backbones import Backbone
    from ..models.backbones._cellmap import CellMap
    from ._options import Compute

__all__ = ["CELL_UM", "DenseMaps"]

logger = get_logger(__name__)

#: side of a map cell in µm of the hand-crafted maps: windows are read at a quarter of a 16 µm bin, sub-cell
#: positions bilinearly (a convolutional backbone's cells are its stride at the windows' µm/px instead)
CELL_UM = 4.0


def check_dense(backbone: Backbone | None, *, dense: bool | None) -> None:
    """Refuse ``dense=True`` for a backbone without a dense path, saying why and naming the ones that have it."""
    if dense is True and backbone is not None and not getattr(backbone, "has_dense", False):
        why = getattr(backbone, "dense_reason", None)
        msg = (
            f"dense=True: backbone {backbone.name!r} has no dense feature map"
            + (f" ({why})" if why else "")
            + ". Dense maps exist for 'handcrafted' and for convolutional timm backbones whose embedding is the "
            "average of a local feature map (resnet*, resnext*, densenet*, convnext v1, regnetx*, mobilenetv2*, "
            "efficientnet-lite*); ViTs and models with squeeze-excitation embed one window at a time. Pass "
            "dense=None (windows for spots and pseudo-spots, a lattice of windows for bins) or such a backbone."
        )
        raise ValueError(msg)


def map_cell_um(backbone: Backbone, patch_size_um: float) -> float:
    """Cell side in µm of ``backbone``'s map for windows of ``patch_size_um`` (:data:`CELL_UM` by default)."""
    cell = getattr(backbone, "dense_cell_um", None)
    return float(cell(patch_size_um)) if cell is not None else CELL_UM


class DenseMaps:
    """The dense feature maps of one call: one per slide image, computed once over all that is asked of it.

    :meth:`plan` commits to a map and widens the area it will cover before it is computed (a verb that reads
    its grid from the map plans it before it embeds the spots, so one pass serves both); :meth:`features` reads windows, computing the map on first
    use or again, over the union, when a request falls outside it.

    Parameters
    ----------
    backbone
        A backbone with ``has_dense`` (its ``feature_map``/``map_features``/``read_um``).
    patch_size_um
        Window side in µm.
    """

    def __init__(self, backbone: Backbone, patch_size_um: float) -> None:
        self.backbone = backbone
        self.patch_size_um = float(patch_size_um)
        self.half_um = float(backbone.read_um(self.patch_size_um)) / 2 if backbone.has_dense else 0.0
        #: side of the map's cells in µm
        self.cell_um = map_cell_um(backbone, self.patch_size_um) if backbone.has_dense else CELL_UM
        self._maps: dict[int, CellMap] = {}
        #: the level lists the maps are keyed by (``id``), held so that no other list can take their ids
        self._levels: dict[int, list] = {}
        self._plans: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _bounds(self, centers_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from ..models.backbones._cellmap import map_bounds

        return map_bounds(centers_um, self.half_um, self.cell_um)

    def plan(self, levels: list, centers_um: np.ndarray) -> None:
        """Commit to a map of this image that also covers windows at ``centers_um`` (computed on first use)."""
        if len(centers_um) == 0:
            return
        key = id(levels)
        self._plans[key] = _union(self._bounds(centers_um), self._plans.get(key))
        self._levels[key] = levels

    def use(self, levels: list, centers_um: np.ndarray, read_px: int, *, dense: bool | None) -> bool:
        """Whether windows at ``centers_um`` are read from the map (``dense=None``: when that is cheaper).

        ``dense=None`` takes a map only for a backbone whose ``dense_by_default`` allows it (``handcrafted``;
        not the convolutional backbones, whose map features only approximate the windows').

        The map costs the pixels of its area once (a convolutional backbone's tiles with their margins:
        ``map_cost_px``); windows cost ``read_px²`` pixels each (the context view at the analysis resolution).
        A map this call already holds, or has planned, counts as paid for.
        """
        if not getattr(self.backbone, "has_dense", False) or dense is False or len(centers_um) == 0:
            return False
        if dense is True:
            return True
        if not getattr(self.backbone, "dense_by_default", True):
            return False  # a map whose features only approximate the windows' serves on request only
        key = id(levels)
        lo, hi = self._bounds(centers_um)
        if key in self._maps and self._maps[key].covers(lo, hi):
            return True
        plan = self._plans.get(key)
        if plan is not None and np.all(plan[0] <= lo) and np.all(plan[1] >= hi):
            return True
        cost = getattr(self.backbone, "map_cost_px", None)
        if cost is not None:
            area_px = float(cost(lo, hi, self.patch_size_um))
        else:
            mpp = float(getattr(self.backbone, "mpp", 1.0))
            area_px = float(np.prod(np.maximum(hi - lo, 0.0))) / mpp**2
        return len(centers_um) * float(read_px) ** 2 > area_px

    def features(
        self, levels: list, mpp_xy: tuple[float, float], centers_um: np.ndarray, window_um: float, run: Compute
    ) -> np.ndarray:
        """``(n, dim)`` features of windows of ``window_um`` at ``centers_um`` (µm), read from the map."""
        from ..pp._tiles import tile_reader

        key = id(levels)
        lo, hi = self._bounds(centers_um)
        cmap = self._maps.get(key)
        if cmap is None or not cmap.covers(lo, hi):
            lo, hi = _union((lo, hi), self._plans.get(key))
            lo, hi = _union((lo, hi), None if cmap is None else (cmap.lo_um, cmap.hi_um))
            show = settings.progress if run.progress is None else run.progress
            # torch backbones run where the call's device and batch size say
            torch_kw = {"device": run.device, "batch_size": run.batch_size} if hasattr(self.backbone, "to") else {}
            cmap = self.backbone.feature_map(
                tile_reader(levels, mpp_xy), lo, hi, cell_um=self.cell_um, progress=show, **torch_kw
            )
            self._maps[key] = cmap
            self._levels[key] = levels
            logger.info(
                "%s feature map: %d × %d cells of %g µm (%.0f MB).",
                self.backbone.name,
                *cmap.shape,
                self.cell_um,
                cmap.nbytes / 2**20,
            )
        return self.backbone.map_features(cmap, centers_um, window_um)

    def release(self, levels: list | None = None) -> None:
        """Drop the computed maps, or only the one of the slide read through ``levels``.

        A later :meth:`features` computes a dropped map again, over its plan.
        """
        if levels is None:
            self._maps.clear()
        else:
            self._maps.pop(id(levels), None)

    def record(self) -> dict[str, Any]:
        """How features read from a map are identified in records (a CNN's: stride and tile margin too)."""
        rec: dict[str, Any] = {"path": "dense map", "cell_um": self.cell_um}
        spec = getattr(self.backbone, "dense_spec", None)
        if spec is not None:
            rec.update({"stride_px": spec.stride, "margin_px": spec.margin_px, "receptive_field_px": spec.rf_px})
        return rec


def _union(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """The rectangle ``(lo, hi)`` holding both ``a`` and ``b`` (``a`` when ``b`` is ``None``)."""
    if b is None:
        return a
    return np.minimum(a[0], b[0]), np.maximum(a[1], b[1])
