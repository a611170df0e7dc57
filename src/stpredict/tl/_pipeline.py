"""The one input pipeline of the verbs: from SpatialData objects to what a predictor consumes.

Every verb and :func:`~stpredict.tl.cross_validate` goes through here, for a predictor given by name,
fitted or loaded alike:

1. :func:`resolve_model` turns ``model=`` into a predictor and says whether it is fitted;
2. :func:`prepare_training` (a model to fit), :func:`prepare_prediction` (a fitted model) or
   :func:`prepare_slides` (cross-validation, panels chosen per fold) resolve every slide's elements and
   geometry once, choose the gene panel, build the :class:`~stpredict.models.SlideData` and the backbone,
   and normalise the slides' stains onto their reference when asked (:mod:`stpredict.tl._transfer`), all
   before any heavy work;
3. :meth:`Inputs.embed` computes or reuses the spots' embeddings through one
   :class:`~stpredict.tl._embeddings.EmbeddingCache`, which alone writes ``obsm``/``uns`` — at
   :meth:`Inputs.commit`, once the verb's work has succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._args import check_embedding_key
from .._image import image_levels
from .._logging import get_logger
from .._validate import warn_coarse_image
from ..models._base import SlideData
from ._commit import Staged
from ._embeddings import EmbeddingCache
from ._models import check_fitted_backbone, resolve_backbone, slide_fingerprint
from ._options import Compute, Elements
from ._pipeline_checks import check_enough_spots, distinct_names, require_measured, spot_geometry
from ._targets import preprocessing_record, select_genes, targets
from ._transfer import (
    SlideStains,
    StainCopies,
    Transfer,
    fitted_transfer,
    normalize_training,
    resolve_stains,
    standardize,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    from anndata import AnnData
    from spatialdata import SpatialData

    from ..models._base import Predictor
    from ..models.backbones import Backbone
    from ..pp._spots import SpotGeometry
    from ..pp._stain import StainNormalizer

__all__ = [
    "Compute",
    "Elements",
    "Inputs",
    "embed_slide",
    "prepare_prediction",
    "prepare_slides",
    "prepare_training",
    "require_measured",
    "slide_data",
    "spot_geometry",
    "spot_kind",
]

logger = get_logger(__name__)


# ------------------------------------------------------------------------------------------------------
# slides (resolved and checked in :mod:`stpredict.tl._pipeline_checks`)
# ------------------------------------------------------------------------------------------------------
def spot_kind(slide: SlideData) -> str:
    """How predictors see a slide's measured regions: ``"square"`` (Visium HD bins) or ``"circle"``.

    Polygons (cells) are measured regions as the disk of their equal-area diameter.
    """
    return str(slide.meta.get("spot_kind", "circle"))


def slide_data(
    sdata: SpatialData, geo: SpotGeometry, *, genes: Sequence[str] | None, layer: str | None, name: str | None = None
) -> SlideData:
    """A :class:`SlideData` of the spots of ``geo``, with the targets of ``genes`` when the table has them all."""
    table = sdata.tables[geo.table_key] if geo.table_key is not None else None
    y = y_lin = lib = None
    if table is not None and genes is not None and table.n_vars > 0 and all(g in table.var_names for g in genes):
        y, y_lin, lib = targets(table, geo.rows, genes, layer)
    default = geo.spots_key
    if table is not None:
        default = table.uns.get("stpredict_source", {}).get("library_id", geo.spots_key)
    return SlideData(
        name=str(name or default),
        centers_px=geo.centers,
        microns_per_pixel_xy=geo.microns_per_pixel_xy,
        spot_diameter_px=geo.diameter,
        image_levels=image_levels(sdata.images[geo.image_key]),
        obs_names=geo.obs_names,
        genes=list(genes) if genes is not None else None,
        y=y,
        y_linear=y_lin,
        library_size=lib,
        meta={
            "image_key": geo.image_key,
            "spots_key": geo.spots_key,
            "table_key": geo.table_key,
            "spot_kind": "square" if geo.kind == "square" else "circle",
        },
    )


@dataclass
class Inputs:
    """Everything a verb needs from one or more slides, validated before any heavy work.

    Attributes
    ----------
    sdatas
        The SpatialData objects, in order.
    geos
        Each slide's spot geometry.
    slides
        Each slide as a predictor sees it (targets of ``genes`` when measured; embeddings after :meth:`embed`).
    genes
        The gene panel (``None`` for cross-validation, where each fold chooses its own).
    gene_selection
        How the panel was chosen.
    backbone
        The backbone of an embedding-based predictor, else ``None``.
    patch_size_um
        Window side in µm of the embeddings.
    layer
        Layer of raw counts (``None``: ``X``).
    transfer
        Stain normalisation and feature standardisation (:mod:`stpredict.tl._transfer`); ``slides`` are already
        normalised onto ``stain_reference`` when it is set.
    stain_reference
        The stain reference the slides were normalised onto (fitted on the training slides, or the model's).
    stains
        The slides' stain statistics (cross-validation normalises per fold through it).
    cache
        The embedding cache (``None`` without a backbone).
    """

    sdatas: list[SpatialData]
    geos: list[SpotGeometry]
    slides: list[SlideData]
    genes: list[str] | None
    gene_selection: str | None
    backbone: Backbone | None
    patch_size_um: float
    layer: str | None = None
    transfer: Transfer = field(default_factory=Transfer)
    stain_reference: StainNormalizer | None = None
    stains: SlideStains | None = field(default=None, repr=False)
    cache: EmbeddingCache | None = field(default=None, repr=False)
    _copies: StainCopies | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.backbone is not None and self.cache is None:
            self.cache = EmbeddingCache(self.backbone, self.patch_size_um)

    def table(self, i: int) -> AnnData | None:
        """The counts table of slide ``i`` (``None`` on an H&E-only slide)."""
        key = self.geos[i].table_key
        return self.sdatas[i].tables[key] if key is not None else None

    @property
    def preprocessing(self) -> dict[str, Any]:
        """How the targets were made (recorded with a predictor fitted on them)."""
        if self.genes is None:
            return {}
        return preprocessing_record(self.genes, self.gene_selection or "given")

    @property
    def backbone_params(self) -> dict[str, Any]:
        """How inputs are made: the backbone's parameters and window, the stain reference and feature norm.

        What a fitted predictor records (``predictor.backbone``) to read and embed a new slide the same way.
        """
        rec: dict[str, Any] = {}
        if self.backbone is not None:
            rec.update(self.backbone.params(), patch_size_um=self.patch_size_um)
        if self.stain_reference is not None:
            rec["stain"] = self.stain_reference.to_record()
        if self.transfer.feature_norm != "none" and self.backbone is not None:
            rec["feature_norm"] = self.transfer.feature_norm
        return rec

    def data_record(self) -> dict[str, Any]:
        """The training data of a predictor fitted on all these slides: names, fingerprints, spots."""
        return {
            "slides": [sl.name for sl in self.slides],
            "fingerprints": [slide_fingerprint(sl) for sl in self.slides],
            "n_spots": int(sum(sl.n for sl in self.slides)),
            **({"stain_augment": self.transfer.stain_augment} if self.transfer.stain_augment else {}),
        }

    def augmented(
        self, slides: Sequence[SlideData], run: Compute, full: dict[str, tuple[int, SlideData]] | None = None
    ) -> list[SlideData]:
        """``stain_augment`` re-stained copies of each training slide (see :class:`~stpredict.tl._transfer.StainCopies`).

        ``full`` maps each name in ``slides`` to the position and whole slide it is spots of (default: :attr:`slides`).
        """
        if self.transfer.stain_augment == 0:
            return []
        if self._copies is None:
            self._copies = StainCopies(self.transfer, self.backbone, self.patch_size_um, self.geos, self.cache)
        full = full if full is not None else {sl.name: (i, sl) for i, sl in enumerate(self.slides)}
        return self._copies.of(slides, full, run)

    def spot_embeddings(self, i: int, run: Compute) -> np.ndarray | None:
        """Slide ``i``'s spot embeddings (reused or computed; ``None`` without a backbone)."""
        return self.slide_embeddings(i, self.slides[i], run)

    def slide_embeddings(
        self, i: int, slide: SlideData, run: Compute, cache: EmbeddingCache | None = None
    ) -> np.ndarray | None:
        """Spot embeddings of slide ``i`` as read from ``slide`` (e.g. a copy normalised onto another reference).

        With ``feature_norm="slide"`` they are standardised with their own statistics, which are kept in
        ``slide.meta["feature_stats"]`` for the slide's grid regions.
        """
        cache = cache or self.cache
        if cache is None:
            return None
        emb = cache.spots(self.table(i), self.geos[i], slide.image_levels, run, stain=slide.meta.get("stain"))
        if self.transfer.feature_norm == "slide":
            emb, slide.meta["feature_stats"] = standardize(emb)
        return emb

    def embed(self, run: Compute, *, keep_maps: bool = True) -> None:
        """Set every slide's ``embeddings`` (reused from ``obsm`` or computed).

        ``keep_maps=False`` drops each slide's dense feature map once its spots are read (a fit on many slides
        then holds one map at a time, not one per slide); keep them when the call reads more windows later.
        """
        for i, slide in enumerate(self.slides):
            slide.embeddings = self.spot_embeddings(i, run)
            if not keep_maps and self.cache is not None:
                self.cache.maps.release(slide.image_levels)

    def commit(self) -> list[int]:
        """Write the computed embeddings into the tables (call once the verb's work has succeeded).

        Returns the positions of the slides whose tables were written.
        """
        staged = Staged()
        written = self.stage(staged)
        staged.apply()
        return written

    def stage(self, staged: Staged) -> list[int]:
        """Stage the computed embeddings' writes into ``staged`` (see :meth:`commit`)."""
        written = self.cache.stage(staged) if self.cache is not None else []
        return [i for i in range(len(self.sdatas)) if any(self.table(i) is t for t in written)]


def _patch_size(backbone: Backbone | None, patch_size_um: float | None) -> float:
    if patch_size_um is not None:
        return float(patch_size_um)
    return float(backbone.default_patch_um) if backbone is not None else 0.0


def prepare_training(
    sdatas: Sequence[SpatialData],
    predictor: Predictor | None,
    *,
    genes: Sequence[str] | int | None,
    n_genes: int,
    backbone: Any,
    weights: Any,
    patch_size_um: float | None,
    elements: Elements,
    layer: str | None,
    transfer: Transfer | None = None,
) -> Inputs:
    """Inputs to fit ``predictor`` on the measured spots of ``sdatas``: panel chosen on all their spots.

    ``predictor`` decides the backbone (see :func:`resolve_backbone`; ``None``: ``backbone`` alone). With a stain
    method in ``transfer``, every slide is normalised onto a reference fitted on all of them.
    """
    sdatas = list(sdatas)
    geos = [spot_geometry(s, elements, need_targets=True, layer=layer) for s in sdatas]
    check_enough_spots(geos)
    tables = [(s.tables[g.table_key], g.rows) for s, g in zip(sdatas, geos, strict=True)]
    panel, how = select_genes(tables, genes, layer=layer, n_genes=n_genes)
    slides = [slide_data(s, g, genes=panel, layer=layer) for s, g in zip(sdatas, geos, strict=True)]
    distinct_names(slides)
    bb = resolve_backbone(predictor, backbone, weights)
    reads_image = bb is not None or (predictor is not None and predictor.consumes != "embeddings")
    if reads_image:
        warn_coarse_image(slides)
    slides, transfer, reference = normalize_training(slides, transfer or Transfer(), reads_image=reads_image)
    return Inputs(sdatas, geos, slides, panel, how, bb, _patch_size(bb, patch_size_um), layer, transfer, reference)


def prepare_prediction(
    sdata: SpatialData,
    predictor: Predictor,
    *,
    backbone: Any,
    weights: Any,
    patch_size_um: float | None,
    elements: Elements,
    layer: str | None,
    stain: str | None = None,
    feature_norm: str | None = None,
    stain_augment: int = 0,
) -> Inputs:
    """Inputs for a fitted ``predictor`` on one slide: its own panel, backbone, window and stain reference.

    ``stain``/``feature_norm`` may only repeat what the model was fitted with (``None``: the model's);
    ``stain_augment`` (training only) is refused.
    """
    check_fitted_backbone(predictor, backbone, patch_size_um)
    if stain_augment:
        msg = f"stain_augment={stain_augment!r} re-stains training slides, and this model is already fitted: omit it."
        raise ValueError(msg)
    transfer, reference = fitted_transfer(predictor, stain, feature_norm)
    # a predictor that reads the slide's measured values (copy, neighbors) gets them checked like a fit's
    geo = spot_geometry(sdata, elements, need_targets=predictor.uses_slide_targets, layer=layer)
    slide = slide_data(sdata, geo, genes=predictor.genes, layer=layer)
    if slide.y is None:
        slide.genes = None
    if predictor.uses_slide_targets and slide.y is None:
        msg = f"{predictor.name} reads the measured values of the slide it predicts, and this slide lacks them for its genes."
        raise ValueError(msg)
    bb = resolve_backbone(predictor, backbone, weights)
    patch_um = float(predictor.backbone.get("patch_size_um", bb.default_patch_um)) if bb is not None else 0.0
    if reference is not None:
        slide = SlideStains(reference.method).normalize(slide, reference)
    genes = list(predictor.genes or [])
    return Inputs([sdata], [geo], [slide], genes, None, bb, patch_um, layer, transfer, reference)


def prepare_slides(
    sdatas: Sequence[SpatialData],
    predictor: Predictor,
    *,
    backbone: Any,
    weights: Any,
    patch_size_um: float | None,
    names: Sequence[str] | None = None,
    transfer: Transfer | None = None,
) -> Inputs:
    """Inputs of measured slides whose panel is chosen later (per fold of a cross-validation).

    The slides are left as they are: with a stain method, each fold normalises them onto a reference fitted on
    its training slides (through ``Inputs.stains``).
    """
    sdatas = list(sdatas)
    geos = [spot_geometry(s, Elements(), need_targets=True, layer=None) for s in sdatas]
    slides = [
        slide_data(s, g, genes=None, layer=None, name=None if names is None else str(names[i]))
        for i, (s, g) in enumerate(zip(sdatas, geos, strict=True))
    ]
    distinct_names(slides)
    bb = resolve_backbone(predictor, backbone, weights)
    reads_image = bb is not None or (predictor is not None and predictor.consumes != "embeddings")
    if reads_image:
        warn_coarse_image(slides)
    transfer, stains = resolve_stains(slides, transfer or Transfer(), reads_image=reads_image)
    return Inputs(sdatas, geos, slides, None, None, bb, _patch_size(bb, patch_size_um), None, transfer, None, stains)


def embed_slide(
    sdata: SpatialData,
    backbone: Backbone,
    patch_size_um: float | None,
    elements: Elements,
    run: Compute,
    *,
    key_added: str | None,
    inplace: bool = True,
) -> tuple[np.ndarray, EmbeddingCache, SpotGeometry]:
    """The spots' embeddings of one slide, with the cache holding them (uncommitted) and the spots' geometry.

    ``cache.computed`` says whether they were computed rather than reused; the caller commits.
    """
    geo = spot_geometry(sdata, elements, need_targets=False, layer=None)
    patch_um = float(patch_size_um if patch_size_um is not None else backbone.default_patch_um)
    table = sdata.tables[geo.table_key] if geo.table_key else None
    if inplace and table is None:
        msg = "There is no table to write embeddings into; use inplace=False to get the array."
        raise ValueError(msg)
    cache = EmbeddingCache(backbone, patch_um, key=key_added)
    if inplace:
        check_embedding_key(table, geo.table_key, cache.key)
    logger.info("embed: %d spots, backbone %s, %g µm windows.", geo.n_spots, backbone.name, patch_um)
    emb = cache.spots(table, geo, image_levels(sdata.images[geo.image_key]), run)
    return emb, cache, geo
