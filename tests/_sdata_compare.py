"""Deep comparison of two SpatialData objects: every element, every table's X/obs/var/layers/obsm/uns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

KINDS = ("images", "labels", "points", "shapes", "tables")


def _array(x: Any) -> np.ndarray:
    if sp.issparse(x):
        x = x.toarray()
    if hasattr(x, "compute"):
        x = x.compute()
    return np.asarray(x)


def assert_same_array(a: Any, b: Any, where: str) -> None:
    a, b = _array(a), _array(b)
    assert a.shape == b.shape, f"{where}: shape {a.shape} != {b.shape}"
    assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} != {b.dtype}"
    if a.dtype.kind in "fc":
        np.testing.assert_array_equal(a, b, err_msg=where)  # NaN == NaN here
    else:
        assert np.array_equal(a, b), where


def _same_value(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict) or isinstance(b, dict):
        assert isinstance(a, dict) and isinstance(b, dict), f"{where}: {type(a)} != {type(b)}"
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            _same_value(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, pd.DataFrame | pd.Series):
        assert type(a) is type(b), where
        pd.testing.assert_frame_equal(a, b, obj=where) if isinstance(
            a, pd.DataFrame
        ) else pd.testing.assert_series_equal(a, b, obj=where)
    elif isinstance(a, np.ndarray) or sp.issparse(a) or isinstance(b, np.ndarray) or sp.issparse(b):
        assert_same_array(a, b, where)
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_value(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        pass
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_table(a: Any, b: Any, where: str = "table") -> None:
    """Every part of two AnnData objects is equal (X, obs, var, names, layers, obsm, varm, obsp, uns)."""
    assert a.shape == b.shape, f"{where}: shape {a.shape} != {b.shape}"
    assert (a.X is None) == (b.X is None), f"{where}.X"
    if a.X is not None:
        assert_same_array(a.X, b.X, f"{where}.X")
    pd.testing.assert_frame_equal(a.obs, b.obs, obj=f"{where}.obs")
    pd.testing.assert_frame_equal(a.var, b.var, obj=f"{where}.var")
    for part in ("layers", "obsm", "varm", "obsp", "varp"):
        ma, mb = getattr(a, part), getattr(b, part)
        assert sorted(ma) == sorted(mb), f"{where}.{part}: {sorted(ma)} != {sorted(mb)}"
        for k in ma:
            _same_value(ma[k], mb[k], f"{where}.{part}[{k!r}]")
    assert sorted(a.uns) == sorted(b.uns), f"{where}.uns: {sorted(a.uns)} != {sorted(b.uns)}"
    for k in a.uns:
        _same_value(a.uns[k], b.uns[k], f"{where}.uns[{k!r}]")


def assert_same_sdata(a: Any, b: Any) -> None:
    """``a`` and ``b`` hold the same elements, equal in data, transformations and (tables) every part."""
    from spatialdata.transformations import get_transformation

    for kind in KINDS:
        ea, eb = getattr(a, kind), getattr(b, kind)
        assert list(ea) == list(eb), f"{kind}: {list(ea)} != {list(eb)}"
        for k in ea:
            x, y = ea[k], eb[k]
            where = f"{kind}[{k!r}]"
            if kind == "tables":
                assert_same_table(x, y, where)
                continue
            assert get_transformation(x, get_all=True) == get_transformation(y, get_all=True), f"{where} transforms"
            if kind == "shapes":
                assert x.equals(y), where
                assert list(x.columns) == list(y.columns), where
            elif kind == "points":
                pd.testing.assert_frame_equal(x.compute(), y.compute(), obj=where)
            elif hasattr(x, "subtree"):  # multiscale DataTree
                assert x.identical(y), where
            else:
                assert x.identical(y), where
