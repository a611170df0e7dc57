"""Default element names and the keys stpredict writes, in one place (see ARCHITECTURE.md)."""

from __future__ import annotations

import re

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_SPOTS",
    "DEFAULT_TABLE",
    "LAYER_IMAGE_ONLY",
    "LAYER_PREDICTED",
    "LAYER_STD",
    "MICRONS_CS",
    "PIXELS_CS",
    "UNS_KEY",
    "bin_grid_name",
    "embedding_key",
    "grid_shapes_key",
    "grid_table_key",
    "parse_grid_name",
]

#: Coordinate system of the H&E image's level-0 pixels written by stpredict's readers.
PIXELS_CS = "global"
#: Coordinate system in micrometres; a ``Scale`` to it carries the physical pixel size.
MICRONS_CS = "micrometers"

DEFAULT_IMAGE = "he"
DEFAULT_SPOTS = "spots"
DEFAULT_TABLE = "table"

LAYER_PREDICTED = "predicted"
LAYER_STD = "predicted_std"
LAYER_IMAGE_ONLY = "image_only"
UNS_KEY = "stpredict"

_GRID_ALIASES = {"pseudospot4": "ps4", "pseudospot16": "ps16", "ps4": "ps4", "ps16": "ps16"}


def _fmt_number(value: float) -> str:
    return f"{value:g}"


def bin_grid_name(bin_size: float) -> str:
    """Name of a square-bin grid, e.g. ``bin8um`` or ``bin2.5um``."""
    return f"bin{_fmt_number(float(bin_size))}um"


def parse_grid_name(grid: str) -> tuple[str, float]:
    """Split a grid name into its kind and parameter (case-insensitive).

    Returns ``("ps", factor)`` with factor 2 (ps4) or 4 (ps16), or ``("bin", size_um)``.
    """
    if not isinstance(grid, str):
        msg = f"grid must be a grid name such as 'ps4', 'ps16' or 'bin8um', got {grid!r} of type {type(grid).__name__}."
        raise TypeError(msg)
    low = grid.strip().lower()
    g = _GRID_ALIASES.get(low, low)
    if g == "ps4":
        return "ps", 2.0
    if g == "ps16":
        return "ps", 4.0
    m = re.fullmatch(r"bin(\d+(?:\.\d+)?(?:e[+-]?\d+)?)(?:um|µm)?", g)
    if m and float(m.group(1)) > 0:
        return "bin", float(m.group(1))
    if g.startswith("bin"):
        msg = (
            f"Grid {grid!r}: a bin grid is 'bin<N>um' with N a positive number of µm (e.g. 'bin8um'), or pass "
            "bin_size=N."
        )
        raise ValueError(msg)
    from ._args import close_matches

    close = close_matches(grid, ["ps4", "ps16", "pseudospot4", "pseudospot16", "cells", "bin8um"], n=2, cutoff=0.5)
    hint = (" Did you mean " + " or ".join(f"grid={c!r}" for c in close) + "?") if close else ""
    msg = (
        f"Unknown grid {grid!r}.{hint} Use 'ps4' (alias 'pseudospot4'), 'ps16' ('pseudospot16') or 'bin<N>um' / "
        "bin_size=N (superresolve also takes grid='cells' with shapes_key=...)."
    )
    raise ValueError(msg)


def canonical_grid_name(grid: str) -> str:
    """The canonical name of a grid (``pseudospot4`` -> ``ps4``, ``bin8`` -> ``bin8um``; ``cells`` stays)."""
    if isinstance(grid, str) and grid.strip().lower() == "cells":
        return "cells"
    kind, value = parse_grid_name(grid)
    if kind == "ps":
        return "ps4" if value == 2.0 else "ps16"
    return bin_grid_name(value)


def grid_shapes_key(spots_key: str, grid: str) -> str:
    """Shapes element of a grid: ``f"{spots_key}_{grid}"``."""
    return f"{spots_key}_{canonical_grid_name(grid)}"


def grid_table_key(model: str, spots_key: str, grid: str) -> str:
    """Table of super-resolved expression: ``f"{model}_{spots_key}_{grid}"``."""
    return f"{model}_{spots_key}_{canonical_grid_name(grid)}"


def embedding_key(backbone: str) -> str:
    """``obsm`` key of a backbone's embeddings."""
    safe = re.sub(r"[^0-9A-Za-z_.-]+", "_", backbone).strip("_")
    return f"X_{safe}"
