"""A catalogue of hostile or mistaken data inputs (issue 16, "Nothing lost, nothing silent").

Each case builds one bad input from small synthetic data and makes one call. A ``clear`` case expects an error
of the given type whose message holds the fragment; the error must come before any expensive work — no pixel of
the image is read unless the case is about pixels (``reads_pixels``) — and must leave the SpatialData as it was
(compared element by element, table by table, with its attrs). An ``accepted`` case is a valid edge case: the
call works, and ``check`` (when given) says how.

Where a case was silent, or failed with an internal or unclear error before the fix that came with this file,
its ``before`` says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import stpredict as stp

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

RNG = np.random.default_rng(0)
#: 600 px: to_multiscale makes a two-level pyramid (scale0, scale1) of it.
IMAGE = RNG.integers(0, 255, (600, 600, 3), dtype=np.uint8)
N_SPOTS, N_GENES = 16, 3


# ------------------------------------------------------------------------------------------------------
# builders
# ------------------------------------------------------------------------------------------------------
def arrays(n: int = N_SPOTS, n_genes: int = N_GENES, **changes: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`stp.io.from_arrays`: ``n`` spots (55 µm, 1 µm/px) on a 4x4 grid of IMAGE."""
    grid = np.stack(np.meshgrid(np.arange(4) * 120 + 100, np.arange(4) * 120 + 100), -1).reshape(-1, 2)
    rng = np.random.default_rng(1)
    kw = {
        "image": IMAGE,
        "coords": grid[:n].astype(float),
        "counts": rng.poisson(5, (n, n_genes)).astype(np.int32) + 1,
        "microns_per_pixel": 1.0,
        "spot_diameter_um": 55.0,
    }
    kw.update(changes)
    return kw


def slide(n: int = N_SPOTS, n_genes: int = N_GENES, **changes: Any):
    return stp.io.from_arrays(**arrays(n, n_genes, **changes))


def _log_normalised(counts: np.ndarray) -> np.ndarray:
    x = counts.astype(float)
    return np.log1p(x / x.sum(1, keepdims=True) * 1e4)


def with_table(change: Callable[[Any], None]) -> Callable[[Path], Any]:
    def build(_tmp: Path):
        s = slide()
        change(s.tables["table"])
        return s

    return build


def with_shapes(change: Callable[[Any], None]) -> Callable[[Path], Any]:
    def build(_tmp: Path):
        s = slide()
        change(s.shapes["spots"])
        return s

    return build


def _set_x(table, X) -> None:
    table.X = sp.csr_matrix(X)


def _lognorm_x(table) -> None:
    _set_x(table, _log_normalised(table.X.toarray()))


def _lognorm_x_counts_layer(table) -> None:
    table.layers["counts"] = table.X.copy()
    _lognorm_x(table)


def _lognorm_layer(table) -> None:
    table.layers["lognorm"] = sp.csr_matrix(_log_normalised(table.X.toarray()))


def _ambient_corrected(table) -> None:  # non-integer, but counts: values well above any log scale
    _set_x(table, table.X.toarray() * 12.37)


def _whole_floats(table) -> None:
    _set_x(table, table.X.toarray().astype(np.float64))


def _negative(table) -> None:
    X = table.X.toarray()
    X[0, 0] = -3
    _set_x(table, X)


def _nan(table) -> None:
    X = table.X.toarray().astype(float)
    X[2, 1] = np.nan
    _set_x(table, X)


def _duplicate_genes(table) -> None:
    table.var_names = ["g0", "g0", "g1"]


def _duplicate_instance(table) -> None:
    ids = table.obs["spot_id"].to_numpy().copy()
    ids[1] = ids[0]
    table.obs["spot_id"] = ids


def _unknown_instance(table) -> None:
    ids = table.obs["spot_id"].to_numpy().copy()
    ids[0] = 999
    table.obs["spot_id"] = ids


def _missing_region(table) -> None:
    table.obs["region"] = pd.Categorical(["spotz"] * table.n_obs)
    table.uns["spatialdata_attrs"]["region"] = "spotz"


def _radius(value: float) -> Callable[[Any], None]:
    def change(shapes) -> None:
        shapes["radius"] = value

    return change


