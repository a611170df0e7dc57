"""Shared machinery of the verbs: resolving models, preparing training inputs, writing results."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._logging import get_logger
from ..models._base import Predictor, create_predictor, load
from ._inputs import build_slide, preprocessing_record, resolve_backbone, select_genes, spot_embeddings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from spatialdata import SpatialData

    from ..models._base import SlideData
    from ..models.backbones import Backbone
    from ..pp._spots import SpotGeometry

logger = get_logger(__name__)


def resolve_model(model: Any, model_kwargs: dict[str, Any]) -> tuple[Predictor, bool]:
    """``(predictor, fitted)`` from a registered name, a checkpoint path or a Predictor."""
    if isinstance(model, Predictor):
        if model_kwargs:
            msg = f"Options {sorted(model_kwargs)} apply to a model name, not to a ready predictor."
            raise TypeError(msg)
        return model, model.is_fitted
    if isinstance(model, str | Path):
        path = Path(model)
        if str(model).endswith(".safetensors") or (path.suffix and path.exists()):
            if model_kwargs:
                msg = f"Options {sorted(model_kwargs)} cannot change a saved checkpoint."
                raise TypeError(msg)
            return load(path), True
        return create_predictor(str(model), **model_kwargs), False
    msg = f"model must be a registered name, a checkpoint path or a Predictor, got {type(model).__name__}."
    raise TypeError(msg)


def slide_fingerprint(slide: SlideData) -> str:
    """A short hash identifying a slide's spots (names and positions)."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update("\n".join(map(str, slide.obs_names)).encode())
    h.update(np.round(np.asarray(slide.centers_px), 1).tobytes())
    return h.hexdigest()[:16]


class Training:
    """Validated training inputs of one or more slides (built before any heavy work)."""

    def __init__(
        self,
        sdatas: Sequence[SpatialData],
        predictor: Predictor,
        *,
        genes: Sequence[str] | int | None,
        n_genes: int,
        backbone: Any,
        weights: Any,
        patch_size_um: float | None,
        image_key: str | None,
        spots_key: str | None,
        table_key: str | None,
        microns_per_pixel: float | None,
        layer: str | None,
    ) -> None:
        keys = {"image_key": image_key, "spots_key": spots_key, "table_key": table_key}
        built = [
            build_slide(s, **keys, microns_per_pixel=microns_per_pixel, genes=None, layer=layer, need_targets=True)
            for s in sdatas
        ]
        self.sdatas = list(sdatas)
        self.geos: list[SpotGeometry] = [g for _, g in built]
        tables = [(s.tables[g.table_key], g.rows) for s, g in zip(sdatas, self.geos, strict=True)]
        self.genes, self.gene_selection = select_genes(tables, genes, layer=layer, n_genes=n_genes)
        self.slides: list[SlideData] = [
            build_slide(
                s, **keys, microns_per_pixel=microns_per_pixel, genes=self.genes, layer=layer, need_targets=True
            )[0]
            for s in sdatas
        ]
        # repeated names (e.g. several synthetic slides, all "spots") get their position, decided before renaming
        counts = Counter(sl.name for sl in self.slides)
        for i, sl in enumerate(self.slides):
            if counts[sl.name] > 1:
                sl.name = f"{sl.name}#{i}"
        self.backbone: Backbone | None = resolve_backbone(predictor, backbone, weights)
        self.patch_size_um = float(
            patch_size_um if patch_size_um is not None else (self.backbone.default_patch_um if self.backbone else 0.0)
        )
        self.embedding_records: list[tuple[dict, bool, np.ndarray]] = []
        self.layer = layer

    def embed(self, *, device: Any, batch_size: int | None, num_workers: int | None, progress: bool | None) -> None:
        """Compute (or reuse) the spots' embeddings of every slide."""
        if self.backbone is None:
            return
        for s, geo, slide in zip(self.sdatas, self.geos, self.slides, strict=True):
            emb, rec, reused = spot_embeddings(
                s.tables[geo.table_key],
                geo,
                slide.image_levels,
                self.backbone,
                patch_size_um=self.patch_size_um,
                cache=False,
                device=device,
                batch_size=batch_size,
                num_workers=num_workers,
                progress=progress,
            )
            slide.embeddings = emb
            self.embedding_records.append((rec, reused, emb))

    def cache_embeddings(self) -> None:
        """Write computed embeddings into each table's obsm (after the work succeeded)."""
        from .._keys import UNS_KEY, embedding_key

        if self.backbone is None:
            return
        key = embedding_key(self.backbone.name)
        for s, geo, (rec, reused, emb) in zip(self.sdatas, self.geos, self.embedding_records, strict=True):
            if reused:
                continue
            table = s.tables[geo.table_key]
            full = np.full((table.n_obs, emb.shape[1]), np.nan, dtype=np.float32)
            full[geo.rows] = emb
            table.obsm[key] = full
            table.uns.setdefault(UNS_KEY, {}).setdefault("embeddings", {})[key] = rec

    def annotate(self, predictor: Predictor) -> None:
        """Record genes, preprocessing, backbone and training slides on the predictor."""
        predictor.genes = list(self.genes)
        predictor.preprocessing = preprocessing_record(self.genes, self.gene_selection)
        if self.backbone is not None:
            rec = dict(self.backbone.params())
            rec["patch_size_um"] = self.patch_size_um
            predictor.backbone = rec
        predictor.training = {
            **predictor.training,
            "slides": [sl.name for sl in self.slides],
            "fingerprints": [slide_fingerprint(sl) for sl in self.slides],
            "n_spots": int(sum(sl.n for sl in self.slides)),
        }


def set_device(predictor: Predictor, device: Any, progress: bool | None = False) -> None:  # noqa: FBT001, FBT002
    """Tell a torch predictor which device to use (``None`` → settings) and whether to show progress."""
    predictor.device = device
    predictor.progress = progress


def fit_predictor(
    predictor: Predictor, slides: Sequence[SlideData], genes: Sequence[str], *, max_epochs: int | None, seed: int | None
) -> Predictor:
    """``predictor.fit`` with the contract's keywords."""
    return predictor.fit(list(slides), genes=list(genes), max_epochs=max_epochs, seed=seed)


def fresh_copy(predictor: Predictor) -> Predictor:
    """An unfitted predictor with the same configuration."""
    new = create_predictor(predictor.name, **predictor.config)
    new.device = getattr(predictor, "device", None)
    new.progress = getattr(predictor, "progress", False)
    return new
