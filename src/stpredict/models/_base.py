"""The predictor contract: inputs, the abstract base class, the registry and checkpoint I/O."""

from __future__ import annotations

import abc
import difflib
import fnmatch
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd

from .._logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from .._image import ImageLevel
    from ..pp._patches import PatchExtractor

__all__ = [
    "Predictor",
    "Regions",
    "SlideData",
    "create_predictor",
    "get_predictor_class",
    "list_predictors",
    "load",
    "register_predictor",
]

logger = get_logger(__name__)

Consumes = Literal["embeddings", "patches", "tiles", "map"]


# --------------------------------------------------------------------------------------------------------
# inputs built by stp.tl (predictors never touch SpatialData)
# --------------------------------------------------------------------------------------------------------
@dataclass
class SlideData:
    """One slide's measured spots, as a predictor sees them.

    Attributes
    ----------
    name
        Slide name (library id or table key).
    centers_px
        ``(n, 2)`` spot centres (x, y) in level-0 image pixels.
    microns_per_pixel_xy
        Level-0 pixel size along x and y.
    spot_diameter_px
        Spot diameter in level-0 pixels.
    image_levels
        The image pyramid (lazy arrays), for predictors that read pixels.
    obs_names
        Spot names.
    genes
        Genes of ``y`` (the panel being fitted or predicted).
    y
        ``(n, genes)`` targets on the output scale (normalize_total 1e4 + log1p by default), or ``None`` on a
        slide without counts.
    y_linear
        The same before the log (normalised linear units), for predictors that aggregate in linear space.
    library_size
        Total counts per spot (all genes).
    embeddings
        ``(n, d)`` backbone features of the spots' windows, when the predictor consumes embeddings.
    meta
        Free-form provenance (image key, backbone parameters).
    """

    name: str
    centers_px: np.ndarray
    microns_per_pixel_xy: tuple[float, float]
    spot_diameter_px: float
    image_levels: list[ImageLevel] = field(repr=False)
    obs_names: pd.Index
    genes: list[str] | None = None
    y: np.ndarray | None = None
    y_linear: np.ndarray | None = None
    library_size: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of spots."""
        return int(len(self.centers_px))

    @property
    def microns_per_pixel(self) -> float:
        """Geometric-mean pixel size."""
        return float(np.sqrt(self.microns_per_pixel_xy[0] * self.microns_per_pixel_xy[1]))

    @property
    def centers_um(self) -> np.ndarray:
        """Spot centres in µm."""
        return np.asarray(self.centers_px) * np.asarray(self.microns_per_pixel_xy)

    @property
    def spot_diameter_um(self) -> float:
        """Spot diameter in µm."""
        return float(self.spot_diameter_px * self.microns_per_pixel)

    @property
    def image_shape(self) -> tuple[int, int]:
        """Level-0 ``(height, width)``."""
        return self.image_levels[0].shape_yx

    def patches(self, size_um: float, patch_px: int, centers_px: np.ndarray | None = None) -> PatchExtractor:
        """A patch reader for windows around the spots (or ``centers_px``)."""
        from ..pp._patches import PatchExtractor

        c = self.centers_px if centers_px is None else centers_px
        return PatchExtractor(self.image_levels, c, self.microns_per_pixel_xy, size_um=size_um, patch_px=patch_px)

    def subset(self, idx: np.ndarray) -> SlideData:
        """The slide restricted to spots ``idx`` (used for held-out folds)."""
        idx = np.asarray(idx)

        def take(a):
            return None if a is None else np.asarray(a)[idx]

        return SlideData(
            name=self.name,
            centers_px=np.asarray(self.centers_px)[idx],
            microns_per_pixel_xy=self.microns_per_pixel_xy,
            spot_diameter_px=self.spot_diameter_px,
            image_levels=self.image_levels,
            obs_names=self.obs_names[idx],
            genes=self.genes,
            y=take(self.y),
            y_linear=take(self.y_linear),
            library_size=take(self.library_size),
            embeddings=take(self.embeddings),
            meta=dict(self.meta),
        )

    def without_targets(self) -> SlideData:
        """The slide with its measured values removed (an H&E-only view)."""
        out = self.subset(np.arange(self.n))
        out.y = out.y_linear = out.library_size = None
        return out


@dataclass
class Regions:
    """Where to predict: spots, pseudo-spots, bins or shapes, in the slide's level-0 pixels.

    Attributes
    ----------
    centers_px
        ``(n, 2)`` centres (x, y); the centroids of polygons.
    kind
        ``"circle"``, ``"square"`` or ``"polygon"`` (cells of a shapes element: their geometry is in
        ``polygons_px``).
    size_um
        Diameter (circles) or side (squares) in µm; polygons: the median diameter of the circle of equal area.
    name
        ``"spots"``, a grid name (``ps4``, ``bin16um``, ``cells``) or a shapes key.
    embeddings
        ``(n, d)`` features of windows around the centres (same backbone and window as training), if the
        predictor consumes embeddings. Polygons are read like pseudo-spots: one window at the centroid.
    meta
        Free-form options (e.g. ``"seed"``).
    polygons_px
        ``(n,)`` shapely polygons (or multipolygons) in level-0 pixels when ``kind == "polygon"``, else
        ``None``. Predictors that aggregate a dense map (``pixnet``) average it over these polygons
        (:meth:`polygons_um`); the others read the centres.
    """

    centers_px: np.ndarray
    kind: Literal["circle", "square", "polygon"] = "circle"
    size_um: float = 55.0
    name: str = "spots"
    embeddings: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    polygons_px: Any = None

    def polygons_um(self, slide: SlideData) -> Any:
        """``polygons_px`` scaled to µm by the slide's pixel size (x and y apart), or ``None``."""
        if self.polygons_px is None:
            return None
        from ..pp._cells import polygons_to_um

        return polygons_to_um(self.polygons_px, slide.microns_per_pixel_xy)

    @property
    def n(self) -> int:
        """Number of regions."""
        return int(len(self.centers_px))

    def centers_um(self, slide: SlideData) -> np.ndarray:
        """Centres in µm."""
        return np.asarray(self.centers_px) * np.asarray(slide.microns_per_pixel_xy)

    def patches(self, slide: SlideData, size_um: float, patch_px: int) -> PatchExtractor:
        """A patch reader for windows around the regions."""
        return slide.patches(size_um, patch_px, centers_px=self.centers_px)


