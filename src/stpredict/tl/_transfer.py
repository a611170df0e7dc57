"""What makes a model's inputs transfer across slides: stain normalisation and per-slide feature standardisation.

Both are steps of the one input path (:mod:`stpredict.tl._pipeline`), the same for every backbone and predictor:

- ``stain="macenko"|"reinhard"``: every slide is normalised, as a whole, onto a reference fitted on the training
  slides' tissue pixels (each slide weighted equally); the reference travels with the fitted model
  (``predictor.backbone["stain"]``), so a new slide is normalised onto the same reference before it is embedded
  or read. Windows, dense maps and pixel-trained predictors all read the normalised pixels.
- ``feature_norm="slide"``: each slide's embeddings are standardised with the mean and sd of its own spots'
  embeddings (grid regions of the slide with the same statistics) — a common correction for batch shifts
  between slides; it uses no expression, so a new slide's statistics come from its own image.
- ``stain_augment=k``: training sees, beside each slide, ``k`` copies of it re-stained by a random HED jitter
  of the whole slide (:func:`augment_slide`), with the slide's targets — so the model learns expression that
  does not move with the stain. Training only; nothing is saved with the model but the count.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._logging import get_logger
from ..pp._stain import StainNormalizer
from ..pp._stain_slide import normalized_levels, slide_stain_map, tissue_pixels
from ._embeddings import EmbeddingCache, standardize

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..models._base import Predictor, SlideData
    from ..models.backbones import Backbone
    from ..pp._spots import SpotGeometry
    from ._options import Compute

__all__ = [
    "AUGMENT_ALPHA",
    "AUGMENT_BETA",
    "FEATURE_NORMS",
    "STAIN_METHODS",
    "SlideStains",
    "StainCopies",
    "FIT_STAIN",
    "StainEstimateError",
    "Transfer",
    "augment_slide",
    "clear_stain_estimates",
    "fit_transfer",
    "normalize_training",
    "resolve_stains",
    "fitted_transfer",
    "standardize",
]

logger = get_logger(__name__)

STAIN_METHODS = ("none", "macenko", "reinhard")
#: what a fit normalises with when ``stain`` is not given (see :func:`fit_transfer`)
FIT_STAIN = "macenko"
FEATURE_NORMS = ("none", "slide")
#: fewest tissue pixels a slide must give for its stain statistics
_MIN_TISSUE = 1000
#: HED jitter of a re-stained copy: H and E concentrations scaled by U(1 - a, 1 + a) and shifted by U(-b, b)
#: (optical density); DAB untouched (an H&E has none). Slide-level variation, larger than Tellez et al.'s
#: per-patch "HED-light" (0.05, 0.05).
AUGMENT_ALPHA = 0.15
AUGMENT_BETA = 0.05
_MAX_AUGMENT = 16
#: slides whose tissue-pixel sample and own statistics are kept between calls (they do not depend on the reference)
_KEEP_ESTIMATES = 32
_ESTIMATES: OrderedDict[tuple, Any] = OrderedDict()


def clear_stain_estimates() -> None:
    """Forget the slides' kept stain samples and statistics (:class:`SlideStains`)."""
    _ESTIMATES.clear()


def _slide_token(slide: SlideData) -> tuple | None:
    """What identifies a slide's pixels between calls: its levels' dask names and pixel size (``None``: unnamed)."""
    names = tuple(getattr(lv.array, "name", None) for lv in slide.image_levels)
    if not names or any(n is None for n in names):
        return None
    return (names, tuple(float(v) for v in slide.microns_per_pixel_xy))


def _kept(key: tuple | None, make: Any) -> Any:
    """``make()``, kept under ``key`` for later calls (most recent :data:`_KEEP_ESTIMATES`; ``None``: not kept)."""
    if key is None:
        return make()
    if key in _ESTIMATES:
        _ESTIMATES.move_to_end(key)
        return _ESTIMATES[key]
    value = make()
    _ESTIMATES[key] = value
    while len(_ESTIMATES) > _KEEP_ESTIMATES:
        _ESTIMATES.popitem(last=False)
    return value


