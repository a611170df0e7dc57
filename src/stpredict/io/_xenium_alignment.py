"""Xenium Explorer's image-alignment matrix: reading and checking it, and checking the H&E it places covers the cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["alignment_hint", "check_overlap", "on_image", "read_alignment"]


def alignment_hint() -> str:
    """The fix to name in an error about a missing or malformed alignment."""
    return (
        "Pass the matrix Xenium Explorer exports after aligning the H&E (the '<name>_imagealignment.csv' of "
        "'Download alignment file', three lines of three numbers mapping H&E pixels to Xenium pixels), or "
        "alignment=numpy.eye(3) if the H&E is already in Xenium morphology pixels."
    )


def read_alignment(alignment: str | Path | np.ndarray) -> np.ndarray:
    """Read and check a Xenium Explorer image-alignment matrix.

    Parameters
    ----------
    alignment
        A CSV of three lines of three comma-separated numbers, no header (Xenium Explorer's
        ``*_imagealignment.csv``), or a 3×3 array.

    Returns
    -------
    The 3×3 affine from H&E pixels ``(x, y, 1)`` to Xenium morphology pixels, as floats.
    """
    source = "the alignment matrix"
    if isinstance(alignment, str | Path):
        path = Path(alignment)
        source = f"alignment file {str(path)!r}"
        if not path.is_file():
            msg = f"Alignment file {str(path)!r} does not exist. {alignment_hint()}"
            raise FileNotFoundError(msg)
        if path.suffix.lower() == ".zip":
            msg = (
                f"{source} is a zip archive (Xenium Explorer's keypoints + matrix export): unzip it and pass the "
                "matrix CSV ('*_imagealignment.csv' / 'matrix.csv'), not the keypoints one."
            )
            raise ValueError(msg)
        text = path.read_text(errors="replace")
        rows = [ln.strip() for ln in text.splitlines() if ln.strip()]
        try:
            values = [[float(v) for v in ln.replace(";", ",").replace(",", " ").split()] for ln in rows]
        except ValueError:
            head = rows[0][:80] if rows else ""
            if "fixed" in head.lower() or "alignment" in head.lower():
                msg = (
                    f"{source} holds keypoints (header {head!r}), not the alignment matrix. "
                    "Pass the matrix CSV that Xenium Explorer exports beside the keypoints ('*_imagealignment.csv')."
                )
            else:
                msg = f"{source} is not a 3×3 matrix of numbers (first line {head!r}). {alignment_hint()}"
            raise ValueError(msg) from None
        if len({len(v) for v in values}) > 1:
            msg = f"{source} has rows of unequal length; expected 3 lines of 3 numbers. {alignment_hint()}"
            raise ValueError(msg)
        matrix = np.array(values, dtype=float).reshape(len(values), -1)
    else:
        matrix = np.asarray(alignment, dtype=float)
    if matrix.shape != (3, 3):
        msg = f"{source} is not a 3×3 matrix (shape {matrix.shape}). {alignment_hint()}"
        raise ValueError(msg)
    if not np.all(np.isfinite(matrix)):
        msg = f"{source} has non-finite entries: {matrix.tolist()}."
        raise ValueError(msg)
    if not np.allclose(matrix[2], [0.0, 0.0, 1.0], atol=1e-9):
        msg = (
            f"{source} is not an affine matrix: its last row is {matrix[2].tolist()}, not [0, 0, 1] "
            "(a projective matrix cannot be used)."
        )
        raise ValueError(msg)
    det = float(np.linalg.det(matrix[:2, :2]))
    if not abs(det) > 1e-12:
        msg = f"{source} is singular (determinant {det:g}): it does not map the H&E onto the Xenium frame."
        raise ValueError(msg)
    return matrix


def on_image(xy: np.ndarray, to_image: np.ndarray, h: int, w: int) -> np.ndarray:
    """Whether each point ``xy``, mapped by the affine ``to_image``, lies on an ``h`` × ``w`` pixel image."""
    p = xy @ to_image[:2, :2].T + to_image[:2, 2]
    return (p[:, 0] >= 0) & (p[:, 0] <= w) & (p[:, 1] >= 0) & (p[:, 1] <= h)


def check_overlap(cells_um: np.ndarray, M: np.ndarray, *, ps: float, h: int, w: int, he_name: str) -> None:
    """Raise, naming both extents in µm, when the H&E registered by ``M`` (H&E → Xenium pixels) holds no cell."""
    xen_px = cells_um / ps
    n_on = int(on_image(xen_px, np.linalg.inv(M), h, w).sum())
    if n_on:
        return
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], dtype=float) @ M.T
    lo, hi = corners[:, :2].min(0) * ps, corners[:, :2].max(0) * ps
    c_lo, c_hi = cells_um.min(0), cells_um.max(0)
    hint = ""
    if on_image(xen_px, M, h, w).any():
        hint = (
            " The inverse of this matrix would put cells on it: the matrix may map Xenium pixels to H&E pixels; "
            "pass alignment=numpy.linalg.inv(matrix)."
        )
    msg = (
        f"The H&E {he_name} ({w}×{h} px), registered through the alignment, covers x {lo[0]:.0f}–{hi[0]:.0f} µm, "
        f"y {lo[1]:.0f}–{hi[1]:.0f} µm, while the cells lie at x {c_lo[0]:.0f}–{c_hi[0]:.0f} µm, "
        f"y {c_lo[1]:.0f}–{c_hi[1]:.0f} µm: no cell is on the H&E. Check that the alignment file belongs to this "
        f"H&E and this Xenium region (Xenium Explorer's H&E → Xenium pixel matrix).{hint}"
    )
    raise ValueError(msg)