# --------------------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Predictor]] = {}
_ENTRY_POINTS_LOADED = False
ENTRY_POINT_GROUP = "stpredict.predictors"


def register_predictor(
    name: str | None = None, *, override: bool = False
) -> Callable[[type[Predictor]], type[Predictor]]:
    """Class decorator registering a :class:`Predictor` subclass under ``name``.

    A duplicate name raises unless ``override=True``.

    Parameters
    ----------
    name
        Registry key, used by :func:`create_predictor` and ``stp.tl.predict(model=...)``. ``None`` uses the
        class's ``name`` attribute. The decorator sets the class's ``name`` to the key.
    override
        Replace a different class already registered under ``name``. Registering the same class again is
        always allowed.

    Returns
    -------
    The decorator. It returns the class itself (registered, with its ``name`` set) and raises, when applied:

    - :class:`TypeError` if what it decorates is not a :class:`Predictor` subclass;
    - :class:`ValueError` if another class holds ``name`` and ``override`` is ``False``.

    Examples
    --------
    >>> from stpredict.models import Predictor, register_predictor
    >>> @register_predictor("my_model")
    ... class MyModel(Predictor): ...
    """

    def decorator(cls: type[Predictor]) -> type[Predictor]:
        key = name or cls.name
        if not isinstance(cls, type) or not issubclass(cls, Predictor):
            msg = f"register_predictor decorates Predictor subclasses, got {cls!r}."
            raise TypeError(msg)
        if key in _REGISTRY and _REGISTRY[key] is not cls and not override:
            msg = f"A predictor named {key!r} is already registered ({_REGISTRY[key].__module__}); pass override=True."
            raise ValueError(msg)
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return decorator


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the package
            logger.warning("Could not load predictor plugin %r (%s): %s", ep.name, ep.value, e)
            continue
        if isinstance(obj, type) and issubclass(obj, Predictor) and ep.name not in _REGISTRY:
            register_predictor(ep.name)(obj)


