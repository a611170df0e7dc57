"""The parameters that fully determine a synthetic slide (:class:`SyntheticParams`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["SyntheticParams"]


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
        Spot layout: ``"visium"`` (55 µm spots on a hexagonal lattice of 100 µm pitch) or ``"st"`` (100 µm
        spots on a square lattice of 200 µm pitch).
    n_genes
        Number of genes (named ``gene_0``, ``gene_1``, ...).
    n_regions
        Number of spatial domains, each with its own nuclei, stain and fibre texture.
    image_signal
        Share ``s``, between 0 and 1, of expression driven by image-visible features; the remaining
        ``1 - s`` follows smooth fields that the image does not show.
    depth
        Expected counts per unit rate: a spot's counts are Poisson with mean ``depth`` times the mean rate
        over its disk, so larger values mean less sampling noise.
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
    layout: Literal["visium", "st"] = "visium"
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
        """55 µm (Visium) or 100 µm (legacy ST)."""
        return 55.0 if self.layout == "visium" else 100.0

    @property
    def pitch_um(self) -> float:
        """Centre-to-centre spacing: 100 µm (Visium) or 200 µm (ST)."""
        return 100.0 if self.layout == "visium" else 200.0
