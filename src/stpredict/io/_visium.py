"""Visium reader (spatialdata-io underneath) with the checks stpredict needs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._image import image_levels, sample_pixels, to_multiscale
from .._keys import MICRONS_CS
from .._logging import get_logger
from ._tiff import lazy_tiff_image

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["read_visium"]

logger = get_logger(__name__)


def _transforms(element: Any) -> dict[str, Any]:
    from spatialdata.transformations import get_transformation

    return dict(get_transformation(element, get_all=True))


def _decode_bytes(d: dict) -> None:
    """Byte strings in ``uns`` (Space Ranger metadata) have no zarr v3 spec: store them as str."""
    for k, v in list(d.items()):
        if isinstance(v, dict):
            _decode_bytes(v)
        elif isinstance(v, bytes):
            d[k] = v.decode(errors="replace")
        elif isinstance(v, np.ndarray) and v.dtype.kind == "S":
            d[k] = np.char.decode(v, errors="replace").astype(str)


def _check_layout(path: Path, counts_file: str, fullres_image_file: str | Path | None, kwargs: dict) -> None:
    """Raise, naming what is missing, unless ``path`` looks like Space Ranger's ``outs`` folder."""
    hint = "pass the `outs` folder of a Space Ranger run (it holds the counts matrix and spatial/)."
    names = sorted(p.name for p in path.iterdir())
    if not any(n.endswith(counts_file) for n in names):  # spatialdata-io also reads "<library_id>_<counts_file>"
        msg = (
            f"Visium folder {str(path)!r} has no counts matrix {counts_file!r} (it holds {names[:8]}): {hint} "
            "A matrix file of another name is passed as counts_file=..."
        )
        raise FileNotFoundError(msg)
    if not (path / "spatial").is_dir() and not {"tissue_positions_file", "scalefactors_file"} & set(kwargs):
        msg = f"Visium folder {str(path)!r} has no spatial/ folder (spot positions and scale factors): {hint}"
        raise FileNotFoundError(msg)
    if fullres_image_file is not None and not (path / fullres_image_file).exists():
        msg = f"fullres_image_file {str(fullres_image_file)!r} does not exist (it is read relative to {str(path)!r})."
        raise FileNotFoundError(msg)


def read_visium(
    path: str | Path,
    *,
    dataset_id: str | None = None,
    counts_file: str = "filtered_feature_bc_matrix.h5",
    fullres_image_file: str | Path | None = None,
    drop_blank_images: bool = True,
    **kwargs: Any,
) -> SpatialData:
    """Read a Space Ranger Visium output folder.

    Wraps :func:`spatialdata_io.visium` and then:

    - reads a full-resolution TIFF lazily in blocks of 1024 px (spatialdata-io decodes it whole for any read);
    - drops images that are blank (a single colour, as some test outputs and failed exports have), with a log line;
    - drops an alpha channel that is fully opaque (a transparent one is kept, and later refused with a hint);
    - adds the ``"micrometers"`` coordinate system to every element, from Visium's 55 µm spot diameter
      and ``spot_diameter_fullres``.

    Parameters
    ----------
    path
        The Space Ranger ``outs`` folder.
    dataset_id
        Prefix of the element names; default ``path``'s folder name.
    counts_file
        Counts matrix inside ``path``.
    fullres_image_file
        The full-resolution H&E given to Space Ranger, if available (preferred for prediction).
    drop_blank_images
        Remove single-colour images.
    **kwargs
        Passed to :func:`spatialdata_io.visium`.

    Returns
    -------
    The SpatialData, with the table's obs_names the spot barcodes.
    """
    import spatialdata_io
    from spatialdata.transformations import Scale, Sequence, set_transformation

    path = Path(path)
    if not path.is_dir():
        msg = f"Visium folder {str(path)!r} does not exist."
        raise FileNotFoundError(msg)
    _check_layout(path, counts_file, fullres_image_file, kwargs)
    dataset_id = dataset_id or path.name.replace(" ", "_") or "visium"
    sdata = spatialdata_io.visium(
        path, dataset_id=dataset_id, counts_file=counts_file, fullres_image_file=fullres_image_file, **kwargs
    )
    full = f"{dataset_id}_full_image"
    if fullres_image_file is not None and full in sdata.images:  # read in blocks, not as one whole-slide task
        image = lazy_tiff_image(sdata.images[full], path / fullres_image_file)
        del sdata.images[full]
        sdata.images[full] = image
    dropped = []
    for key in list(sdata.images):
        element = sdata.images[key]
        levels = image_levels(element)
        coarse = levels[-1].array
        sample = sample_pixels(levels)  # 16 small windows; a level is read whole only to confirm what they show
        blank = sample[:3].min() == sample[:3].max() and bool(coarse[:3].min() == coarse[:3].max())
        if drop_blank_images and blank:
            logger.warning("Image %r is blank (every pixel %s); dropped.", key, sample[:, 0].tolist())
            del sdata.images[key]
            dropped.append(key)
            continue
        if coarse.shape[0] == 4 and sample[3].min() == 255 and int(coarse[3].min()) == 255:
            data = levels[0].array[:3]
            del sdata.images[key]
            sdata.images[key] = to_multiscale(data, transformations=_transforms(element))
            logger.info("Image %r: dropped an opaque alpha channel.", key)
    # micrometres: Visium spots are 55 µm; radius is given in full-resolution pixels (coordinate system dataset_id)
    shapes = sdata.shapes[dataset_id]
    radius_fullres = float(np.median(shapes["radius"].to_numpy()))
    mpp = 55.0 / (2.0 * radius_fullres)
    fullres_cs = dataset_id
    for kind in ("images", "shapes"):
        for element in list(getattr(sdata, kind).values()):
            ts = _transforms(element)
            if fullres_cs in ts:
                to_um = Sequence([ts[fullres_cs], Scale([mpp, mpp], axes=("x", "y"))])
                set_transformation(element, to_um, to_coordinate_system=MICRONS_CS)
    for table in sdata.tables.values():
        _decode_bytes(table.uns)
        table.uns["stpredict_source"] = {
            "technology": "Visium",
            "spot_diameter_um": 55.0,
            "microns_per_pixel_fullres": mpp,
            "dropped_images": dropped,
        }
    return sdata
