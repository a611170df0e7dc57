"""Readers of the real data in ../shared/data for benchmarks (never shipped, never downloaded)."""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HER2ST = {
    "C2": "5714_HE_BT_C2.jpg",
    "C3": "5714_HE_BT_D1.jpg",
    "C4": "5714_HE_BT_D2.jpg",
    "C5": "5714_HE_BT_E1.jpg",
    "C6": "5714_HE_BT_E2.jpg",
}


def her2st(sections=tuple(HER2ST)):
    import stpredict as stp

    d = SHARED / "her2st" / "data"
    return [
        stp.io.read_st(
            d / "ST-cnts" / f"{s}.tsv.gz",
            d / "ST-spotfiles" / f"{s}_selection.tsv",
            d / "ST-imgs" / "C" / s / HER2ST[s],
        )
        for s in sections
    ]


def mob(sections=(1, 2, 3, 4)):
    import stpredict as stp

    d = SHARED / "mob" / "counts"
    return [
        stp.io.read_st(d / f"MOB{i}.tsv", d / f"alignment_table_MOB{i}.tsv", d / f"MOB{i}.jpg", array="2k")
        for i in sections
    ]


def mob_individuals(sections=(1, 2, 3, 4)) -> list[str]:
    """The individual (mouse) of each mob section, from the dataset's ``metaData.csv`` (MOB1–2: 1, MOB3–4: 2)."""
    import pandas as pd

    meta = pd.read_csv(SHARED / "mob" / "metaData.csv", sep=";")
    meta.index = [Path(str(p)).stem for p in meta["samples"]]
    return [str(meta.loc[f"MOB{i}", "individual"]) for i in sections]
