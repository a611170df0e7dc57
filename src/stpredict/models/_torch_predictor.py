"""The base class of the predictors that train torch networks, :class:`TorchPredictor`: their shared fit preamble."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .._logging import get_logger
from ..pp._folds import spatial_folds
from ._device import resolve_device
from ._predictor import Predictor
from ._torch import resolve_budget, seed_everything, split_validation

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from ._inputs import SlideData

__all__ = ["TorchPredictor"]

logger = get_logger(__name__)

#: spatial blocks of each slide in the validation split (``spatial_folds(..., k)``)
_VAL_BLOCK_FOLDS = 10
#: block ids of slide ``i`` are offset by ``i`` times this in the pooled split (spatial_folds numbers them 0..k-1)
_SLIDE_BLOCK_OFFSET = 100


class TorchPredictor(Predictor):
    """A :class:`Predictor` that trains torch networks: the fit preamble every such predictor shares.

    A subclass sets :attr:`budgets` and, in its :meth:`fit`, calls :meth:`_start_fit` first (device and the
    recorded seed), then :meth:`_budget` (its training settings on that device) and :meth:`_validation_split`
    (the spatially blocked early-stopping split). Image networks take their inputs through
    :func:`~stpredict.models._image_tensors.network_input` and load trunk weights with :meth:`_load_weights`.
    """

    #: the training settings of each budget (``"cpu"``, ``"gpu"``); the predictor module's ``BUDGETS``
    budgets: ClassVar[dict[str, dict[str, Any]]] = {}

    def _torch_device(self) -> torch.device:
        """The device to train or predict on: :attr:`device` resolved (``None``: :attr:`stpredict.settings.device`)."""
        return resolve_device(self.device)

    def _start_fit(self, seed: int | None) -> tuple[torch.device, int]:
        """``(device, seed)`` of a fit: the resolved device, and the seed torch was seeded with (drawn if ``None``).

        The seed is returned so that the fit records it in :attr:`training` (``None`` is then reproducible).
        """
        return self._torch_device(), seed_everything(seed)

    def _budget(self, device: Any, max_epochs: int | None = None) -> dict[str, Any]:
        """The settings of ``config["budget"]`` on ``device`` (:func:`~stpredict.models._torch.resolve_budget`).

        Explicit settings in :attr:`config` win over the budget's; ``max_epochs`` (of ``fit``), when given, wins
        over both and is what the result records.
        """
        out = resolve_budget(self.config, self.budgets, device)
        if max_epochs is not None:
            out["max_epochs"] = int(max_epochs)
        return out

    def _validation_split(self, slides: Sequence[SlideData], seed: int, *, per_slide: bool = False) -> Any:
        """The spatially blocked early-stopping split of the training spots (share ``config["val_fraction"]``).

        Each slide's spots are grouped into square blocks (:func:`~stpredict.pp._folds.spatial_folds`) and whole
        blocks go to validation (:func:`~stpredict.models._torch.split_validation`), so that validation spots do
        not share their neighbourhood with training spots.

        ``per_slide=False``: one split over the spots of all slides, concatenated in order (every slide's blocks
        drawn with ``seed``, numbered apart per slide): ``(train, val)`` indices into the concatenation.
        ``per_slide=True``: each slide ``i`` split on its own with ``seed + i``: a list of ``(train, val)`` indices
        into each slide.
        """
        frac = self.config["val_fraction"]
        if per_slide:
            out = []
            for i, s in enumerate(slides):
                blocks, _ = spatial_folds(s.centers_um, _VAL_BLOCK_FOLDS, seed=seed + i)
                out.append(split_validation(s.n, frac, seed + i, groups=blocks))
            return out
        groups = np.concatenate(
            [
                spatial_folds(s.centers_um, _VAL_BLOCK_FOLDS, seed=seed)[0] + _SLIDE_BLOCK_OFFSET * i
                for i, s in enumerate(slides)
            ]
        )
        return split_validation(len(groups), frac, seed, groups=groups)

    def _load_weights(self, module: torch.nn.Module, what: str, **kwargs: Any) -> None:
        """Load ``config["weights"]`` into ``module`` through the one trunk loader.

        :func:`~stpredict.models.backbones.load_trunk_weights` states the rules (classifier heads are never
        loaded; any other missing, unexpected or mis-shaped key is a :class:`ValueError` naming the file and the
        keys); ``kwargs`` go to it (PixNet's encoder passes ``features_only=True``). ``what`` names the network.
        """
        from .backbones import load_trunk_weights, load_weights_file

        path = self.config["weights"]
        load_trunk_weights(module, load_weights_file(path), what=f"{what} from {path}", **kwargs)

    def _weights_init(self, role: str, arch: str, *, log: bool = True) -> str:
        """How a fit's ``role`` network (``"trunk"``, ``"encoder"``) starts, for ``training["init"]``.

        ``"weights PATH"`` with ``config["weights"]``, else ``"random (trained from scratch)"``, which ``log``
        says once in the log.
        """
        if self.config["weights"]:
            return f"weights {self.config['weights']}"
        if log:
            logger.info("%s: no %s weights given; training %s from scratch.", self.name, role, arch)
        return "random (trained from scratch)"
