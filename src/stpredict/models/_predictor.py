"""The predictor contract's abstract base class, :class:`Predictor`."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import numpy as np

    from ._inputs import Regions, SlideData

__all__ = ["Consumes", "Predictor"]

Consumes = Literal["embeddings", "patches", "tiles", "map"]


class Predictor(abc.ABC):
    """Base class of every predictor (see ARCHITECTURE.md, "The predictor contract").

    Subclasses set :attr:`consumes`, implement :meth:`fit`, :meth:`predict`, :meth:`get_state` and
    :meth:`set_state`, and are registered with :func:`register_predictor`. Configuration is the keyword
    arguments of ``__init__`` (JSON-able); fitted arrays go through :meth:`get_state` into safetensors.

    Attributes
    ----------
    name
        Registered name.
    consumes
        What :mod:`stpredict.tl` must build for it: ``"embeddings"``, ``"patches"``, ``"tiles"`` or ``"map"``.
    default_backbone
        Backbone used for ``"embeddings"`` when the caller names none.
    provides_std
        Whether :meth:`predict` returns a predictive standard deviation.
    genes
        The fitted gene panel.
    preprocessing
        How targets were made (normalisation, log1p, gene selection), recorded by :mod:`stpredict.tl`.
    backbone
        Parameters of the backbone whose embeddings it consumes.
    """

    name: ClassVar[str] = "predictor"
    consumes: ClassVar[Consumes] = "embeddings"
    default_backbone: ClassVar[str | None] = "handcrafted"
    provides_std: ClassVar[bool] = False
    #: the predictor reads the measured values of the slide it predicts (neighbour baselines)
    uses_slide_targets: ClassVar[bool] = False
    #: the predictor reads the embeddings of the measured spots of the slide it predicts (as context)
    uses_slide_embeddings: ClassVar[bool] = False

    def __init__(self, **config: Any) -> None:
        self.config: dict[str, Any] = dict(config)
        self.genes: list[str] | None = None
        self.preprocessing: dict[str, Any] = {}
        self.backbone: dict[str, Any] = {}
        self.training: dict[str, Any] = {}
        #: torch device for predictors that train networks (``None``: :attr:`stpredict.settings.device`)
        self.device: Any = None
        #: show progress bars while training (set by stp.tl from its ``progress`` argument)
        self.progress: bool | None = False

    # -- to implement -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def fit(
        self,
        slides: Sequence[SlideData],
        *,
        genes: Sequence[str],
        max_epochs: int | None = None,
        seed: int | None = None,
    ) -> Predictor:
        """Fit on one or more slides whose ``y`` holds the targets of ``genes``; returns ``self``."""

    @abc.abstractmethod
    def predict(self, slide: SlideData, regions: Regions) -> tuple[np.ndarray, np.ndarray | None]:
        """Predict ``(mean, std or None)``, each ``(regions.n, len(genes))``, on the output scale."""

    def get_state(self) -> dict[str, np.ndarray]:
        """Fitted arrays to save (numpy, any shapes)."""
        return {}

    def set_state(self, state: dict[str, np.ndarray]) -> None:  # noqa: B027 - optional hook
        """Restore what :meth:`get_state` returned."""

    # -- shared ---------------------------------------------------------------------------------------------
    def train(
        self,
        slides: Sequence[SlideData],
        *,
        genes: Sequence[str],
        preprocessing: dict[str, Any] | None = None,
        backbone: dict[str, Any] | None = None,
        record: dict[str, Any] | None = None,
        max_epochs: int | None = None,
        seed: int | None = None,
        device: Any = None,
        progress: bool | None = False,
    ) -> Predictor:
        """Fit through :meth:`fit` and record what the predictor learned from: the one entry point of ``stp.tl``.

        The base class owns what every predictor shares: it sets :attr:`device` and :attr:`progress` for the
        fit, then :attr:`genes`, :attr:`preprocessing` and :attr:`backbone` from the caller (whatever ``fit``
        set), and merges ``record`` (the training data) under what ``fit`` put in :attr:`training`.

        Parameters
        ----------
        slides
            Training slides whose ``y`` holds the targets of ``genes``.
        genes
            The gene panel.
        preprocessing
            How the targets were made (normalisation, log1p, gene selection).
        backbone
            Parameters of the backbone whose embeddings the slides carry, with ``patch_size_um``.
        record
            The training data (slide names, fingerprints, number of spots).
        max_epochs
            Training budget of iterative predictors.
        seed
            Seed of the fit.
        device
            Torch device (``None``: :attr:`stpredict.settings.device`).
        progress
            Show progress bars while training.

        Returns
        -------
        ``self``, fitted.
        """
        self.device, self.progress = device, progress
        self.training = {}
        self.fit(list(slides), genes=list(genes), max_epochs=max_epochs, seed=seed)
        self.genes = list(genes)
        self.preprocessing = dict(preprocessing or {})
        self.backbone = dict(backbone or {})
        self.training = {**(record or {}), **self.training}
        return self

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has run (or a checkpoint was loaded)."""
        return self.genes is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            msg = f"This {self.name} predictor is not fitted: call stp.tl.fit(...) or .fit(...) first."
            raise RuntimeError(msg)

    def save(self, path: str | Path) -> Path:
        """Save to one ``.safetensors`` file: arrays as tensors, config/genes/preprocessing as JSON metadata.

        Never pickle: a checkpoint holds only numbers and JSON. ``path`` without the ``.safetensors`` suffix gets
        it (``save("dir/nsl")`` writes ``dir/nsl.safetensors``, which ``stp.models.load("dir/nsl")`` finds). The
        file is written beside its destination and renamed into place. Returns the path written.
        """
        from ._checkpoint import save

        return save(self, path)

    def __repr__(self) -> str:
        status = f"{len(self.genes)} genes" if self.genes else "not fitted"
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({cfg}) [{status}]"
