"""Fixtures of the reader tests."""

from __future__ import annotations

import pytest

from stpredict.io import _tiff


@pytest.fixture
def block_reads(monkeypatch):
    """Counts the blocks of TIFF levels read through io/_tiff: ``(level, ((y0, y1), ...))`` per read."""
    reads = []
    original = _tiff._read_block

    def counting(path, level, block_info=None):
        reads.append((level, tuple(map(tuple, block_info[None]["array-location"]))))
        return original(path, level, block_info=block_info)

    monkeypatch.setattr(_tiff, "_read_block", counting)
    return reads