@dataclass(frozen=True)
class Transfer:
    """How inputs are made comparable across slides (checked when built: a bad value fails before any work).

    Parameters
    ----------
    stain
        ``"none"``, ``"macenko"`` or ``"reinhard"`` (``None``: ``"none"``).
    feature_norm
        ``"none"`` or ``"slide"`` (``None``: ``"none"``).
    stain_augment
        Re-stained copies of each training slide (0: none).
    fallback
        The stain method is a default, not a request: training slides whose stains cannot be estimated (too few
        tissue pixels) make the fit use ``"none"``, with a warning, instead of failing.
    """

    stain: str | None = "none"
    feature_norm: str | None = "none"
    stain_augment: int = 0
    fallback: bool = False

    def __post_init__(self) -> None:
        stain = "none" if self.stain is None else self.stain
        norm = "none" if self.feature_norm is None else self.feature_norm
        if stain not in STAIN_METHODS:
            msg = f"stain must be one of {STAIN_METHODS} (None: 'none'), got {self.stain!r}."
            raise ValueError(msg)
        if norm not in FEATURE_NORMS:
            msg = f"feature_norm must be one of {FEATURE_NORMS} (None: 'none'), got {self.feature_norm!r}."
            raise ValueError(msg)
        k = self.stain_augment
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k <= _MAX_AUGMENT:
            msg = f"stain_augment must be an integer from 0 to {_MAX_AUGMENT} (re-stained copies per slide), got {k!r}."
            raise ValueError(msg)
        object.__setattr__(self, "stain", stain)
        object.__setattr__(self, "feature_norm", norm)
        object.__setattr__(self, "stain_augment", int(k))


def fit_transfer(stain: str | None, feature_norm: str | None, stain_augment: int) -> Transfer:
    """The options of a fit: ``stain=None`` is :data:`FIT_STAIN`, falling back to ``"none"`` (see :class:`Transfer`)."""
    if stain is None:
        return Transfer(FIT_STAIN, feature_norm, stain_augment, fallback=True)
    return Transfer(stain, feature_norm, stain_augment)


class StainEstimateError(ValueError):
    """A slide's stains cannot be estimated (too few tissue pixels)."""


def fitted_transfer(predictor: Predictor, stain: str | None, feature_norm: str | None) -> tuple[Transfer, Any]:
    """The transfer options and stain reference a fitted predictor was trained with; a different request fails.

    Returns ``(Transfer, StainNormalizer | None)``.
    """
    rec = predictor.backbone or {}
    stain_rec = rec.get("stain")
    fitted = Transfer(stain_rec["method"] if stain_rec else "none", rec.get("feature_norm", "none"))
    asked = Transfer(stain, feature_norm)
    for name, want in (("stain", stain), ("feature_norm", feature_norm)):
        if want is not None and getattr(asked, name) != getattr(fitted, name):
            msg = (
                f"{name}={want!r}: the model was fitted with {name}={getattr(fitted, name)!r}, and predictions "
                f"apply what it was fitted with (omit {name}=... to use it, or fit a model with {name}={want!r})."
            )
            raise ValueError(msg)
    reference = StainNormalizer.from_record(stain_rec) if stain_rec else None
    return fitted, reference