def _duplicate_index(shapes) -> None:
    idx = shapes.index.to_numpy().copy()
    idx[1] = idx[0]
    shapes.index = idx


def _nan_centre(shapes) -> None:
    from shapely.geometry import Point

    geom = shapes.geometry.copy()
    geom.iloc[3] = Point(np.nan, np.nan)
    shapes.geometry = geom


def _transform(element: str, transformation_of: Callable[[], Any], cs: str = "global") -> Callable[[Path], Any]:
    def build(_tmp: Path):
        from spatialdata.transformations import set_transformation

        s = slide()
        target = s.shapes["spots"] if element == "shapes" else s.images["he"]
        set_transformation(target, transformation_of(), to_coordinate_system=cs)
        return s

    return build


def _no_shared_cs(_tmp: Path):
    from spatialdata.transformations import Identity, set_transformation

    s = slide()
    set_transformation(s.shapes["spots"], {"other": Identity()}, set_all=True)
    return s


def _scale0() -> Any:
    from spatialdata.transformations import Scale

    return Scale([0.0, 0.0], axes=("x", "y"))


def _shift() -> Any:
    from spatialdata.transformations import Translation

    return Translation([5000.0, 0.0], axes=("x", "y"))


def _set_level(s, name: str, arr: np.ndarray) -> None:
    """Replace pyramid level ``name`` of image ``"he"`` with ``arr`` (any shape), keeping its attrs."""
    import xarray as xr

    tree = s.images["he"]
    var = next(iter(tree[name].ds.data_vars))
    old = tree[name].ds[var]
    c, h, w = arr.shape
    coords = {
        "c": list(old.c.values[:c]) if c <= 3 else list(range(c)),
        "y": np.arange(h) + 0.5,
        "x": np.arange(w) + 0.5,
    }
    new = xr.DataArray(da.from_array(arr, chunks=(c, 256, 256)), dims=("c", "y", "x"), coords=coords, attrs=old.attrs)
    tree[name] = xr.Dataset({var: new})


def with_level(shape: tuple[int, int, int]) -> Callable[[Path], Any]:
    def build(_tmp: Path):
        s = slide()
        _set_level(s, "scale1", np.random.default_rng(2).integers(0, 255, shape, dtype=np.uint8))
        return s

    return build


def with_image(image: np.ndarray) -> Callable[[Path], Any]:
    return lambda _tmp: slide(image=image)


def _float_image(nan: bool) -> np.ndarray:
    img = (IMAGE.astype(np.float32) / 255).transpose(2, 0, 1).copy()
    if nan:
        img[0, 5, 5] = np.nan
    return img


def _white_with_tissue() -> np.ndarray:
    """A white slide (exactly 255) with tissue in a small patch that no sampled window hits."""
    img = np.full((600, 600, 3), 255, np.uint8)
    img[300:330, 150:180] = IMAGE[:30, :30]
    return img


def _fitted_mean():
    return stp.tl.fit(slide(), model="mean")


def _fitted_copy():
    return stp.tl.fit(slide(), model="copy")


def _visium_counts_only(tmp: Path) -> Path:
    (tmp / "filtered_feature_bc_matrix.h5").write_bytes(b"")
    return tmp


def _st_files(tmp: Path) -> Path:
    (tmp / "counts.tsv").write_text("\tg0\n10x10\t3\n")
    (tmp / "spots.tsv").write_text("a\tb\n1\t2\n")
    return tmp


def _missing(tmp: Path) -> Path:
    return tmp / "nope"


def _empty(tmp: Path) -> Path:
    return tmp


def fit(s, **kw):
    return stp.tl.fit(s, model="mean", **kw)


