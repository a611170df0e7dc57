"""Visium HD reader (spatialdata-io underneath): one bin size, square bins, pixel size from Space Ranger."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._keys import MICRONS_CS
from .._logging import get_logger
from ._build import int32_if_whole
from ._tiff import lazy_tiff_image
from ._visium import _decode_bytes, _transforms

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["read_visium_hd"]

logger = get_logger(__name__)

_BIN_DIR = re.compile(r"^square_(\d{3})um$")
# set by this reader: passing them through **kwargs would contradict it
_RESERVED = (
    "bin_size",
    "bins_as_squares",
    "load_segmentations_only",
    "annotate_table_by_labels",
    "filtered_counts_file",
)


def _bin_sizes(binned: Path) -> dict[int, Path]:
    found = {}
    for d in binned.iterdir() if binned.is_dir() else []:
        m = _BIN_DIR.match(d.name)
        if d.is_dir() and m:
            found[int(m.group(1))] = d
    return dict(sorted(found.items()))


def _dataset_id(path: Path, dataset_id: str | None) -> str:
    """Element-name prefix; also the prefix of ``feature_slice.h5`` in 10x's downloadable archives."""
    if (path / "feature_slice.h5").is_file():
        name = dataset_id or path.name or "visium_hd"
    else:
        prefixed = sorted(p.name[: -len("_feature_slice.h5")] for p in path.glob("*_feature_slice.h5"))
        if dataset_id is not None and dataset_id in prefixed:
            return dataset_id
        if dataset_id is None and len(prefixed) == 1:
            return prefixed[0]
        msg = (
            f"Visium HD folder {str(path)!r} has no feature_slice.h5"
            + (f" (found {[p + '_feature_slice.h5' for p in prefixed]})" if prefixed else "")
            + ": it is not a Space Ranger HD `outs` folder, or pass dataset_id=<the files' prefix>."
        )
        raise FileNotFoundError(msg)
    return re.sub(r"[^0-9A-Za-z_.-]", "_", name)


def _discover_fullres(path: Path, dataset_id: str) -> Path | None:
    """The full-resolution H&E that :func:`spatialdata_io.visium_hd` finds without ``fullres_image_file``.

    Its places, in its order: the file in ``microscope_image/``, else ``<prefix>tissue_image.*`` in ``path`` (the
    name in 10x's downloadable archives). Resolved here so that the image is read by the same code path as an
    explicit ``fullres_image_file`` (a TIFF in blocks, see :func:`~stpredict.io._tiff.lazy_tiff_image`).
    """
    folder = path / "microscope_image"
    if folder.is_dir():
        found = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        prefix = "" if (path / "feature_slice.h5").is_file() else f"{dataset_id}_"
        found = sorted(p for p in path.glob(f"{prefix}tissue_image.*") if p.is_file())
    if len(found) > 1:
        msg = (
            f"Several candidate full-resolution images in Visium HD folder {str(path)!r}: "
            f"{[str(p.relative_to(path)) for p in found]}. Pass fullres_image_file= to choose one."
        )
        raise ValueError(msg)
    return found[0] if found else None


def _check_inputs(path: Path, bin_size: Any, counts_file: str, fullres_image_file: Any) -> tuple[int, Path, dict]:
    """Every check that needs no reading of counts or pixels; returns the bin size, its folder and scalefactors."""
    if not path.is_dir():
        msg = f"Visium HD folder {str(path)!r} does not exist."
        raise FileNotFoundError(msg)
    sizes = _bin_sizes(path / "binned_outputs")
    if not sizes:
        msg = (
            f"{str(path)!r} has no binned_outputs/square_<NNN>um/ folders: pass the `outs` folder of a "
            "Space Ranger (3.x) Visium HD run."
        )
        raise FileNotFoundError(msg)
    if isinstance(bin_size, bool) or not isinstance(bin_size, int | float | np.integer | np.floating):
        msg = f"bin_size must be a bin side in µm, one of {list(sizes)} in this folder; got {bin_size!r}."
        raise TypeError(msg)
    if float(bin_size) not in sizes:
        msg = (
            f"No {bin_size:g} µm bins in {str(path / 'binned_outputs')!r}: the bin sizes present are "
            f"{list(sizes)} µm. Pass bin_size= one of them."
        )
        raise ValueError(msg)
    bs = int(bin_size)
    folder = sizes[bs]
    needed = [folder / counts_file, folder / "spatial" / "tissue_positions.parquet"]
    needed.append(folder / "spatial" / "scalefactors_json.json")
    missing = [str(p.relative_to(path)) for p in needed if not p.is_file()]
    if missing:
        msg = f"Visium HD folder {str(path)!r} lacks {missing} for the {bs} µm bins."
        raise FileNotFoundError(msg)
    if fullres_image_file is not None and not Path(fullres_image_file).is_file():
        msg = (
            f"Full-resolution image {str(fullres_image_file)!r} does not exist: pass the path of the image given "
            "to Space Ranger (`--image`), or None to use the hires image."
        )
        raise FileNotFoundError(msg)
    sf = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    keys = ("microns_per_pixel", "bin_size_um", "spot_diameter_fullres", "tissue_hires_scalef")
    if any(k not in sf for k in keys):
        msg = f"{str(folder / 'spatial' / 'scalefactors_json.json')!r} lacks {[k for k in keys if k not in sf]}."
        raise ValueError(msg)
    mpp = float(sf["microns_per_pixel"])
    if not (np.isclose(sf["bin_size_um"], bs) and np.isclose(sf["spot_diameter_fullres"] * mpp, bs, rtol=1e-3)):
        msg = (
            f"Scalefactors of {folder.name} disagree with its {bs} µm bins (bin_size_um={sf['bin_size_um']}, "
            f"spot_diameter_fullres × microns_per_pixel = {sf['spot_diameter_fullres'] * mpp:.4g} µm)."
        )
        raise ValueError(msg)
    return bs, folder, sf


