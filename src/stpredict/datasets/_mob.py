"""The embedded demo: one section of the mouse olfactory bulb (legacy ST, MIT licensed)."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["mob"]


def mob() -> SpatialData:
    """Mouse olfactory bulb, section MOB1 (Spatial Transcriptomics 2k array), embedded in the package.

    379 spots under tissue × 1000 genes (versioned Ensembl ids), raw counts; the 1905×1905 H&E as a
    multiscale image; spots as 100 µm circles at the source's pixel centres; the ``"micrometers"``
    coordinate system from the section's fitted array → pixel affine (≈ 4.6 µm/px along x and 4.2 µm/px
    along y: this scan is anisotropic). Read with :func:`stpredict.io.read_st`.

    Data from the STutility R package (MIT license, kept with the data as ``LICENSE.mob``); cite
    Bergenstråhle et al., BMC Genomics 21, 482 (2020).

    Returns
    -------
    A SpatialData with image ``"he"``, circles ``"spots"`` and table ``"table"``.

    Examples
    --------
    >>> import stpredict as stp
    >>> sdata = stp.datasets.mob()
    >>> sdata.tables["table"].shape
    (379, 1000)
    """
    from ..io import read_st

    root = files("stpredict.datasets") / "_data"
    with np.load(str(root / "mob1.npz")) as z:
        X = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
        ids, genes, rows = z["spot_ids"].astype(str), z["genes"].astype(str), z["spots"]
    counts = pd.DataFrame.sparse.from_spmatrix(X, index=ids, columns=genes).sparse.to_dense()
    spots = pd.DataFrame(rows, columns=["x", "y", "new_x", "new_y", "pixel_x", "pixel_y", "selected"])
    sdata = read_st(counts, spots, str(root / "mob1.jpg"), array="2k", library_id="MOB1")
    table = sdata.tables["table"]
    table.uns["stpredict_source"]["citation"] = (
        "Bergenstråhle J, Larsson L, Lundeberg J. Seamless integration of image and molecular analysis for "
        "spatial transcriptomics workflows. BMC Genomics 21, 482 (2020)."
    )
    table.uns["stpredict_source"]["license"] = "MIT (STutility); see stpredict/datasets/_data/LICENSE.mob"
    return sdata
