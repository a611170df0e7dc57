"""Build the embedded demo (``stp.datasets.mob()``) from ../shared/data/mob (MIT, STUtility).

Keeps one section (MOB1), only the spots under tissue, their raw counts as a compressed sparse matrix and
the alignment rows, plus the original JPEG bytes. Run from the repository root:

    python scripts/make_mob_demo.py [path/to/shared/data/mob]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

SECTION = "MOB1"


def main(src: Path, dst: Path) -> None:
    counts = pd.read_csv(src / "counts" / f"{SECTION}.tsv", sep="\t", index_col=0)
    spots = pd.read_csv(src / "counts" / f"alignment_table_{SECTION}.tsv", sep="\t")
    spots = spots[spots["selected"] == 1]
    ids = [f"{x}x{y}" for x, y in zip(spots["x"], spots["y"], strict=True)]
    spots.index = ids
    keep = counts.index.intersection(spots.index, sort=False)
    counts = counts.loc[keep]
    spots = spots.loc[keep]
    X = sp.csr_matrix(counts.to_numpy().astype(np.int32))
    np.savez_compressed(
        dst / "mob1.npz",
        data=X.data,
        indices=X.indices,
        indptr=X.indptr,
        shape=np.array(X.shape),
        spot_ids=np.array(keep, dtype="U16"),
        genes=np.array(counts.columns, dtype="U32"),
        spots=spots[["x", "y", "new_x", "new_y", "pixel_x", "pixel_y", "selected"]].to_numpy(dtype=np.float64),
    )
    shutil.copyfile(src / "counts" / f"{SECTION}.jpg", dst / "mob1.jpg")
    shutil.copyfile(src / "LICENSE.STUtility", dst / "LICENSE.mob")
    print(f"{len(keep)} spots x {X.shape[1]} genes, nnz {X.nnz}")


if __name__ == "__main__":
    here = Path(__file__).resolve().parents[1]
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else here.parent / "shared" / "data" / "mob"
    main(src, here / "src" / "stpredict" / "datasets" / "_data")
