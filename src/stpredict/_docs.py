"""Shared numpydoc paragraphs, spliced into docstrings with :func:`doc_params`."""

from __future__ import annotations

from collections.abc import Callable
from inspect import cleandoc
from typing import TypeVar

F = TypeVar("F", bound=Callable)

_STAIN = """\
stain
    Stain normalisation of every slide, as a whole, before it is read: ``"macenko"`` (hematoxylin and eosin
    concentrations rescaled onto the reference's and re-expressed with its stain vectors; the optical density
    the two stains do not explain is kept), ``"reinhard"`` (CIELAB mean and sd matched) or ``"none"``. The
    reference is fitted on the training slides' tissue pixels (each slide weighted equally) and travels with the
    fitted model, which applies it to every slide it predicts; a model saved without one predicts with
    ``"none"``."""
_FEATURE_NORM = """\
feature_norm
    ``"slide"``: standardise each slide's embeddings with the mean and sd of its own spots' embeddings (its grid
    regions with the same statistics), a correction for shifts between slides that uses no expression.
    ``"none"`` (or ``None``, the default): as computed. A fitted model applies what it was fitted with."""

_PARAMS = {
    "sdata": """\
sdata
    A :class:`~spatialdata.SpatialData` with an H&E image, spots (circles) and, for fitting, a table of
    raw counts annotating the spots.""",
    "keys": """\
image_key
    H&E image element. ``None`` picks the only image sharing a coordinate system with the spots (the finest
    one if there are several resolutions of the same slide).
spots_key
    Shapes element of the spots. ``None`` uses the region annotated by the table, or the only shapes element.
table_key
    Table annotating the spots. ``None`` uses the only table annotating a shapes element.""",
    "mpp": """\
microns_per_pixel
    Physical pixel size of the image's level 0. ``None`` reads it from a ``Scale`` to the ``"micrometers"``
    coordinate system, or from Visium's 55 µm spot diameter.""",
    "device": """\
device
    Torch device; ``None`` uses :attr:`stpredict.settings.device` (``"auto"``: CUDA, then MPS, then CPU).""",
    "resources": """\
resources
    Dask worker resources each task sent to ``client`` asks for: the task runs only on a worker that advertises
    them, and a worker runs at once only as many such tasks as it holds. ``None`` (the default): ``{"GPU": 1}``
    when a worker of the client advertises a ``GPU`` resource (started with ``dask worker ... --resources
    GPU=1``, one worker per GPU, or ``LocalCluster(resources={"GPU": 1})``), so each GPU worker runs one of the
    heavy tasks at a time and CPU-only workers run none; without such a worker, any worker, as many at once as
    it has threads. ``{}``: any worker. A mapping such as ``{"GPU": 1}`` is used as given; one that no worker
    of the client holds is refused before any work. Only with ``client``. The device is chosen where a task
    runs: ``device=None`` is the worker's :attr:`stpredict.settings.device` (``"auto"`` unless set there: CUDA
    when that worker has it).""",
    "batch": """\
batch_size
    Patches per batch; ``None`` uses :attr:`stpredict.settings.batch_size`.
num_workers
    DataLoader workers reading patches; ``None`` uses :attr:`stpredict.settings.num_workers`.""",
    "progress": """\
progress
    Show a progress bar; ``None`` uses :attr:`stpredict.settings.progress`.""",
    "dense": """\
dense
    Read backbone features of spots and grid regions from one dense feature map of the slide instead of one
    window each. Backbones that have one: ``handcrafted`` (agrees with the windows' features to a per-feature
    correlation ≥ 0.99) and convolutional timm backbones whose embedding averages a local feature map (resnet,
    densenet, convnext v1, ...: their last feature map, read as window means; windows pad their edges and a
    CNN's features move with sub-stride shifts, so agreement depends on the weights — see
    ``docs/benchmarks.md``), taken only with ``True``; ViTs and models with squeeze-excitation have none.
    ``None``: ``handcrafted`` takes whichever reads fewer pixels (the map for µm bins and for most spot
    layouts), every other backbone its windows; ``False`` is the per-window reference.""",
    "transfer": _STAIN
    + """ ``None``: ``"none"`` for a model fitted here (a slide normalised onto its own stains is unchanged),
    the model's own for a fitted one (asking for another fails).
"""
    + _FEATURE_NORM,
    "transfer_fit": _STAIN
    + """ ``None`` (the default): ``"macenko"``, or ``"none"``, with a
    warning, when a training slide's stains cannot be estimated (under 1,000 tissue pixels: a blank or non-H&E
    image); ``"none"`` for a model that never reads the image (``mean``, ``copy``, ``neighbors``) and, with
    ``client`` and stores, ``"none"`` (their embeddings are computed on the workers). Across slides
    Macenko is never worse than no stain handling in the benchmarks; a fit on one slide records its stains at no
    cost (the slide is its own reference), for the slides the model will predict.
"""
    + _FEATURE_NORM,
    "augment": """\
stain_augment
    Train also on this many copies of each training slide re-stained by a random HED jitter of the whole slide
    (hematoxylin and eosin concentrations scaled by U(0.85, 1.15) and shifted by U(-0.05, 0.05) optical density,
    one draw per copy, the same in every fold), with the slide's targets: the model sees the stain vary while
    expression does not. Costs one embedding of each copy; training only (0: none).""",
    "seed": """\
seed
    Seed of every random step (splits, initialisation, sampling). ``None`` draws fresh entropy.""",
    "pair": """\
y_true, y_pred
    ``(n_spots, n_genes)`` arrays of one slide (dense or sparse).""",
    "inplace": """\
inplace
    Write the results into ``sdata`` and return ``None``; otherwise leave ``sdata`` untouched and return them.""",
}


def doc_params(**extra: str) -> Callable[[F], F]:
    """Replace ``{name}`` fields in a docstring with the shared paragraphs above.

    The ``extra`` paragraphs go in first, so they may hold fields of the shared ones.
    """

    def decorator(func: F) -> F:
        if func.__doc__:
            fields = {**extra, **{k: v for k, v in _PARAMS.items() if k not in extra}}
            doc = cleandoc(func.__doc__)
            for key, text in fields.items():
                marker = "{" + key + "}"
                if marker in doc:
                    doc = doc.replace(marker, _indent_like(doc, key, text))
            func.__doc__ = doc
        return func

    return decorator


def _indent_like(doc: str, key: str, text: str) -> str:
    marker = "{" + key + "}"
    for line in doc.splitlines():
        if marker in line:
            indent = line[: len(line) - len(line.lstrip())]
            lines = text.splitlines()
            return "\n".join([lines[0], *(indent + ln if ln else ln for ln in lines[1:])])
    return text
