"""The parameters that fully determine a synthetic slide (:class:`SyntheticParams`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["SyntheticParams"]

#: Side in µm of the bins of ``layout="visium_hd"`` (Space Ranger's 8 µm bins).
HD_BIN_UM = 8.0
#: Diameter in µm of a Visium spot: ``depth`` is per this disk's area in every layout.
VISIUM_SPOT_UM = 55.0


@dataclass
class SyntheticParams:
    """Parameters that fully determine a synthetic slide (stored in ``table.uns["synthetic"]``).

    :func:`synthetic` sets the fields it takes as arguments and keeps the defaults of the others;
    :func:`synthetic_truth` rebuilds a :class:`SyntheticTissue` from them. All lengths are in µm except
    ``image_size``, which is in pixels.

    Attributes
    ----------
    image_size
        ``(height, width)`` of the image's level 0, in pixels.
    microns_per_pixel
        Size of a level-0 pixel in µm; the tissue spans ``image_size`` times this.
    layout
        Spot layout: ``"visium"`` (55 µm spots on a hexagonal lattice of 100 µm pitch), ``"st"`` (100 µm
        spots on a square lattice of 200 µm pitch) or ``"visium_hd"`` (8 µm square bins tiling the tissue).
    n_genes
        Number of genes (named ``gene_0``, ``gene_1``, ...).
    n_regions
        Number of spatial domains, each with its own nuclei, stain and fibre texture.
    image_signal
        Share ``s``, between 0 and 1, of expression driven by image-visible features; the remaining
        ``1 - s`` follows smooth fields that the image does not show.
    depth
        Expected counts per unit rate: a spot's counts are Poisson with mean ``depth`` times the mean rate
        over its disk, so larger values mean less sampling noise. For ``"visium_hd"`` it stays per Visium
        spot area: a bin's mean is ``depth × bin area / (π · 27.5²) × the mean rate over the bin``, so that
        the bins inside a 55 µm disk sum to about a Visium spot's counts.
    region_scale_um
        Length scale in µm of the random fields whose argmax defines the domains (the image-invisible fields
        use twice this scale).
    cell_um
        Side in µm of the jittered grid of cells, each holding at most one nucleus.
    seed
        Seed of every random draw (appearance, expression weights, nuclei, image noise and counts).
    stain_genes
        Fraction of the genes (the first ``round(stain_genes * n_genes)``) whose expression is a non-negative
        combination of the hematoxylin and eosin concentrations and nothing else.
    stain_h
        Generating optical-density vector (R, G, B) of hematoxylin, normalised to unit length when
        rendering; deliberately not Ruifrok–Johnston's, so that methods cannot rely on the textbook vectors.
    stain_e
        Generating optical-density vector (R, G, B) of eosin, normalised to unit length when rendering.
    extra
        Free-form metadata stored with the parameters; the generator does not read it.
    """

    image_size: tuple[int, int] = (1024, 1024)
    microns_per_pixel: float = 1.0
    layout: Literal["visium", "st", "visium_hd"] = "visium"
    n_genes: int = 50
    n_regions: int = 4
    image_signal: float = 0.8
    depth: float = 20.0
    region_scale_um: float = 600.0
    cell_um: float = 11.0
    seed: int = 0
    stain_genes: float = 0.0
    stain_h: tuple[float, float, float] = (0.55, 0.76, 0.35)
    stain_e: tuple[float, float, float] = (0.12, 0.86, 0.49)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spot_diameter_um(self) -> float:
        """55 µm (Visium), 100 µm (legacy ST) or the bin side, 8 µm (Visium HD)."""
        return {"visium": 55.0, "visium_hd": HD_BIN_UM}.get(self.layout, 100.0)

    @property
    def pitch_um(self) -> float:
        """Centre-to-centre spacing: 100 µm (Visium), 200 µm (ST) or 8 µm (Visium HD: the bins tile)."""
        return {"visium": 100.0, "visium_hd": HD_BIN_UM}.get(self.layout, 200.0)

    @property
    def counts_scale(self) -> float:
        """Expected counts of a region per unit rate and unit ``depth``: 1, or a bin's area over a Visium spot's."""
        if self.layout == "visium_hd":
            return HD_BIN_UM**2 / (np.pi * (VISIUM_SPOT_UM / 2) ** 2)
        return 1.0