# ------------------------------------------------------------------------------------------------------
# the catalogue
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One hostile input: ``build(tmp_path)`` makes it, ``call(input)`` uses it."""

    id: str
    build: Callable[[Path], Any]
    call: Callable[[Any], Any]
    error: type[Exception] | None  # None: an accepted edge case
    match: str = ""
    before: str = "already clear"  # what the call did before the fix of issue 16
    reads_pixels: bool = False  # the check is about pixels, or comes after the image check
    check: Callable[[Any, Any], None] | None = None  # accepted: (input, result) -> assertions


def _stored_as_int(_s, sdata) -> None:
    assert sdata.tables["table"].X.dtype == np.int32


def _rgb_written(s, _result) -> None:
    assert s.images["he_rgb"]["scale0"]["image"].dtype == np.uint8


CASES = [
    # --- counts tables ---------------------------------------------------------------------------------
    Case("counts-log-normalised", with_table(_lognorm_x), fit, ValueError, "look log-normalised", "silent"),
    Case("counts-log-normalised-counts-layer-named", with_table(_lognorm_x_counts_layer), fit, ValueError,
         "layer='counts'", "silent"),
    Case("counts-log-normalised-layer", with_table(_lognorm_layer), lambda s: fit(s, layer="lognorm"), ValueError,
         "layer 'lognorm' holds non-integer", "silent"),
    Case("counts-log-normalised-read-by-copy", with_table(_lognorm_x), lambda s: stp.tl.predict(s, _fitted_copy()),
         ValueError, "look log-normalised", "silent: a fitted copy read log values as counts"),
    Case("counts-missing-layer", with_table(lambda t: None), lambda s: fit(s, layer="counts"), KeyError,
         "has no layer 'counts'", "unclear: KeyError 'counts' from anndata"),
    Case("counts-negative", with_table(_negative), fit, ValueError, "negative values", "clear, but only after reading the image"),
    Case("counts-nan", with_table(_nan), fit, ValueError, "NaN or infinite", "clear, but only after reading the image"),
    Case("counts-duplicate-genes", with_table(_duplicate_genes), fit, ValueError, "names 1 genes more than once",
         "internal: pandas InvalidIndexError"),
    Case("counts-zero-genes", lambda _t: slide(counts=None), fit, ValueError, "H&E-only slide",
         "unclear: 'nothing to fit on' without the way out"),
    Case("counts-ambient-corrected-accepted", with_table(_ambient_corrected), fit, None, before="silent (now warns)"),
    Case("counts-whole-floats-accepted", with_table(_whole_floats), fit, None),
    # --- table linkage ---------------------------------------------------------------------------------
    Case("table-duplicate-instance-ids", with_table(_duplicate_instance), fit, ValueError,
         "column 'spot_id') repeats 1 ids", "silent"),
    Case("table-unknown-instance", with_table(_unknown_instance), fit, ValueError, "instances that are not in spots",
         "clear, but only after reading the image"),
    Case("table-region-missing", with_table(_missing_region), fit, KeyError, "annotates 'spotz', which the SpatialData",
         "unclear: 'No table annotates a shapes element'"),
    # --- spot geometry ---------------------------------------------------------------------------------
    Case("shapes-duplicate-index", with_shapes(_duplicate_index), fit, ValueError, "index of spots 'spots' repeats",
         "internal: pandas InvalidIndexError"),
    Case("shapes-radius-zero", with_shapes(_radius(0.0)), fit, ValueError, "radius that is zero, negative", "silent"),
    Case("shapes-radius-negative", with_shapes(_radius(-10.0)), fit, ValueError, "radius that is zero, negative",
         "silent"),
    Case("shapes-radius-nan", with_shapes(_radius(np.nan)), fit, ValueError, "not finite", "silent"),
    Case("shapes-radius-absurd", with_shapes(_radius(1e6)), fit, ValueError, "larger than image 'he'", "silent"),
    Case("shapes-nan-centre", with_shapes(_nan_centre), fit, ValueError, "no finite centre", "silent"),
    Case("shapes-singular-transformation", _transform("shapes", _scale0), fit, ValueError, "is singular", "silent"),
    Case("image-singular-transformation", _transform("image", _scale0), fit, ValueError, "is singular",
         "internal: numpy LinAlgError"),
    Case("spots-outside-image", _transform("shapes", _shift), fit, ValueError, "lie outside image", "clear, but only after reading the image"),
    Case("no-shared-coordinate-system", _no_shared_cs, fit, ValueError, "No image shares a coordinate system",
         "unclear: 'The SpatialData has no images element to use; it has images: 'he''"),
    Case("spots-1-fit", lambda _t: slide(1), fit, ValueError, "at least 3 measured spots",
         "unclear: NoGenesError suggesting the layer", reads_pixels=True),
    Case("spots-2-fit", lambda _t: slide(2), fit, ValueError, "at least 3 measured spots",
         "unclear: NoGenesError suggesting the layer", reads_pixels=True),
    Case("spots-3-fit-accepted", lambda _t: slide(3), fit, None),
    Case("spots-1-predict-accepted", lambda _t: slide(1), lambda s: stp.tl.predict(s, _fitted_mean()), None),
    # --- images ----------------------------------------------------------------------------------------
    Case("pyramid-level-aspect", with_level((3, 300, 100)), fit, ValueError, "is not a downsampling of level 0",
         "silent"),
    Case("pyramid-level-larger", with_level((3, 900, 900)), fit, ValueError, "larger than the finer level", "silent"),
    Case("pyramid-level-empty", with_level((3, 0, 300)), fit, ValueError, "is not a downsampling of level 0",
         "internal: ZeroDivisionError in image_levels"),
    Case("pyramid-level-channels", with_level((1, 300, 300)), fit, ValueError, "levels of image 'he' disagree",
         "unclear: 'Image 'he' is greyscale'"),
    Case("image-float-nan-fit", with_image(_float_image(nan=True)), fit, ValueError, "has dtype float32",
         "internal: UFuncTypeError in from_arrays"),
    Case("image-float-nan-to-rgb", with_image(_float_image(nan=True)), lambda s: stp.io.to_rgb(s, "he"), ValueError,
         "1 NaN or infinite pixels", "internal in from_arrays; to_rgb made the image black", reads_pixels=True),
    Case("image-float-to-rgb-accepted", with_image(_float_image(nan=False)), lambda s: stp.io.to_rgb(s, "he"), None,
         before="internal: UFuncTypeError in from_arrays", check=_rgb_written),
    Case("image-blank", with_image(np.full((600, 600, 3), 200, np.uint8)), fit, ValueError, "is blank",
         reads_pixels=True),
    Case("image-greyscale", with_image(IMAGE[..., 0]), fit, ValueError, "is greyscale"),
    Case("image-uint16", with_image(IMAGE.astype(np.uint16) * 200), fit, ValueError, "has dtype uint16"),
    Case("image-mostly-background-accepted", with_image(_white_with_tissue()), fit, None),
    # --- from_arrays -----------------------------------------------------------------------------------
    Case("from-arrays-inf-coords", lambda _t: arrays(coords=np.where(np.eye(16, 2) > 0, np.inf, 100.0)),
         lambda kw: stp.io.from_arrays(**kw), ValueError, "NaN or infinite positions", "silent"),
    Case("from-arrays-nan-coords", lambda _t: arrays(coords=np.where(np.eye(16, 2) > 0, np.nan, 100.0)),
         lambda kw: stp.io.from_arrays(**kw), ValueError, "NaN or infinite positions", "silent (fit too)"),
    Case("from-arrays-no-spot", lambda _t: arrays(0), lambda kw: stp.io.from_arrays(**kw), ValueError,
         "holds no spot", "internal: spatialdata 'Column `geometry` is empty'"),
    Case("from-arrays-float-counts", lambda _t: arrays(counts=np.random.default_rng(3).random((16, 3)) * 4),
         lambda kw: stp.io.from_arrays(**kw), ValueError, "look log-normalised", "silent"),
    Case("from-arrays-negative-counts", lambda _t: arrays(counts=-np.ones((16, 3), int)),
         lambda kw: stp.io.from_arrays(**kw), ValueError, "negative values", "silent until a fit"),
    Case("from-arrays-negative-diameter", lambda _t: arrays(spot_diameter_um=-55.0),
         lambda kw: stp.io.from_arrays(**kw), ValueError, "spot_diameter_um must be a positive",
         "internal: spatialdata 'Radii of circles must be positive.'"),
    Case("from-arrays-zero-diameter", lambda _t: arrays(spot_diameter_um=0.0), lambda kw: stp.io.from_arrays(**kw),
         ValueError, "spot_diameter_um must be a positive", "internal: spatialdata 'Radii of circles must be positive.'"),
    Case("from-arrays-duplicate-genes", lambda _t: arrays(genes=["a", "a", "b"]), lambda kw: stp.io.from_arrays(**kw),
         ValueError, "gene names repeat", "silent, then internal at fit"),
    Case("from-arrays-duplicate-spots", lambda _t: arrays(obs_names=["s"] * 16), lambda kw: stp.io.from_arrays(**kw),
         ValueError, "spot names repeat", "silent (anndata warning)"),
    Case("from-arrays-rows-mismatch", lambda _t: arrays(counts=np.ones((15, 3), int)),
         lambda kw: stp.io.from_arrays(**kw), ValueError, "counts has 15 rows but coords has 16"),
    Case("from-arrays-coords-shape", lambda _t: arrays(coords=np.ones((16, 3))), lambda kw: stp.io.from_arrays(**kw),
         ValueError, "coords must be (n, 2)"),
    Case("from-arrays-image-missing", lambda t: arrays(image=t / "nope.png"), lambda kw: stp.io.from_arrays(**kw),
         FileNotFoundError, "nope.png' does not exist"),
    Case("from-arrays-whole-float-counts-accepted", lambda _t: arrays(counts=np.ones((16, 3))),
         lambda kw: stp.io.from_arrays(**kw), None, check=_stored_as_int),
    # --- readers ---------------------------------------------------------------------------------------
    Case("read-visium-missing", _missing, stp.io.read_visium, FileNotFoundError, "does not exist"),
    Case("read-visium-empty", _empty, stp.io.read_visium, FileNotFoundError, "has no counts matrix",
         "unclear: h5py 'Unable to synchronously open file'"),
    Case("read-visium-no-spatial", _visium_counts_only, stp.io.read_visium, FileNotFoundError, "has no spatial/",
         "unclear: h5py error on the counts file"),
    Case("read-st-missing", lambda t: t, lambda t: stp.io.read_st(t / "c.tsv", t / "s.tsv", IMAGE), FileNotFoundError,
         "ST counts file", "unclear: pandas '[Errno 2]'"),
    Case("read-st-wrong-layout", _st_files, lambda t: stp.io.read_st(t / "counts.tsv", t / "spots.tsv", IMAGE),
         ValueError, "spot file lacks columns"),
    Case("read-hest-missing", _missing, stp.io.read_hest, FileNotFoundError, "does not exist"),
    Case("read-hest-empty", _empty, stp.io.read_hest, FileNotFoundError, "holds no HEST sample"),
    Case("read-xenium-missing", _missing, stp.io.read_xenium, FileNotFoundError, "does not exist"),
    Case("read-xenium-empty", _empty, stp.io.read_xenium, FileNotFoundError, "is not a Xenium output bundle"),
    Case("read-visium-hd-missing", _missing, stp.io.read_visium_hd, FileNotFoundError, "does not exist"),
    Case("read-visium-hd-empty", _empty, stp.io.read_visium_hd, FileNotFoundError, "binned_outputs"),
    Case("read-alignment-missing", lambda t: t / "a.csv", stp.io.read_alignment, FileNotFoundError,
         "Alignment file"),
]  # fmt: skip


# ------------------------------------------------------------------------------------------------------
# helpers: pixel reads, deep state
# ------------------------------------------------------------------------------------------------------
class PixelReads:
    """Wraps every level of every image so that computing a chunk of it is counted."""

    def __init__(self) -> None:
        self.n = 0

    def _tick(self, block: np.ndarray) -> np.ndarray:
        if block.size:
            self.n += 1
        return block

    def wrap(self, sdata) -> None:
        from stpredict._image import replace_levels

        for key, element in list(sdata.images.items()):
            if not hasattr(element, "children"):
                continue
            arrays = {}
            for name in element.children:
                arr = next(iter(element[name].ds.data_vars.values())).data
                arrays[name] = arr.map_blocks(self._tick, dtype=arr.dtype, meta=np.empty((0, 0, 0), arr.dtype))
            replace_levels(sdata.images[key], arrays, chunks=1024)


def state(sdata) -> dict[str, Any]:
    """Everything a user would see of ``sdata``: element keys, pixel values, geometries, tables, attrs."""
    from spatialdata.transformations import get_transformation

    from stpredict._image import image_levels

    out: dict[str, Any] = {"attrs": dict(sdata.attrs)}
    for key, image in sdata.images.items():
        out[f"images/{key}"] = [(lvl.name, lvl.array.compute()) for lvl in image_levels(image)]
        out[f"images/{key}/transformations"] = get_transformation(image, get_all=True)
    for key, shapes in sdata.shapes.items():
        out[f"shapes/{key}"] = shapes.copy()
        out[f"shapes/{key}/transformations"] = get_transformation(shapes, get_all=True)
    for kind in ("labels", "points"):
        for key in getattr(sdata, kind):
            out[f"{kind}/{key}"] = key
    for key, t in sdata.tables.items():
        out[f"tables/{key}"] = {
            "X": t.X.toarray() if sp.issparse(t.X) else np.asarray(t.X),
            "obs": t.obs.copy(),
            "var": t.var.copy(),
            "layers": {k: (v.toarray() if sp.issparse(v) else np.asarray(v)) for k, v in t.layers.items()},
            "obsm": {k: np.asarray(v) for k, v in t.obsm.items()},
            "uns": repr(sorted(t.uns.items(), key=lambda kv: kv[0])),
        }
    return out


def assert_same(a: Any, b: Any, where: str = "sdata") -> None:
    """Deep equality of two :func:`state` values (NaN equal to NaN)."""
    if isinstance(a, dict):
        assert isinstance(b, dict)
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} became {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{where}: {a.shape} {a.dtype} -> {b.shape} {b.dtype}"
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), f"{where}: values changed"
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, obj=where)
    else:
        assert repr(a) == repr(b), f"{where}: {a!r} -> {b!r}"


# ------------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------------
def test_catalogue_size():
    """The catalogue covers the issue's list, with at least 30 cases."""
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [c for c in CASES if c.error is not None], ids=lambda c: c.id)
def test_clear_error(case: Case, tmp_path):
    data = case.build(tmp_path)
    is_sdata = hasattr(data, "images")
    reads = PixelReads()
    if is_sdata:
        reads.wrap(data)
        before = state(data)
        reads.n = 0
    with pytest.raises(case.error, match=_fragment(case.match)):
        case.call(data)
    if is_sdata:
        if not case.reads_pixels:
            assert reads.n == 0, f"{case.id}: {reads.n} image chunks read before the error"
        assert_same(before, state(data))