class SlideStains:
    """Each slide's tissue-pixel sample and own stain statistics, computed once; references and normalised slides.

    The sample and statistics of a slide depend only on its pixels, not on the reference: they are kept between
    calls too (keyed by the image levels' dask names, which name their content; the :data:`_KEEP_ESTIMATES` most
    recent slides), so fit, predict and superresolve on one slide estimate its stains once.

    Parameters
    ----------
    method
        ``"macenko"`` or ``"reinhard"``.
    """

    def __init__(self, method: str) -> None:
        self.method = method
        self._pixels: dict[int, np.ndarray] = {}
        self._own: dict[int, StainNormalizer] = {}
        self._keep: dict[int, SlideData] = {}  # the slides the ids refer to
        #: cross-validation folds' embeddings of the normalised slides (by slide position), by reference digest:
        #: folds with the same training slides (leave-one-group-out) share their reference and so their passes
        self.folds: dict[str, dict[int, Any]] = {}

    def pixels(self, slide: SlideData) -> np.ndarray:
        """``(3, n, 1)`` tissue pixels of ``slide`` (sampled once)."""
        key = id(slide)
        if key not in self._pixels:
            token = _slide_token(slide)
            px = _kept(
                None if token is None else ("pixels", *token),
                lambda: _read_only(tissue_pixels(slide.image_levels, slide.microns_per_pixel_xy)),
            )
            if px.shape[1] < _MIN_TISSUE:
                msg = (
                    f"stain={self.method!r}: slide {slide.name!r} has {px.shape[1]} tissue pixels (optical density "
                    f"> 0.15 on every channel), too few to estimate its stains; is the image blank or not an H&E? "
                    "Use stain='none' for this slide."
                )
                raise StainEstimateError(msg)
            self._pixels[key], self._keep[key] = px, slide
        return self._pixels[key]

    def own(self, slide: SlideData) -> StainNormalizer:
        """The slide's own statistics (a normaliser fitted on its tissue pixels)."""
        key = id(slide)
        if key not in self._own:
            px = self.pixels(slide)
            token = _slide_token(slide)
            self._own[key] = _kept(
                None if token is None else ("own", self.method, *token), lambda: StainNormalizer(self.method).fit(px)
            )
        return self._own[key]

    def reference(self, slides: Sequence[SlideData]) -> StainNormalizer:
        """A reference fitted on the tissue pixels of ``slides``, each contributing the same number of pixels.

        One slide's reference is its own statistics (the same fit of the same pixels, kept: :meth:`own`).
        """
        if len(slides) == 1:
            return dataclasses.replace(self.own(slides[0]))
        samples = [self.pixels(sl) for sl in slides]
        n = min(s.shape[1] for s in samples)
        rng = np.random.default_rng(0)
        pooled = np.concatenate(
            [s if s.shape[1] == n else s[:, np.sort(rng.choice(s.shape[1], n, replace=False))] for s in samples], axis=1
        )
        return StainNormalizer(self.method).fit(pooled)

    @staticmethod
    def digest(reference: StainNormalizer) -> str:
        """A digest of ``reference``'s statistics (what normalised slides and their embeddings are keyed by)."""
        return _digest(reference.to_record())

    def normalize(self, slide: SlideData, reference: StainNormalizer) -> SlideData:
        """A copy of ``slide`` whose pixels are normalised onto ``reference`` (``meta["stain"]`` records how).

        When the map leaves every pixel as it is (the slide is the reference's only source, as in a fit on one
        slide), ``slide`` itself is returned: its pixels, and so its cached embeddings, are those of ``stain="none"``.
        """
        smap = slide_stain_map(reference, self.own(slide))
        if smap.is_identity:
            return slide
        rec = {"method": self.method, "reference": self.digest(reference), "slide": _digest(smap.record)}
        meta = dict(slide.meta, stain=rec)
        return dataclasses.replace(slide, image_levels=normalized_levels(slide.image_levels, smap), meta=meta)


def resolve_stains(
    slides: Sequence[SlideData], transfer: Transfer, *, reads_image: bool
) -> tuple[Transfer, SlideStains | None]:
    """The transfer options as applied to ``slides`` and the :class:`SlideStains` they are normalised with.

    ``None`` without a stain method. A default stain method (``transfer.fallback``) becomes ``"none"`` for a model
    that never reads the image and, with a warning, when some slide's stains cannot be estimated (checked here,
    before any fit or fold; the tissue pixels sampled are kept for the references).
    """
    if transfer.fallback and not reads_image:
        transfer = Transfer("none", transfer.feature_norm, transfer.stain_augment)
    if transfer.stain == "none":
        return transfer, None
    stains = SlideStains(transfer.stain)
    if transfer.fallback:
        try:
            for sl in slides:
                stains.pixels(sl)
        except StainEstimateError as e:
            logger.warning("stain=%r (the default) is not applied: %s", transfer.stain, e)
            return Transfer("none", transfer.feature_norm, transfer.stain_augment), None
    return transfer, stains


