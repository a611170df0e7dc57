"""A procedural H&E-like tissue with known expression at every point.

Nothing is stored densely: the image is rendered chunk by chunk (dask) and the expression truth is
evaluated on demand for any region, so the generator scales to Visium-size slides.

The model, all in µm:

- *Tissue*: an irregular blob (a smooth random field plus a radial envelope); outside is glass.
- *Regions* (spatial domains): the argmax of ``n_regions`` smooth random fields (length scale
  ``region_scale_um``). Each region has its own nucleus density and size, eosin density, and fibre
  texture (orientation and period), so regions are visible in the image.
- *Nuclei*: one candidate per cell of a ``cell_um`` jittered grid, present with the region's density
  (hashing makes them procedural); hematoxylin-rich discs.
- *Stains*: Beer–Lambert: optical density ``OD = c_H · h + c_E · e`` with generating stain vectors ``h, e``
  (deliberately not Ruifrok–Johnston's), ``RGB = 255 · exp(-OD)``.
- *Expression* of gene g at a point: ``λ_g = tissue · (s · V_g + (1 - s) · H_g)`` with ``V_g`` a linear
  function of image-visible features (region one-hot, nucleus indicator, eosin concentration) and ``H_g``
  of image-invisible smooth fields (``s = image_signal``). Spot counts are Poisson with mean
  ``depth × mean of λ over the spot disk``; Visium HD bins' with mean ``depth × bin area / Visium spot area ×
  mean of λ over the bin`` (``depth`` stays per 55 µm disk, so pooled bins match a Visium spot).

The parameters are in :mod:`._synthetic_params`, the procedural tissue in :mod:`._synthetic_tissue`; this module
builds the SpatialData (:func:`synthetic`) and rebuilds the truth of one (:func:`synthetic_truth`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from ._synthetic_params import SyntheticParams
from ._synthetic_tissue import SyntheticTissue

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["SyntheticParams", "SyntheticTissue", "synthetic", "synthetic_truth"]


def synthetic(
    *,
    image_size: int | tuple[int, int] = 1024,
    microns_per_pixel: float = 1.0,
    layout: Literal["visium", "st", "visium_hd"] = "visium",
    n_genes: int = 50,
    n_regions: int = 4,
    image_signal: float = 0.8,
    depth: float = 20.0,
    stain_genes: float = 0.0,
    seed: int = 0,
    chunks: int = 512,
) -> SpatialData:
    """A synthetic H&E slide whose expression is known at every point.

    Parameters
    ----------
    image_size
        Level-0 size in pixels (``int`` for square, or ``(height, width)``). 20,000² at 0.45 µm/px with the
        Visium layout gives a Visium-size slide (~5,000 spots); the image is rendered lazily, chunk by chunk.
    microns_per_pixel
        Level-0 pixel size.
    layout
        ``"visium"``: 55 µm spots on a hexagonal lattice of 100 µm pitch; ``"st"``: 100 µm spots on a square
        lattice of 200 µm pitch; ``"visium_hd"``: 8 µm square bins tiling the tissue, as
        :func:`~stpredict.io.read_visium_hd` reads Space Ranger's ``square_008um`` bins (the bin size is fixed:
        pool them with :func:`~stpredict.pp.pool_to_spots` for coarser regions). Bin ``(row, col)`` spans
        ``[8·col, 8·col + 8) × [8·row, 8·row + 8)`` µm from the image's top-left corner, so it is also the
        square ``superresolve(..., bin_size=8)`` lays there; bins whose centre is on tissue are kept.
    n_genes
        Number of genes.
    n_regions
        Number of spatial domains (each with its own nuclei, stain and texture).
    image_signal
        Share of expression driven by image-visible features (the rest follows smooth fields that the image
        does not show, which only spatial neighbours can recover).
    depth
        Counts per unit rate and spot: larger means less Poisson noise. With ``"visium_hd"`` it is per Visium
        spot area: a bin's mean is ``depth × 64 / (π · 27.5²) × its mean rate`` (about 1/37 of a spot's).
    stain_genes
        Fraction of genes whose expression is a positive combination of the hematoxylin and eosin
        concentrations at each point and nothing else (for stain-learning methods).
    seed
        Seed of everything.
    chunks
        Chunk size of the rendered image.

    Returns
    -------
    A SpatialData with image ``"he"`` (multiscale, lazily rendered), shapes ``"spots"`` and table
    ``"table"`` of counts; ``table.obs["domain"]`` holds each spot's majority region and
    ``table.uns["synthetic"]`` the parameters, from which :func:`synthetic_truth` rebuilds the truth.
    ``"spots"`` are circles, or with ``"visium_hd"`` square polygons built as spatialdata-io builds Visium HD
    bins (each bin's inscribed circle buffered with square caps), obs names Space Ranger's barcodes
    (``s_008um_<row:05d>_<col:05d>-1``) and ``obs`` ``in_tissue``, ``array_row``, ``array_col`` as
    :func:`~stpredict.io.read_visium_hd` gives them. A 1.5 mm square at 0.5 µm/px has about 15,000 bins on
    tissue and builds in seconds (the expression truth of every bin is evaluated; the image is not rendered).

    Examples
    --------
    >>> import stpredict as stp
    >>> sdata = stp.datasets.synthetic(image_size=512, n_genes=5, seed=0)
    >>> sdata.tables["table"].n_vars
    5
    >>> hd = stp.datasets.synthetic(image_size=256, microns_per_pixel=0.5, layout="visium_hd", n_genes=5, seed=0)
    >>> stp.pp.spots(hd).diameter_um  # the side of the square bins
    8.0
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    params = SyntheticParams(
        image_size=(int(size[0]), int(size[1])),
        microns_per_pixel=float(microns_per_pixel),
        layout=layout,
        n_genes=int(n_genes),
        n_regions=int(n_regions),
        image_signal=float(image_signal),
        depth=float(depth),
        stain_genes=float(stain_genes),
        seed=int(seed),
    )
    return _build(params, chunks=chunks)


def _build(params: SyntheticParams, *, chunks: int) -> SpatialData:
    from .._image import replace_levels
    from ..io._build import build_sdata

    tissue = SyntheticTissue(params)
    centers_um, arr = tissue.spot_layout()
    if len(centers_um) == 0:
        msg = f"No spot fits on the tissue of a {params.image_size} px image at {params.microns_per_pixel} µm/px: enlarge it."
        raise ValueError(msg)
    mpp = params.microns_per_pixel
    hd = params.layout == "visium_hd"
    rng = np.random.default_rng(params.seed + 1)
    lam = tissue.mean_rates(centers_um, params.spot_diameter_um, "square" if hd else "circle")
    counts = rng.poisson(params.depth * params.counts_scale * lam).astype(np.int32)
    domain = tissue.mean_region(centers_um, params.spot_diameter_um)
    h, w = params.image_size
    level0 = tissue.dask_level((h, w), mpp, chunks)
    obs = pd.DataFrame(
        {
            "array_row": arr[:, 0],
            "array_col": arr[:, 1],
            "domain": pd.Categorical([f"region_{d}" for d in domain]),
        },
        index=_hd_barcodes(arr, params.pitch_um) if hd else [f"spot_{i}" for i in range(len(centers_um))],
    )
    if hd:
        obs.insert(0, "in_tissue", np.ones(len(obs), np.int32))
    source = {"technology": "synthetic", "spot_diameter_um": params.spot_diameter_um}
    if hd:
        source = {"technology": "synthetic", "layout": "visium_hd", "bin_size_um": params.pitch_um}
    meta = asdict(params)
    meta["image_size"] = list(meta["image_size"])
    meta["stain_h"] = list(meta["stain_h"])
    meta["stain_e"] = list(meta["stain_e"])
    sdata = build_sdata(
        level0,
        centers_um / mpp,
        params.spot_diameter_um / mpp,
        counts,
        mpp_xy=(mpp, mpp),
        obs=obs,
        var_names=pd.Index(tissue.genes),
        uns={"synthetic": meta, "stpredict_source": source},
        chunks=chunks,
    )
    if hd:
        _circles_to_squares(sdata, "spots")
    # the coarser levels are rendered at their own resolution (antialiased by supersampling)
    tree = sdata.images["he"]
    if not hasattr(tree, "children"):  # a small image has a single level
        return sdata
    arrays = {}
    for name in tree.children:
        if name == "scale0":
            continue
        old = next(iter(tree[name].ds.data_vars.values()))
        f = h / old.sizes["y"]
        arrays[name] = tissue.dask_level(
            (old.sizes["y"], old.sizes["x"]), mpp * f, chunks, supersample=min(4, round(f))
        )
    replace_levels(tree, arrays, chunks=chunks)
    return sdata


def _hd_barcodes(arr: np.ndarray, bin_um: float) -> list[str]:
    """Space Ranger's bin barcodes, ``s_008um_<row:05d>_<col:05d>-1``."""
    return [f"s_{round(bin_um):03d}um_{r:05d}_{c:05d}-1" for r, c in arr]


def _circles_to_squares(sdata: SpatialData, key: str) -> None:
    """Circles -> the squares they inscribe, as spatialdata-io's Visium HD reader makes bins (``bins_as_squares``)."""
    from geopandas import GeoDataFrame
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import get_transformation

    circles = sdata.shapes[key]
    radius = float(circles["radius"].iloc[0])
    squares = GeoDataFrame(geometry=circles.buffer(radius, cap_style=3))
    sdata.shapes[key] = ShapesModel.parse(squares, transformations=get_transformation(circles, get_all=True))


def synthetic_truth(
    sdata_or_params: SpatialData | dict | SyntheticParams, *, table_key: str = "table"
) -> SyntheticTissue:
    """Rebuild the procedural tissue (with its expression truth) of a synthetic slide.

    Parameters
    ----------
    sdata_or_params
        A SpatialData made by :func:`synthetic` (or read back from zarr), or its parameters.
    table_key
        Table holding ``uns["synthetic"]``.

    Returns
    -------
    A :class:`SyntheticTissue`; e.g. ``.mean_rates(centers_um, 8.0, "square")`` is the truth in 8 µm bins.
    """
    if isinstance(sdata_or_params, SyntheticParams):
        params = sdata_or_params
    else:
        meta = (
            sdata_or_params
            if isinstance(sdata_or_params, dict)
            else sdata_or_params.tables[table_key].uns.get("synthetic")
        )
        if meta is None:
            msg = f"Table {table_key!r} has no uns['synthetic']: this SpatialData was not made by stp.datasets.synthetic()."
            raise KeyError(msg)
        meta = dict(meta)
        for k in ("image_size", "stain_h", "stain_e"):
            meta[k] = tuple(np.asarray(meta[k]).tolist())
        meta["extra"] = dict(meta.get("extra", {}) or {})
        meta.setdefault("stain_genes", 0.0)
        for k in ("microns_per_pixel", "image_signal", "depth", "region_scale_um", "cell_um", "stain_genes"):
            meta[k] = float(meta[k])
        for k in ("n_genes", "n_regions", "seed"):
            meta[k] = int(meta[k])
        meta["layout"] = str(meta["layout"])
        params = SyntheticParams(**meta)
    return SyntheticTissue(params)