@pytest.mark.parametrize("case", [c for c in CASES if c.error is None], ids=lambda c: c.id)
def test_accepted(case: Case, tmp_path):
    data = case.build(tmp_path)
    result = case.call(data)
    if case.check is not None:
        case.check(data, result)


def _fragment(text: str) -> str:
    import re

    return re.escape(text)


def test_log_normalised_message_names_the_fix():
    """The most common mistake: the message says what the values look like and which layer to pass."""
    s = with_table(_lognorm_x_counts_layer)(None)
    with pytest.raises(ValueError, match="log-normalised") as e:
        fit(s)
    assert "layer='counts'" in str(e.value)
    assert "table 'table' .X" in str(e.value)
    fit(s, layer="counts")  # the fix works


def test_ambient_corrected_counts_warn(caplog):
    """Non-integer counts above any log scale are fitted, and said to be taken as counts."""
    s = with_table(_ambient_corrected)(None)
    with caplog.at_level(logging.WARNING, logger="stpredict"):
        fit(s)
    assert "taken as counts" in caplog.text


def test_lazy_pyramid_image_check_reads_few_level0_chunks():
    """The image check samples level 0 of a pyramid built lazily from it instead of computing every chunk.

    (Before: check_rgb computed the coarsest level, which computes all 64 level-0 chunks here.)
    """
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import get_transformation

    s = slide()
    reads = PixelReads()
    big = np.random.default_rng(4).integers(0, 255, (3, 1024, 1024), dtype=np.uint8)
    level0 = da.from_array(big, chunks=(3, 128, 128))
    level0 = level0.map_blocks(reads._tick, dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8))
    s.images["he"] = Image2DModel.parse(
        level0, dims=("c", "y", "x"), scale_factors=[2, 2], chunks=(3, 128, 128),
        transformations=dict(get_transformation(s.images["he"], get_all=True)),
    )  # fmt: skip
    reads.n = 0
    geo = stp.pp.spots(s)
    assert geo.n_spots == N_SPOTS
    n_chunks = (1024 // 128) ** 2
    assert 0 < reads.n <= 16 < n_chunks
