"""How closely a CNN backbone's dense map reproduces its per-window features, at the spots of real slides.

For each slide, the backbone (random weights unless ``--pretrained``: nothing is downloaded) embeds every spot
once per window (``dense=False``'s path) and once from the dense map (the trunk's last feature map over the
spots' extent, read as window means); printed: the per-feature Pearson correlation across spots (median, 5th
percentile, minimum), the mean absolute difference relative to the mean absolute feature, and both paths'
seconds. Beside it, the same correlation between the windows' features and those of the same windows shifted by
``--shift-um`` (2 µm: 4 pixels at 0.5 µm/px): how stable the backbone's features are under a shift smaller than
the map's sub-cell interpolation, the floor of what any map of stride-32 cells can reproduce. ``--backbone
handcrafted`` measures the weight-free backbone's map (4 µm cells) the same way and names every feature below
``--below`` (0.99) with its correlation. ``--block-mm`` keeps only the spots inside a square of that side around the slide's median spot (the
map covers the spots' bounding box, so this bounds the run time on the 2-core machine).

    python benchmarks/cnn_dense_agreement.py [--backbone resnet18|handcrafted] [--slides demo,her2st:C2] [--block-mm 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _slides(names: list[str]) -> list[tuple[str, object]]:
    import stpredict as stp

    out = []
    for name in names:
        if name == "demo":
            out.append(("mob demo (stp.datasets.mob)", stp.datasets.mob()))
        elif name.startswith("her2st:"):
            from _data import her2st

            out.append((f"her2st {name[7:]}", her2st((name[7:],))[0]))
        elif name.startswith("mob:"):
            from _data import mob

            out.append((f"mob MOB{name[4:]}", mob((int(name[4:]),))[0]))
        else:
            msg = f"Unknown slide {name!r}: use demo, her2st:<section> or mob:<n>."
            raise ValueError(msg)
    return out


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-feature correlation; NaN where either side is constant."""
    out = np.full(a.shape[1], np.nan)
    for j in np.flatnonzero((a.std(0) > 1e-6) & (b.std(0) > 1e-6)):
        out[j] = np.corrcoef(a[:, j], b[:, j])[0, 1]
    return out


def agreement(
    sdata,
    backbone,
    *,
    block_mm: float | None,
    window_um: float = 112.0,
    shift_um: float = 2.0,
    below: float = 0.99,
) -> dict[str, object]:
    """Per-feature correlation and relative difference between the window and the dense-map features."""
    import stpredict as stp
    from stpredict.models.backbones._cellmap import map_bounds
    from stpredict.pp._tiles import tile_reader
    from stpredict.tl._embedding_loop import compute_embeddings

    slide, geo = stp.get.slide_data(sdata), stp.pp.spots(sdata)
    mpp = np.asarray(geo.microns_per_pixel_xy)
    um = geo.centers * mpp
    keep = np.ones(len(um), dtype=bool)
    if block_mm:
        keep = np.all(np.abs(um - np.median(um, axis=0)) <= block_mm * 500.0, axis=1)
    centers = geo.centers[keep]
    t0 = time.perf_counter()
    win = compute_embeddings(slide.image_levels, centers, tuple(mpp), backbone, patch_size_um=window_um, progress=False)
    t_win = time.perf_counter() - t0
    shifted = compute_embeddings(
        slide.image_levels, centers + shift_um / mpp, tuple(mpp), backbone, patch_size_um=window_um, progress=False
    )
    cell = backbone.dense_cell_um(window_um) if hasattr(backbone, "dense_cell_um") else 4.0
    # the map must hold every view a window reads (the hand-crafted context is 3x the window)
    half = backbone.read_um(window_um) / 2 if hasattr(backbone, "read_um") else window_um / 2
    lo, hi = map_bounds(um[keep], half, cell)
    t0 = time.perf_counter()
    cmap = backbone.feature_map(tile_reader(slide.image_levels, tuple(mpp)), lo, hi, cell_um=cell)
    den = backbone.map_features(cmap, um[keep], window_um)
    t_map = time.perf_counter() - t0
    r_all, rs = _corr(win, den), _corr(win, shifted)
    names = list(getattr(backbone, "feature_names", [f"f{j}" for j in range(win.shape[1])]))
    low = {names[j]: float(r_all[j]) for j in np.argsort(r_all) if r_all[j] < below}
    r, rs = r_all[np.isfinite(r_all)], rs[np.isfinite(rs)]
    return {
        "below": low,
        "spots": int(keep.sum()),
        "image_um_per_px": float(mpp.mean()),
        "features": len(r),
        "of": int(win.shape[1]),
        "median_r": float(np.median(r)),
        "p5_r": float(np.percentile(r, 5)),
        "min_r": float(r.min()),
        "shift_median_r": float(np.median(rs)),
        "shift_p5_r": float(np.percentile(rs, 5)),
        "rel_abs_diff": float(np.abs(win - den).mean() / np.abs(win).mean()),
        "windows_s": t_win,
        "map_s": t_map,
        "map_cells": f"{cmap.shape[1]}x{cmap.shape[0]}",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--slides", default="demo,her2st:C2")
    p.add_argument("--block-mm", type=float, default=None)
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shift-um", type=float, default=2.0)
    p.add_argument("--below", type=float, default=0.99, help="name the features whose correlation is below this")
    args = p.parse_args()

    import torch

    import stpredict as stp

    torch.manual_seed(args.seed)
    if args.backbone == "handcrafted":
        bb = stp.models.HandcraftedBackbone()
        print(f"handcrafted {bb.params()}", flush=True)
    else:
        bb = stp.models.get_backbone(args.backbone, pretrained=args.pretrained)
        spec = bb.dense_spec
        if spec is None:
            raise SystemExit(f"{args.backbone}: no dense map ({bb.dense_reason}).")
        print(f"{args.backbone} ({'pretrained' if args.pretrained else 'random weights'}): {spec}", flush=True)
    for name, sdata in _slides(args.slides.split(",")):
        res = agreement(sdata, bb, block_mm=args.block_mm, shift_um=args.shift_um, below=args.below)
        print(
            f"{name}: {res['spots']} spots at {res['image_um_per_px']:.2f} µm/px, {res['features']}/{res['of']} "
            f"non-constant features: r median {res['median_r']:.4f}, 5th pct {res['p5_r']:.4f}, min "
            f"{res['min_r']:.4f}; mean |diff| / mean |feature| {res['rel_abs_diff']:.3f}; windows vs windows "
            f"shifted {args.shift_um:g} µm: r median {res['shift_median_r']:.4f}, 5th pct {res['shift_p5_r']:.4f}; "
            "windows "
            f"{res['windows_s']:.1f} s, map {res['map_s']:.1f} s ({res['map_cells']} cells)",
            flush=True,
        )
        for feat, r in res["below"].items():
            print(f"  {feat}: r {r:.4f}", flush=True)


if __name__ == "__main__":
    main()