def list_predictors(pattern: str = "*") -> list[str]:
    """Registered predictor names matching an fnmatch ``pattern`` (built-ins and entry-point plugins).

    The first call loads the plugins declared in the ``stpredict.predictors`` entry-point group; a plugin that
    fails to import is logged as a warning and skipped.

    Parameters
    ----------
    pattern
        Shell-style wildcard (:func:`fnmatch.fnmatch`): ``"*"`` for all, ``"n*"`` for the names starting
        with n...

    Returns
    -------
    The matching names, sorted.

    Examples
    --------
    >>> import stpredict as stp
    >>> "ridge" in stp.models.list_predictors()
    True
    """
    _load_entry_points()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def predictors_table() -> pd.DataFrame:
    """One row per registered predictor: what it consumes, its default backbone, whether it gives a std."""
    rows = []
    for n in list_predictors():
        cls = _REGISTRY[n]
        doc = (cls.__doc__ or "").strip().splitlines()
        rows.append(
            {
                "name": n,
                "consumes": cls.consumes,
                "default_backbone": cls.default_backbone,
                "std": cls.provides_std,
                "description": doc[0] if doc else "",
            }
        )
    return pd.DataFrame(rows).set_index("name")


def get_predictor_class(name: str) -> type[Predictor]:
    """The class registered under ``name``; a KeyError lists the registered names and close matches.

    Names match case-insensitively when that is unambiguous (``"HisToSGE"`` is ``"histosge"``).

    Parameters
    ----------
    name
        Registered name (see :func:`list_predictors`). Entry-point plugins are loaded first.

    Returns
    -------
    The :class:`Predictor` subclass, not an instance (see :func:`create_predictor`).

    Raises
    ------
    KeyError
        If no predictor is registered under ``name``; the message suggests close matches.
    """
    _load_entry_points()
    if name not in _REGISTRY and isinstance(name, str):
        folded = [k for k in _REGISTRY if k.casefold() == name.casefold()]
        if len(folded) == 1:  # "HisToSGE", the method's own spelling, is "histosge"
            return _REGISTRY[folded[0]]
    if name not in _REGISTRY:
        lower = {k.casefold(): k for k in _REGISTRY}
        close = [lower[c] for c in difflib.get_close_matches(str(name).casefold(), list(lower), n=3)]
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        msg = f"Unknown model {name!r}.{hint} Registered predictors: {', '.join(sorted(_REGISTRY))}."
        raise KeyError(msg)
    return _REGISTRY[name]


def create_predictor(name: str, **config: Any) -> Predictor:
    """Instantiate the predictor registered under ``name`` with its configuration.

    Parameters
    ----------
    name
        Registered name (see :func:`list_predictors`).
    **config
        Keyword arguments of the predictor class's constructor (its JSON-able options; see the class's
        documentation).

    Returns
    -------
    A new, unfitted :class:`Predictor`.

    Raises
    ------
    KeyError
        If no predictor is registered under ``name``.
    TypeError
        If the class does not accept ``config``.

    Examples
    --------
    >>> import stpredict as stp
    >>> stp.models.create_predictor("ridge").is_fitted
    False
    """
    cls = get_predictor_class(name)
    try:
        return cls(**config)
    except TypeError as e:
        msg = f"Bad options for model {name!r}: {e}. See help(stp.models.{cls.__name__})."
        raise TypeError(msg) from e


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a checkpoint; see :func:`stpredict.models._checkpoint.read_header`."""
    from ._checkpoint import read_header as _read_header

    return _read_header(path)


def load(path: str | Path) -> Predictor:
    """Load a predictor saved with :meth:`Predictor.save`; see :func:`stpredict.models._checkpoint.load`."""
    from ._checkpoint import load as _load

    return _load(path)
