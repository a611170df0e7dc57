"""Xenium reader (spatialdata-io underneath) with a post-Xenium H&E registered onto the cells."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._image import to_multiscale
from .._keys import DEFAULT_IMAGE, MICRONS_CS
from .._logging import get_logger
from ._build import int32_if_whole
from ._xenium_alignment import alignment_hint, check_overlap, on_image, read_alignment
from ._xenium_he import open_he

if TYPE_CHECKING:
    import dask.array as da
    from spatialdata import SpatialData

__all__ = ["read_xenium"]

logger = get_logger(__name__)

#: What spatialdata-io 0.7.1 needs in every bundle (the boundaries and transcripts are read when present).
_REQUIRED = ("experiment.xenium", "cells.zarr.zip", "cells.parquet", "cell_feature_matrix.h5")
#: spatialdata-io's names for a post-Xenium H&E and its alignment beside it in the bundle.
_HE_SUFFIX = "he_image.ome.tif"
#: Arguments of spatialdata_io.xenium that read_xenium sets itself.
_MANAGED = {
    "cells_as_circles",
    "cells_boundaries",
    "nucleus_boundaries",
    "cells_labels",
    "nucleus_labels",
    "transcripts",
    "morphology_mip",
    "morphology_focus",
    "aligned_images",
    "cells_table",
    "gex_only",
}


def _spec(path: Path) -> dict:
    try:
        spec = json.loads((path / "experiment.xenium").read_text())
    except (OSError, json.JSONDecodeError) as e:
        msg = f"{str(path / 'experiment.xenium')!r} is not readable JSON ({e}); the Xenium bundle looks damaged."
        raise ValueError(msg) from e
    ps = spec.get("pixel_size")
    if not isinstance(ps, int | float) or not ps > 0:
        msg = f"experiment.xenium of {str(path)!r} has no positive 'pixel_size' (got {ps!r})."
        raise ValueError(msg)
    return spec


def _discover_he(path: Path, he_image: Any, alignment: Any) -> tuple[Any, Any]:
    if he_image is not None:
        return he_image, alignment
    found = sorted(p for p in path.glob(f"*{_HE_SUFFIX}") if not p.name.startswith("._"))
    if not found:
        if alignment is not None:
            msg = "alignment= was given without he_image=: pass the H&E image it aligns."
            raise ValueError(msg)
        return None, None
    if len(found) > 1:
        msg = f"Several H&E images in {str(path)!r} ({[p.name for p in found]}): pass he_image=... to choose one."
        raise ValueError(msg)
    he_image = found[0]
    if alignment is None:
        beside = he_image.with_name(he_image.name[: -len(".ome.tif")] + "alignment.csv")
        if beside.is_file():
            alignment = beside
    logger.info("Found the H&E %r in the bundle%s.", he_image.name, f" with {alignment}" if alignment else "")
    return he_image, alignment


def _matrix(t: Any) -> np.ndarray:
    axes = {"input_axes": ("x", "y"), "output_axes": ("x", "y")}
    return np.asarray(t.to_affine_matrix(**axes), dtype=float)


def _as_transformation(m: np.ndarray) -> Any:
    from spatialdata.transformations import Affine, Identity, Scale

    if np.allclose(m, np.eye(3), rtol=0, atol=1e-12):
        return Identity()
    if np.allclose(m[:2, :2], np.diag(np.diag(m[:2, :2])), rtol=0, atol=0) and not m[:2, 2].any():
        return Scale([float(m[0, 0]), float(m[1, 1])], axes=("x", "y"))
    return Affine(m, input_axes=("x", "y"), output_axes=("x", "y"))


def read_xenium(
    path: str | Path,
    *,
    he_image: str | Path | np.ndarray | da.Array | None = None,
    alignment: str | Path | np.ndarray | None = None,
    image_key: str = DEFAULT_IMAGE,
    morphology: bool = False,
    transcripts: bool = True,
    labels: bool = False,
    drop_cells_outside_he: bool = True,
    gex_only: bool = True,
    chunks: int = 1024,
    **kwargs: Any,
) -> SpatialData:
    """Read a Xenium output bundle and register a post-Xenium H&E onto its cells.

    Wraps :func:`spatialdata_io.xenium` (cells as circles, cell and nucleus polygons, transcripts, the cell table)
    and then:

    - adds the H&E as image ``image_key``: 8-bit RGB ``(c, y, x)``, multiscale, placed through the alignment
      matrix (``"global"``: Xenium morphology pixels, as spatialdata-io places everything) and in
      ``"micrometers"`` (the matrix followed by ``pixel_size`` from ``experiment.xenium``);
    - adds the ``"micrometers"`` coordinate system to every element: the cells, polygons and transcripts are in µm
      already (identity), the labels and morphology images are scaled by ``pixel_size``;
    - makes the table annotate the equal-area circles ``"cell_circles"`` (region ``"cell_circles"``, region key
      ``"region"``, instance key ``"cell_id"``), the measured regions the verbs use; the polygons
      ``"cell_boundaries"`` (and ``"nucleus_boundaries"`` when the bundle has them) are kept, indexed by the same
      ``cell_id``, for per-cell aggregation;
    - stores the counts as int32 (floats are kept only when they are not integers, e.g. protein).

    The verbs take the H&E without ``image_key``: it is the only image with the default ``morphology=False``, and
    the only 8-bit RGB one otherwise.

    Checked before anything is read (a clear error, nothing changed): an H&E without ``alignment``, an alignment
    that is not a 3×3 affine matrix, an H&E whose registered extent holds no cell.

    Formats: the bundles that spatialdata-io 0.7.1 reads, i.e. with ``experiment.xenium``, ``cells.zarr.zip``,
    ``cells.parquet`` and ``cell_feature_matrix.h5`` (boundaries and transcripts as Parquet): Xenium Onboard
    Analysis 1.x (``morphology_mip.ome.tif`` / ``morphology_focus.ome.tif``), 2.x and 3.x
    (``morphology_focus/morphology_focus_000N.ome.tif``), 4.x (``morphology_focus/chNNNN_<name>.ome.tif``) and
    Xenium Ranger re-segmentations; spatialdata-io chooses the version-specific paths from
    ``analysis_sw_version``. stpredict's own tests use a bundle of the XOA 3.0 layout (``polygon_sets`` and
    ``label_id``, i.e. the format of XOA 2.0 and later); bundles of other versions are read by spatialdata-io's
    code paths and are not tested here. The H&E is any image with Xenium Explorer's alignment CSV (the matrix
    from H&E pixels to Xenium morphology pixels, as 10x Genomics documents it); 10x's ``*_he_image.ome.tif``
    with ``*_he_imagealignment.csv`` inside ``path`` are found without being named.

    Parameters
    ----------
    path
        The Xenium output folder (holding ``experiment.xenium``).
    he_image
        The H&E: an OME-TIFF/TIFF (read lazily), JPEG or PNG path, or a ``(y, x, c)`` / ``(c, y, x)`` array; 8-bit
        RGB (an RGBA image is composited over white). ``None``: a single ``*he_image.ome.tif`` in ``path``,
        if any; without one the SpatialData has no H&E (the verbs then need one added).
    alignment
        Xenium Explorer's alignment matrix for the H&E (CSV path or 3×3 array, H&E pixels → Xenium pixels; see
        :func:`read_alignment`). Required with ``he_image``; ``numpy.eye(3)`` for an H&E already in Xenium pixels.
        ``None`` with a discovered H&E: the ``*he_imagealignment.csv`` beside it.
    image_key
        Name of the H&E image element.
    morphology
        Also read the morphology (DAPI and stain) images; they are large and not H&E (the verbs still take the
        8-bit RGB H&E by default).
    transcripts
        Read the transcripts (points, µm) when the bundle has them.
    labels
        Also read the cell and nucleus segmentation masks (labels) from ``cells.zarr.zip``.
    drop_cells_outside_he
        Drop, from the table and the circles, the cells whose centre lies outside the registered H&E (logged
        with their number; the polygons keep every cell). ``False`` keeps them, and the verbs then refuse the
        slide until they are removed.
    gex_only
        Keep only the ``"Gene Expression"`` features (no control probes or codewords).
    chunks
        Chunk size of the H&E's levels.
    **kwargs
        Passed to :func:`spatialdata_io.xenium` (e.g. ``imread_kwargs``), except the arguments set here.

    Returns
    -------
    The SpatialData: image ``image_key`` (when an H&E is given or found), shapes ``"cell_circles"`` (annotated by
    ``"table"``), ``"cell_boundaries"`` and ``"nucleus_boundaries"``, points ``"transcripts"``, table ``"table"``
    with raw counts and obs_names the cell ids; ``table.uns["stpredict_source"]`` records the pixel size, the
    XOA version, the alignment matrix and the dropped cells.
    """
    import pyarrow.parquet as pq
    import spatialdata_io
    from spatialdata.transformations import get_transformation, set_transformation

    # ---- checks, before anything is read ----
    clash = sorted(set(kwargs) & _MANAGED)
    if clash:
        msg = f"read_xenium sets {clash} itself; use its own arguments (morphology=, labels=, transcripts=, ...)."
        raise TypeError(msg)
    path = Path(path)
    if not path.is_dir():
        msg = f"Xenium folder {str(path)!r} does not exist."
        raise FileNotFoundError(msg)
    missing = [f for f in _REQUIRED if not (path / f).exists()]
    if missing:
        msg = (
            f"{str(path)!r} is not a Xenium output bundle that spatialdata-io reads: it lacks {missing} "
            "(pass the folder that holds experiment.xenium, from Xenium Onboard Analysis or Xenium Ranger)."
        )
        raise FileNotFoundError(msg)
    spec = _spec(path)
    ps = float(spec["pixel_size"])
    if morphology and image_key in {"morphology_focus", "morphology_mip"}:
        msg = f"image_key={image_key!r} is the name of a morphology image: choose another name for the H&E."
        raise ValueError(msg)
    he_image, alignment = _discover_he(path, he_image, alignment)
    M = None
    he_name = he_source = None
    if he_image is not None:
        he_source = str(he_image) if isinstance(he_image, str | Path) else "array"
        he_name = repr(he_source) if isinstance(he_image, str | Path) else "(array)"
        if alignment is None:
            msg = (
                f"The H&E {he_name} was given without alignment=: it cannot be placed on the cells. {alignment_hint()}"
            )
            raise ValueError(msg)
        M = read_alignment(alignment)
        opener, (c, h, w), dtype = open_he(he_image, chunks)
        if dtype != np.uint8 or c not in (3, 4):
            msg = (
                f"The H&E {he_name} has {c} channel(s) of {dtype}; read_xenium takes an 8-bit RGB (or RGBA) H&E. "
                "Convert it to 8-bit RGB first, or read it as another image and use stp.io.to_rgb."
            )
            raise ValueError(msg)
        cells_xy = pq.read_table(path / "cells.parquet", columns=["x_centroid", "y_centroid"])
        cells_um = np.column_stack([cells_xy.column(0).to_numpy(), cells_xy.column(1).to_numpy()]).astype(float)
        if len(cells_um):
            check_overlap(cells_um, M, ps=ps, h=h, w=w, he_name=he_name)
    elif alignment is not None:
        msg = "alignment= was given without he_image=: pass the H&E image it aligns."
        raise ValueError(msg)
    else:
        logger.info("No H&E given or found in %r: the SpatialData has none (the verbs need one).", str(path))

    # ---- read ----
    has_nuclei = (path / "nucleus_boundaries.parquet").exists()
    has_cells = (path / "cell_boundaries.parquet").exists()
    has_tx = (path / "transcripts.parquet").exists()
    if transcripts and not has_tx:
        logger.info("No transcripts.parquet in %r: reading without transcripts.", str(path))
    sdata = spatialdata_io.xenium(
        path,
        cells_as_circles=True,
        cells_boundaries=has_cells,
        nucleus_boundaries=has_nuclei,
        cells_labels=labels,
        nucleus_labels=labels,
        transcripts=transcripts and has_tx,
        morphology_mip=morphology,
        morphology_focus=morphology,
        aligned_images=False,
        cells_table=True,
        gex_only=gex_only,
        **kwargs,
    )

    # ---- counts ----
    import scipy.sparse as sp

    table = sdata.tables["table"]
    table.X = int32_if_whole(sp.csr_matrix(table.X))  # floats stay when not whole (protein)

    # ---- the H&E ----
    dropped: list[str] = []
    if M is not None:
        import dask.array as da

        data = opener()
        if data.shape[0] == 4:
            x = data.astype(np.float32) if isinstance(data, da.Array) else da.from_array(data).astype(np.float32)
            a = x[3:4] / 255.0
            data = da.clip(da.round(x[:3] * a + 255.0 * (1 - a)), 0, 255).astype(np.uint8)
            logger.info("H&E %s is RGBA: composited over white.", he_name)
        um = np.diag([ps, ps, 1.0]) @ M
        transformations = {"global": _as_transformation(M), MICRONS_CS: _as_transformation(um)}
        sdata.images[image_key] = to_multiscale(data, transformations=transformations, chunks=chunks)

        # cells off the H&E
        circles = sdata.shapes["cell_circles"]
        xy = np.column_stack([circles.geometry.x.to_numpy(), circles.geometry.y.to_numpy()])
        off = ~on_image(xy, np.linalg.inv(um), h, w)
        if off.any():
            ids = circles.index[off]
            if drop_cells_outside_he:
                logger.warning(
                    "%d of %d cells lie outside the registered H&E %s; dropped from the table and the circles "
                    "(their polygons are kept). drop_cells_outside_he=False keeps them.",
                    len(ids),
                    len(circles),
                    he_name,
                )
                ts = dict(get_transformation(circles, get_all=True))
                kept = circles.loc[~off].copy()
                for cs, t in ts.items():
                    set_transformation(kept, t, to_coordinate_system=cs)
                sdata.shapes["cell_circles"] = kept
                inst = table.uns["spatialdata_attrs"]["instance_key"]
                table = table[~table.obs[inst].isin(ids)].copy()
                sdata.tables["table"] = table
                dropped = [str(i) for i in ids]
            else:
                logger.warning(
                    "%d of %d cells lie outside the registered H&E %s (kept: the verbs refuse them).",
                    len(ids),
                    len(circles),
                    he_name,
                )

    # ---- micrometres for every element ----
    to_um = np.diag([ps, ps, 1.0])
    for kind in ("images", "labels", "shapes", "points"):
        for key, element in getattr(sdata, kind).items():
            if kind == "images" and key == image_key and M is not None:
                continue
            ts = dict(get_transformation(element, get_all=True))
            if "global" in ts and MICRONS_CS not in ts:
                t = _as_transformation(to_um @ _matrix(ts["global"]))
                set_transformation(element, t, to_coordinate_system=MICRONS_CS)

    table.uns["stpredict_source"] = {
        "technology": "Xenium",
        "analysis_sw_version": str(spec.get("analysis_sw_version", "")),
        "pixel_size_um": ps,
        "he_image": he_source if M is not None else "",
        "he_to_xenium_px": M.tolist() if M is not None else [],
        "microns_per_pixel_he": float(ps * np.sqrt(abs(np.linalg.det(M[:2, :2])))) if M is not None else 0.0,
        "n_cells_dropped_outside_he": len(dropped),
        "morphology_images": bool(morphology),
    }
    return sdata
