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
  ``depth × mean of λ over the spot disk``.

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
    layout: Literal["visium", "st"] = "visium",
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
        lattice of 200 µm pitch.
    n_genes
        Number of genes.
    n_regions
        Number of spatial domains (each with its own nuclei, stain and texture).
    image_signal
        Share of expression driven by image-visible features (the rest follows smooth fields that the image
        does not show, which only spatial neighbours can recover).
    depth
        Counts per unit rate and spot: larger means less Poisson noise.
    stain_genes
        Fraction of genes whose expression is a positive combination of the hematoxylin and eosin
        concentrations at each point and nothing else (for stain-learning methods).
    seed
        Seed of everything.
    chunks
        Chunk size of the rendered image.

    Returns
    -------
    A SpatialData with image ``"he"`` (multiscale, lazily rendered), circles ``"spots"`` and table
    ``"table"`` of counts; ``table.obs["domain"]`` holds each spot's majority region and
    ``table.uns["synthetic"]`` the parameters, from which :func:`synthetic_truth` rebuilds the truth.

    Examples
    --------
    >>> import stpredict as stp
    >>> sdata = stp.datasets.synthetic(image_size=512, n_genes=5, seed=0)
    >>> sdata.tables["table"].n_vars
    5
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
    rng = np.random.default_rng(params.seed + 1)
    lam = tissue.mean_rates(centers_um, params.spot_diameter_um)
    counts = rng.poisson(params.depth * lam).astype(np.int32)
    domain = tissue.mean_region(centers_um, params.spot_diameter_um)
    h, w = params.image_size
    level0 = tissue.dask_level((h, w), mpp, chunks)
    obs = pd.DataFrame(
        {
            "array_row": arr[:, 0],
            "array_col": arr[:, 1],
            "domain": pd.Categorical([f"region_{d}" for d in domain]),
        },
        index=[f"spot_{i}" for i in range(len(centers_um))],
    )
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
        uns={
            "synthetic": meta,
            "stpredict_source": {"technology": "synthetic", "spot_diameter_um": params.spot_diameter_um},
        },
        chunks=chunks,
    )
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
