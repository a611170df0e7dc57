"""Counts stored as int32 when whole: one rule (io/_build.int32_if_whole) for every reader."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp

import stpredict as stp
from stpredict.io import _build, _visium_hd, _xenium
from stpredict.io._build import int32_if_whole


def test_every_reader_uses_the_one_rule():
    assert _visium_hd.int32_if_whole is int32_if_whole
    assert _xenium.int32_if_whole is int32_if_whole
    assert not hasattr(_visium_hd, "_as_int")


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_whole_values_become_int32_in_the_same_format(fmt):
    x = np.array([[0.0, 3.0], [2.0**31 - 1, 0.0]], dtype=np.float64)
    m = x if fmt == "dense" else getattr(sp, f"{fmt}_matrix")(x)
    out = int32_if_whole(m)
    assert out.dtype == np.int32 and type(out) is type(m)
    np.testing.assert_array_equal(out if fmt == "dense" else out.toarray(), x.astype(np.int64))
    for dtype in (np.int64, np.uint16, np.bool_):
        assert int32_if_whole(np.ones((2, 2), dtype)).dtype == np.int32
    empty = sp.csr_matrix((3, 2), dtype=np.float32)
    assert int32_if_whole(empty).dtype == np.int32


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (np.array([1.0, 2.5]), "non-integer"),
        (np.array([1.0, 3.0000002], np.float64), "non-integer"),  # close is not whole: astype would truncate
        (np.array([1.0, 2.0**31]), "values outside int32's range"),  # astype would wrap to a negative count
        (np.array([1, 2**40], np.int64), "values outside int32's range"),
        (np.array([1.0, np.inf]), "NaN or infinite"),
        (np.array([1.0, np.nan]), "NaN or infinite"),
    ],
)
def test_kept_unchanged_and_said_when_not_whole_int32(values, reason, caplog):
    m = sp.csr_matrix(values[None])
    assert int32_if_whole(m) is m  # silent without a table name
    with caplog.at_level(logging.WARNING, logger="stpredict"):
        assert int32_if_whole(m, table_key="square_008um") is m
    assert f"'square_008um' holds {reason}" in caplog.text


def test_from_arrays_stores_int32_only_when_whole():
    img = np.full((64, 64, 3), 200, np.uint8)
    coords = np.array([[20.0, 20.0], [40.0, 40.0]])
    whole = stp.io.from_arrays(img, coords, np.array([[1, 2], [3, 4]], np.int64), 1.0, 10.0)
    assert whole.tables["table"].X.dtype == np.int32
    near = stp.io.from_arrays(img, coords, np.array([[40.0, 2.0], [3.0, 40.000004]]), 1.0, 10.0)
    assert near.tables["table"].X.dtype == np.float64  # was truncated by a tolerant allclose before
    np.testing.assert_array_equal(near.tables["table"].X.toarray()[1, 1], 40.000004)
    assert _build.int32_if_whole is int32_if_whole
