from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data; skips the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


HER2ST_SECTIONS = {
    "C2": "5714_HE_BT_C2.jpg",
    "C3": "5714_HE_BT_D1.jpg",
    "C4": "5714_HE_BT_D2.jpg",
    "C5": "5714_HE_BT_E1.jpg",
    "C6": "5714_HE_BT_E2.jpg",
}


def her2st_paths(section: str) -> tuple[Path, Path, Path]:
    root = shared_data("her2st", "data")
    return (
        root / "ST-cnts" / f"{section}.tsv.gz",
        root / "ST-spotfiles" / f"{section}_selection.tsv",
        root / "ST-imgs" / "C" / section / HER2ST_SECTIONS[section],
    )


@pytest.fixture(scope="session")
def _synthetic_session():
    import stpredict as stp

    return stp.datasets.synthetic(image_size=768, n_genes=12, seed=0)


@pytest.fixture
def sdata_syn(_synthetic_session):
    """A small synthetic slide (Visium layout, 1 µm/px); a fresh copy per test."""
    from spatialdata import deepcopy

    return deepcopy(_synthetic_session)


@pytest.fixture(scope="session")
def _mob_session():
    import stpredict as stp

    return stp.datasets.mob()


@pytest.fixture
def sdata_mob(_mob_session):
    from spatialdata import deepcopy

    return deepcopy(_mob_session)


@pytest.fixture(autouse=True)
def _forget_kept_fits():
    """Each test starts without fits kept by an earlier test's superresolve (tests of reuse make their own)."""
    from stpredict.tl._reuse import clear_fits

    clear_fits()
    yield
    clear_fits()