def normalize_training(
    slides: list[SlideData], transfer: Transfer, *, reads_image: bool = True
) -> tuple[list[SlideData], Transfer, StainNormalizer | None]:
    """Training ``slides`` normalised onto a reference fitted on all of them: ``(slides, transfer, reference)``.

    Without a stain method, as they are (reference ``None``); a default method may fall back to ``"none"``
    (:func:`resolve_stains`).
    """
    transfer, stains = resolve_stains(slides, transfer, reads_image=reads_image)
    if stains is None:
        return slides, transfer, None
    reference = stains.reference(slides)
    return [stains.normalize(sl, reference) for sl in slides], transfer, reference


def augment_slide(slide: SlideData, index: int, copy: int) -> SlideData:
    """Copy ``copy`` of training slide ``index``, re-stained by a random HED jitter of the whole slide.

    The draw depends only on ``(index, copy)``, so a copy is the same in every fold and call.
    """
    from ..pp._stain_slide import hed_jitter_map

    rng = np.random.default_rng([20211, int(index), int(copy)])
    alpha = np.r_[rng.uniform(1 - AUGMENT_ALPHA, 1 + AUGMENT_ALPHA, 2), 1.0]
    beta = np.r_[rng.uniform(-AUGMENT_BETA, AUGMENT_BETA, 2), 0.0]
    smap = hed_jitter_map(alpha, beta)
    meta = dict(slide.meta, stain=dict(slide.meta.get("stain") or {}, augment=_digest(smap.record)))
    meta.pop("feature_stats", None)
    return dataclasses.replace(
        slide, name=f"{slide.name}~stain{copy + 1}", image_levels=normalized_levels(slide.image_levels, smap), meta=meta
    )


class StainCopies:
    """The re-stained copies of a call's training slides (``stain_augment``), each embedded once.

    A copy of a whole slide (:func:`augment_slide`) is embedded over all its spots — no expression is involved —
    and shared by every subset of it (a fold's training spots) and every fold; its targets are the subset's.

    Parameters
    ----------
    transfer
        The options (``stain_augment`` copies per slide; ``feature_norm`` applied to each copy on its own).
    backbone, patch_size_um
        The embeddings' backbone and window (``backbone=None``: predictors that read pixels, no embeddings).
    geos
        Spot geometry of each slide, by position.
    cache
        The call's embedding cache, whose ``seconds`` count the copies' embedding time.
    """

    def __init__(
        self,
        transfer: Transfer,
        backbone: Backbone | None,
        patch_size_um: float,
        geos: Sequence[SpotGeometry],
        cache: EmbeddingCache | None,
    ) -> None:
        self.transfer, self.backbone, self.patch_size_um = transfer, backbone, float(patch_size_um)
        self.geos, self.cache = list(geos), cache
        self._whole: dict[tuple[int, int], tuple[SlideData, SlideData]] = {}

    def of(self, slides: Sequence[SlideData], full: dict[str, tuple[int, SlideData]], run: Compute) -> list[SlideData]:
        """The copies of ``slides`` (spots of the whole slides ``full`` names; others, e.g. pooled pseudo-spots, get none)."""
        out = []
        for sub in slides:
            if sub.name not in full:
                continue
            i, src = full[sub.name]
            pos = src.obs_names.get_indexer(sub.obs_names)
            if (pos < 0).any():
                continue
            for c in range(self.transfer.stain_augment):
                aug = self._whole_copy(i, src, c, run).subset(pos)
                aug.genes, aug.y, aug.y_linear, aug.library_size = sub.genes, sub.y, sub.y_linear, sub.library_size
                out.append(aug)
        return out

    def _whole_copy(self, i: int, src: SlideData, c: int, run: Compute) -> SlideData:
        key = (id(src), c)
        if key not in self._whole:
            slide = augment_slide(src, i, c)
            if self.backbone is not None:
                cache = EmbeddingCache(self.backbone, self.patch_size_um)  # its dense map is dropped with it
                emb = cache.spots(None, self.geos[i], slide.image_levels, run, stain=slide.meta["stain"])
                if self.transfer.feature_norm == "slide":
                    emb, slide.meta["feature_stats"] = standardize(emb)
                slide.embeddings = emb
                if self.cache is not None:
                    self.cache.add_seconds(cache.seconds)
            self._whole[key] = (src, slide)  # src held: its id stays its own
        return self._whole[key][1]


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _digest(rec: dict[str, Any]) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(rec, sort_keys=True).encode(), usedforsecurity=False).hexdigest()[:12]