def read_visium_hd(
    path: str | Path,
    *,
    bin_size: int = 8,
    dataset_id: str | None = None,
    fullres_image_file: str | Path | None = None,
    filtered_counts: bool = True,
    **kwargs: Any,
) -> SpatialData:
    """Read the bins of one size of a Space Ranger Visium HD output folder.

    Covers the ``outs`` layout of Space Ranger 3.x for Visium HD (``binned_outputs/square_002um``,
    ``square_008um``, ``square_016um``, each with ``filtered_feature_bc_matrix.h5`` and
    ``spatial/{tissue_positions.parquet, scalefactors_json.json, tissue_hires_image.png,
    tissue_lowres_image.png}``, and ``feature_slice.h5`` at the top), also with the file prefix of 10x's
    downloadable archives. Space Ranger 4's ``segmented_outputs`` (cells and nuclei) are not kept.

    Wraps :func:`spatialdata_io.visium_hd` (bins as squares) and then:

    - keeps only the table and shapes of ``bin_size``: the bins are the measured regions, squares of side
      ``bin_size`` µm around Space Ranger's bin centres, annotated by the table (``region``, ``region_key`` and
      ``instance_key`` ``"location_id"``), counts as int32 in ``X``;
    - adds the ``"micrometers"`` coordinate system (a ``Scale``) to every image and to the bins, from the
      ``microns_per_pixel`` of the bins' ``scalefactors_json.json`` (µm per full-resolution pixel): the
      full-resolution image gets it as it is, the hires and lowres images divided by ``tissue_hires_scalef``
      and ``tissue_lowres_scalef``. :func:`~stpredict.pp.spots` then uses the finest image present;
    - reads a full-resolution TIFF lazily in blocks of 1024 px (spatialdata-io decodes it whole for any read),
      whether given as ``fullres_image_file`` or found in the folder (``microscope_image/``, or
      ``<prefix>tissue_image.*`` as in 10x's archives: the places spatialdata-io searches);
    - checks that a full-resolution image is the one Space Ranger was given: its size times
      ``tissue_hires_scalef`` must be the hires image's (a hires PNG passed as full resolution is refused).

    Parameters
    ----------
    path
        The Space Ranger ``outs`` folder.
    bin_size
        Bin side in µm: 2, 8 or 16 (the ``square_<NNN>um`` folders present).
    dataset_id
        Prefix of the element names; default ``path``'s folder name (or the files' prefix of a 10x archive).
    fullres_image_file
        The full-resolution H&E given to Space Ranger (preferred for prediction). ``None``: the hires image
        (about 1/4 of full resolution) is the finest H&E, unless the folder has one image in
        ``microscope_image/`` or a ``<prefix>tissue_image.*`` (several candidates: an error asking for this).
    filtered_counts
        Read ``filtered_feature_bc_matrix.h5`` (bins under tissue) rather than ``raw_feature_bc_matrix.h5``.
    **kwargs
        Passed to :func:`spatialdata_io.visium_hd` (e.g. ``gex_only``, ``image_models_kwargs``).

    Returns
    -------
    The SpatialData: shapes ``<dataset_id>_square_<NNN>um`` (the bins), table ``square_<NNN>um`` (obs_names
    the bin barcodes, ``obs`` ``in_tissue``, ``array_row``, ``array_col``; ``uns["stpredict_source"]`` the
    bin size, µm per full-resolution pixel, which image is the finest and the full-resolution file), images
    ``<dataset_id>_full_image`` (when given or found), ``<dataset_id>_hires_image`` and
    ``<dataset_id>_lowres_image``.
    """
    import spatialdata_io
    from spatialdata.transformations import Scale, Sequence, set_transformation

    path = Path(path)
    reserved = sorted(set(kwargs) & set(_RESERVED))
    if reserved:
        msg = f"read_visium_hd sets {reserved} itself; pass bin_size= and filtered_counts= instead."
        raise TypeError(msg)
    counts_file = "filtered_feature_bc_matrix.h5" if filtered_counts else "raw_feature_bc_matrix.h5"
    bs, folder, sf = _check_inputs(path, bin_size, counts_file, fullres_image_file)
    dataset_id = _dataset_id(path, dataset_id)
    if fullres_image_file is None:
        fullres_image_file = _discover_fullres(path, dataset_id)
        if fullres_image_file is not None:
            logger.info("Found the full-resolution image %r in the Visium HD folder.", str(fullres_image_file))
    mpp = float(sf["microns_per_pixel"])
    with warnings.catch_warnings():
        # a missing full-resolution image is handled (and logged) below
        warnings.filterwarnings("ignore", message=".*[Nn]o full resolution image", category=UserWarning)
        sdata = spatialdata_io.visium_hd(
            path,
            dataset_id=dataset_id,
            filtered_counts_file=filtered_counts,
            load_segmentations_only=False,
            bin_size=[bs],
            bins_as_squares=True,
            annotate_table_by_labels=False,
            fullres_image_file=fullres_image_file,
            **kwargs,
        )
    table_key, shapes_key = folder.name, f"{dataset_id}_{folder.name}"
    for key in [k for k in sdata.tables if k != table_key]:
        del sdata.tables[key]
    for key in [k for k in sdata.shapes if k != shapes_key]:
        del sdata.shapes[key]
    full, hires = f"{dataset_id}_full_image", f"{dataset_id}_hires_image"
    if fullres_image_file is not None and full in sdata.images:  # read in blocks, not as one whole-slide task
        image = lazy_tiff_image(sdata.images[full], fullres_image_file)
        del sdata.images[full]
        sdata.images[full] = image
    if full in sdata.images and hires in sdata.images:
        _check_fullres(sdata, full, hires, float(sf["tissue_hires_scalef"]), fullres_image_file)
    if full not in sdata.images and hires not in sdata.images:
        msg = f"Visium HD folder {str(path)!r} has no H&E image: pass fullres_image_file= (the image given to Space Ranger)."
        raise FileNotFoundError(msg)
    finest = "fullres" if full in sdata.images else "hires"
    if finest == "hires":
        logger.info(
            "No full-resolution image: the finest H&E is %r at %.3g µm/px; pass fullres_image_file= for the image "
            "given to Space Ranger.",
            hires,
            mpp / float(sf["tissue_hires_scalef"]),
        )
    for kind in ("images", "shapes"):
        for element in getattr(sdata, kind).values():
            ts = _transforms(element)
            if dataset_id in ts:  # the full-resolution pixel frame
                to_um = Sequence([ts[dataset_id], Scale([mpp, mpp], axes=("x", "y"))])
                set_transformation(element, to_um, to_coordinate_system=MICRONS_CS)
    table = sdata.tables[table_key]
    table.X = int32_if_whole(table.X, table_key=table_key)
    _decode_bytes(table.uns)
    table.uns["stpredict_source"] = {
        "technology": "Visium HD",
        "bin_size_um": float(bs),
        "microns_per_pixel_fullres": mpp,
        "finest_image": finest,
        "counts_file": counts_file,
        "fullres_image_file": str(fullres_image_file) if finest == "fullres" else "",
    }
    return sdata


def _check_fullres(sdata: Any, full: str, hires: str, scalef: float, fullres_image_file: Any) -> None:
    from .._image import image_levels

    hf, wf = image_levels(sdata.images[full])[0].shape_yx
    hh, wh = image_levels(sdata.images[hires])[0].shape_yx
    expect = np.array([hf, wf]) * scalef
    if np.any(np.abs(expect - [hh, wh]) > np.maximum(2.0, 0.01 * expect)):
        msg = (
            f"The full-resolution image {str(fullres_image_file or full)!r} is {wf}×{hf} px, but the hires image "
            f"({wh}×{hh} px at tissue_hires_scalef={scalef:g}) comes from one of about {wh / scalef:.0f}×"
            f"{hh / scalef:.0f} px: pass the image given to Space Ranger, not a downsampled one."
        )
        raise ValueError(msg)
