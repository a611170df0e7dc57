"""Dense feature maps of convolutional backbones: the trunk's last feature map over the slide, pooled per window.

A timm CNN embeds a window as ``head(mean of its last feature map)`` (``forward_head`` of a global average
pool). The trunk is local — each map cell depends only on the pixels of its receptive field — so the map of a
whole slide region, computed once tile by tile, holds every window's cells: a window of ``patch_px`` pixels
covers ``patch_px / stride`` cells, and its features are the head applied to their mean, read from a
:class:`~stpredict.models.backbones._cellmap.CellMap` of ``stride × µm/px`` cells (integral images, bilinear
between cell-aligned positions).

What differs from the per-window path is the window's border: the window path pads each layer's input with
zeros at the window's edge, the map sees the real neighbouring tissue. Dense and window features agree
exactly for a trunk without padding at cell-aligned positions, and closely otherwise (measured in
``tests/models/test_convmap.py`` and ``docs/benchmarks.md``).

:func:`conv_map_spec` decides whether a module qualifies, from one small forward pass: a timm family of purely
convolutional trunks, no layer that sees the whole input at once (squeeze-excitation and other global gates,
group/instance/global-response normalisation), and a head that equals itself applied to the averaged map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._cellmap import CellMap

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

__all__ = ["DENSE_FAMILIES", "MAX_MARGIN_CELLS", "ConvMapSpec", "conv_cell_map", "conv_map_spec", "tile_plan"]

#: timm model classes whose trunks are stacks of convolutions, pointwise norms and local pools
DENSE_FAMILIES = ("ResNet", "DenseNet", "ConvNeXt", "RegNet", "EfficientNet", "MobileNetV3")
#: largest context margin around a tile, in map cells (8 × 32 px = 256 px covers resnet18's and resnet50's
#: whole receptive field radius, so their tiles are seamless to float rounding)
MAX_MARGIN_CELLS = 8
#: layers whose output at a pixel depends on the whole input (normalisation over space)
_GLOBAL_NORMS = ("GroupNorm", "InstanceNorm", "GlobalResponseNorm", "EvoNorm2dS", "FilterResponseNorm")


@dataclass(frozen=True)
class ConvMapSpec:
    """How a convolutional backbone's dense map is computed.

    Attributes
    ----------
    stride
        Input pixels per map cell (the trunk's total stride).
    channels
        Channels of the last feature map.
    rf_px
        Receptive field of one cell in input pixels: an upper bound, summed over every convolution and pool
        in execution order (exact for chains and residual stacks, as resnet18's 435 px).
    margin_px
        Context read on each side of a tile: the receptive field's radius rounded up to whole cells, at most
        :data:`MAX_MARGIN_CELLS` cells. With the whole radius, a cell of a tile equals the same cell computed in
        any larger tile.
    """

    stride: int
    channels: int
    rf_px: int
    margin_px: int

    @property
    def seamless(self) -> bool:
        """Whether the margin covers the whole receptive field (tile seams exact to float rounding)."""
        return 2 * self.margin_px + 1 >= self.rf_px


def _find_global_pool(module: torch.nn.Module) -> Any:
    pool = getattr(module, "global_pool", None)
    if not hasattr(pool, "pool_type"):
        pool = getattr(getattr(module, "head", None), "global_pool", None)
    return pool


def conv_map_spec(
    module: torch.nn.Module,
    *,
    patch_px: int,
    embed: Callable[[torch.Tensor], torch.Tensor],
    trunk: Callable[[torch.Tensor], torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor],
) -> ConvMapSpec | str:
    """The dense-map spec of a backbone module, or the reason it has none.

    Parameters
    ----------
    module
        The network (a timm model).
    patch_px
        The window side the backbone embeds; it must be a whole number of cells.
    embed
        The per-window path: normalised ``(b, 3, h, w)`` → ``(b, dim)``.
    trunk
        Normalised ``(b, 3, h, w)`` → the last feature map ``(b, c, h / stride, w / stride)``.
    head
        ``(b, c)`` window means of the map → ``(b, dim)``.

    Returns
    -------
    A :class:`ConvMapSpec`, or a sentence saying why the module's windows cannot be read from a map.
    """
    import torch

    cls = type(module)
    if not cls.__module__.startswith("timm.") or cls.__name__ not in DENSE_FAMILIES:
        return (
            f"{cls.__name__} is not one of the convolutional timm families whose window embedding is the average "
            f"of a local feature map ({', '.join(DENSE_FAMILIES)})"
        )
    if not (hasattr(module, "forward_features") and hasattr(module, "forward_head")):
        return f"{cls.__name__} has no forward_features/forward_head"
    pool = _find_global_pool(module)
    if getattr(pool, "pool_type", None) != "avg":
        return f"its global pool is {getattr(pool, 'pool_type', None)!r}, not an average"
    info = getattr(module, "feature_info", None)
    stride = int(info[-1]["reduction"]) if info else 0
    if stride < 1:
        return "it states no total stride (feature_info)"
    if patch_px % stride:
        return f"its input ({patch_px} px) is not a whole number of {stride} px cells"
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if device.type == "meta":
        return "its weights are not loaded (meta device)"
    n = 4 * stride
    found: list[str] = []
    rf = [1.0]

    names = {id(m): n for n, m in module.named_modules()}

    def hook(mod: torch.nn.Module, args: tuple, _out: Any) -> None:
        kind = type(mod).__name__
        where = f"layer {names.get(id(mod), '?')!r} ({kind})"
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if any(g in kind for g in _GLOBAL_NORMS) or isinstance(mod, torch.nn.GroupNorm):
            found.append(f"{where} normalises over the whole input")
        elif x is not None and (x.ndim != 4 or (x.shape[-1] == 1 and x.shape[-2] == 1)):
            found.append(f"{where} sees the whole input at once (a global gate such as squeeze-excitation)")
        if isinstance(mod, torch.nn.Conv2d | torch.nn.MaxPool2d | torch.nn.AvgPool2d) and x is not None:
            k = mod.kernel_size if isinstance(mod.kernel_size, tuple) else (mod.kernel_size,)
            d = getattr(mod, "dilation", 1)
            d = d if isinstance(d, tuple) else (d,)
            rf[0] += (max(k) - 1) * max(d) * n / x.shape[-2]

    leaves = [m for m in module.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.inference_mode():
            x = torch.randn(2, 3, n, n, generator=torch.Generator().manual_seed(0)).to(device)
            fmap = trunk(x)
    finally:
        for h in hooks:
            h.remove()
    if found:
        return found[0]
    if fmap.ndim != 4 or tuple(fmap.shape[-2:]) != (4, 4):
        return f"its last feature map is {tuple(fmap.shape)}, not (b, c, {n}/{stride}, {n}/{stride}) for {n} px"
    with torch.inference_mode():
        want = embed(x).float()
        got = head(fmap.mean(dim=(2, 3))).float()
    if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-4, atol=1e-5 * max(1.0, want.abs().max())):
        return "its embedding is not its head applied to the average of the last feature map"
    rf_px = math.ceil(rf[0])
    margin_cells = min(MAX_MARGIN_CELLS, math.ceil((rf_px - 1) / 2 / stride))
    return ConvMapSpec(stride=stride, channels=int(fmap.shape[1]), rf_px=rf_px, margin_px=margin_cells * stride)


def tile_plan(n_cells_xy: tuple[int, int], spec: ConvMapSpec, tile_px: int) -> tuple[int, int, int]:
    """``(core_cells, margin_cells, n_tiles)`` of a map of ``n_cells_xy`` cells in tiles of about ``tile_px``.

    The widest core is ``tile_px`` or four margins (then margins cost at most 2.25× the core's pixels),
    whichever is larger; the core is then shrunk to split the map's longer side into equal tiles.
    """
    k = spec.margin_px // spec.stride
    widest = max(1, tile_px // spec.stride, 4 * k)
    n = max(n_cells_xy)
    core = math.ceil(n / math.ceil(n / widest))
    n_tiles = math.ceil(n_cells_xy[0] / core) * math.ceil(n_cells_xy[1] / core)
    return core, k, n_tiles


def conv_cell_map(
    features: Callable[[np.ndarray], np.ndarray],
    read_tile: Callable[[np.ndarray, float, int], np.ndarray],
    lo_um: np.ndarray,
    hi_um: np.ndarray,
    *,
    spec: ConvMapSpec,
    cell_um: float,
    tile_px: int = 1024,
    batch_tiles: int = 1,
    progress: bool = False,
    desc: str = "feature map",
) -> CellMap:
    """A :class:`CellMap` of a trunk's last feature map over ``[lo_um, hi_um]``, tile by tile with a margin.

    Every tile is ``core + 2 × margin`` cells wide (the same shape for all, so tiles are batched); only its
    core is kept. Tiles start on the map's cell grid, so every layer's strided grid lines up across tiles.

    Parameters
    ----------
    features
        ``(b, 3, s, s)`` uint8 RGB → ``(b, channels, s / stride, s / stride)`` float32 (normalisation and the
        trunk, on the backbone's device).
    read_tile
        ``read_tile(center_um_xy, size_um, out_px) -> (1, 3, out_px, out_px)`` uint8 (white outside the image).
    lo_um, hi_um
        Rectangle to cover, in µm (rounded out to whole cells).
    spec
        The trunk's stride, channels and margin.
    cell_um
        Cell side in µm: ``stride`` pixels at the analysis resolution (``cell_um / stride`` µm/px).
    tile_px
        Core side of a tile in input pixels (see :func:`tile_plan`).
    batch_tiles
        Tiles per forward pass.
    progress
        Show a progress bar over tiles.
    desc
        The bar's label.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    s = spec.stride
    lo = np.floor(np.asarray(lo_um, dtype=float) / cell_um) * cell_um
    hi = np.ceil(np.asarray(hi_um, dtype=float) / cell_um) * cell_um
    n_cx, n_cy = (int(v) for v in np.maximum(np.round((hi - lo) / cell_um), 1))
    core, k, _ = tile_plan((n_cx, n_cy), spec, tile_px)
    side = core + 2 * k
    means = np.zeros((spec.channels, n_cy, n_cx), dtype=np.float32)
    tiles = [(ty, tx) for ty in range(0, n_cy, core) for tx in range(0, n_cx, core)]
    batches = [tiles[i : i + max(1, int(batch_tiles))] for i in range(0, len(tiles), max(1, int(batch_tiles)))]

    def read(batch: list[tuple[int, int]]) -> np.ndarray:
        out = []
        for ty, tx in batch:
            centre = lo + (np.array([tx, ty], dtype=float) - k + side / 2) * cell_um
            out.append(read_tile(centre, side * cell_um, side * s))
        return np.concatenate(out)

    with ThreadPoolExecutor(1, thread_name_prefix="stpredict-tiles") as pool, tqdm(
        total=len(tiles), disable=not progress, desc=desc, unit="tile"
    ) as bar:  # fmt: skip
        ahead = pool.submit(read, batches[0]) if batches else None
        for i, batch in enumerate(batches):
            rgb = ahead.result()
            ahead = pool.submit(read, batches[i + 1]) if i + 1 < len(batches) else None
            fmap = features(rgb)
            for j, (ty, tx) in enumerate(batch):
                ny, nx = min(core, n_cy - ty), min(core, n_cx - tx)
                means[:, ty : ty + ny, tx : tx + nx] = fmap[j, :, k : k + ny, k : k + nx]
            bar.update(len(batch))
    return CellMap(means, lo, float(cell_um))
