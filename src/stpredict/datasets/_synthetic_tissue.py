"""The procedural tissue of a synthetic slide: fields, nuclei, stains, expression rates and the rendered image.

See :mod:`._synthetic` for the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import dask.array as da
import numpy as np

if TYPE_CHECKING:
    from ._synthetic_params import SyntheticParams

__all__ = ["SyntheticTissue"]

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _hash_uniform(*ints: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic uniform [0, 1) numbers from integer arrays (splitmix64)."""
    with np.errstate(over="ignore"):
        h = np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
        for v in ints:
            h = h ^ (np.asarray(v).astype(np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


class SyntheticTissue:
    """The procedural tissue: render the image at any resolution, evaluate expression in any region.

    Positions are in µm from the top-left corner of the image's level 0, x to the right and y down: the
    centre of level-0 pixel ``(row, col)`` is at ``((col + 0.5) · mpp, (row + 0.5) · mpp)`` with ``mpp`` the
    ``microns_per_pixel`` of the parameters. Usually obtained from :func:`synthetic_truth`.

    Parameters
    ----------
    params
        The parameters of the slide. Every random draw derives from ``params.seed``, so equal parameters give
        the same tissue, image and expression.

    Attributes
    ----------
    p
        The parameters.
    genes
        Gene names, ``gene_0`` to ``gene_{n_genes - 1}``.
    extent_um
        ``(width, height)`` of the tissue's canvas in µm (note: x first).
    stain_matrix
        ``(2, 3)`` unit optical-density vectors of hematoxylin and eosin used to render the image.
    W_visible
        ``(n_regions + 3, n_genes)`` weights of the image-visible features: one row per domain, then nucleus
        indicator, eosin concentration and a constant baseline.
    W_hidden
        ``(n_hidden, n_genes)`` weights of the image-invisible smooth fields.
    W_stain
        ``(2, n_genes)`` weights of the hematoxylin and eosin concentrations (non-zero only for stain genes).
    stain_gene
        ``(n_genes,)`` True for the genes driven by stain concentrations alone.

    Examples
    --------
    >>> import numpy as np
    >>> from stpredict.datasets import SyntheticParams, SyntheticTissue
    >>> tissue = SyntheticTissue(SyntheticParams(n_genes=5))
    >>> tissue.mean_rates(np.array([[512.0, 512.0]]), 8.0, "square").shape
    (1, 5)
    """

    n_hidden = 2

    def __init__(self, params: SyntheticParams) -> None:
        self.p = params
        rng = np.random.default_rng(params.seed)
        K, G = params.n_regions, params.n_genes
        h_px, w_px = params.image_size
        self.extent_um = (w_px * params.microns_per_pixel, h_px * params.microns_per_pixel)
        self._region_fields = [self._random_field(rng, params.region_scale_um, 1.6) for _ in range(K)]
        self._tissue_field = self._random_field(rng, max(self.extent_um) / 2.5, 1.5)
        self._hidden_fields = [self._random_field(rng, 2.0 * params.region_scale_um, 1.5) for _ in range(self.n_hidden)]
        # per-region appearance
        self.nuc_density = rng.uniform(0.25, 0.95, K)
        self.nuc_radius = rng.uniform(2.3, 4.2, K)
        self.h_nucleus = rng.uniform(0.9, 1.4, K)
        self.h_background = rng.uniform(0.05, 0.2, K)
        self.e_density = rng.uniform(0.25, 0.9, K)
        self.fibre_angle = rng.uniform(0, np.pi, K)
        self.fibre_period = rng.uniform(7.0, 18.0, K)
        h = np.asarray(params.stain_h, float)
        e = np.asarray(params.stain_e, float)
        self.stain_matrix = np.stack([h / np.linalg.norm(h), e / np.linalg.norm(e)])  # (2, 3) rows = stains
        # expression: visible weights (K region + nucleus + eosin + baseline) and hidden weights
        A = rng.lognormal(-1.0, 1.0, (K, G)) * (rng.random((K, G)) < 0.5)
        B = rng.normal(0.0, 0.6, G).clip(-0.4, None) * (rng.random(G) < 0.5)
        C = rng.normal(0.0, 0.6, G).clip(-0.4, None) * (rng.random(G) < 0.5)
        base = rng.lognormal(-1.5, 0.7, G) + 0.1
        self.W_visible = np.vstack([A, B[None], C[None], base[None]])  # (K + 3, G)
        self.W_hidden = rng.lognormal(-0.5, 0.8, (self.n_hidden, G)) * (rng.random((self.n_hidden, G)) < 0.7)
        # genes driven by stain concentrations alone (hematoxylin and eosin), for stain-learning methods
        n_stain = round(params.stain_genes * G)
        self.stain_gene = np.zeros(G, dtype=bool)
        self.stain_gene[:n_stain] = True
        self.W_stain = np.zeros((2, G))
        self.W_stain[:, :n_stain] = rng.uniform(0.2, 2.0, (2, n_stain)) * (rng.random((2, n_stain)) < 0.8)
        self.W_visible[:, self.stain_gene] = 0.0
        self.W_hidden[:, self.stain_gene] = 0.0
        self.genes = [f"gene_{i}" for i in range(G)]

    @staticmethod
    def _random_field(rng: np.random.Generator, scale_um: float, spread: float, n_modes: int = 8) -> dict:
        lengths = scale_um * np.exp(rng.uniform(-np.log(spread), np.log(spread), n_modes))
        theta = rng.uniform(0, 2 * np.pi, n_modes)
        k = (2 * np.pi / lengths)[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
        return {"k": k, "phase": rng.uniform(0, 2 * np.pi, n_modes), "amp": np.full(n_modes, np.sqrt(2.0 / n_modes))}

    @staticmethod
    def _eval_field(f: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        arg = np.multiply.outer(x, f["k"][:, 0]) + np.multiply.outer(y, f["k"][:, 1]) + f["phase"]
        return np.cos(arg) @ f["amp"]

    # --- point features -------------------------------------------------------------------------------
    def tissue(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether points (µm) are on tissue."""
        return self._tissue_from(x, y, self._eval_field(self._tissue_field, x, y))

    def region(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Region (domain) label of points (µm)."""
        return np.argmax(np.stack([self._eval_field(f, x, y) for f in self._region_fields]), axis=0)

    def _cells(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, ...]:
        """Nucleus centre (µm), presence and radius of cells ``(i, j)`` of the jittered grid."""
        c, s = self.p.cell_um, self.p.seed
        nx = (i + 0.15 + 0.7 * _hash_uniform(i, j, salt=s * 7 + 1)) * c
        ny = (j + 0.15 + 0.7 * _hash_uniform(i, j, salt=s * 7 + 2)) * c
        reg = self.region(nx, ny)
        present = _hash_uniform(i, j, salt=s * 7 + 3) < self.nuc_density[reg]
        rad = self.nuc_radius[reg] * (0.8 + 0.4 * _hash_uniform(i, j, salt=s * 7 + 4))
        return nx, ny, np.where(present, rad, -1.0)

    def nucleus(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """1.0 inside a nucleus, else 0.0 (points in µm)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        c = self.p.cell_um
        ci, cj = np.floor(x / c).astype(np.int64), np.floor(y / c).astype(np.int64)
        i0, j0 = int(ci.min()) - 1, int(cj.min()) - 1
        ni, nj = int(ci.max()) - i0 + 2, int(cj.max()) - j0 + 2
        if ni * nj <= 4 * x.size + 64:
            # dense table of the cells the points touch
            gi, gj = np.meshgrid(np.arange(i0, i0 + ni), np.arange(j0, j0 + nj), indexing="ij")
            nx, ny, rad = (a.reshape(ni, nj) for a in self._cells(gi.ravel(), gj.ravel()))
            out = np.zeros(x.shape, dtype=bool)
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    a, b = ci - i0 + di, cj - j0 + dj
                    out |= (x - nx[a, b]) ** 2 + (y - ny[a, b]) ** 2 <= rad[a, b] ** 2
            return out.astype(np.float64)
        out = np.zeros(x.shape, dtype=bool)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                nx, ny, rad = self._cells(ci + di, cj + dj)
                out |= (x - nx) ** 2 + (y - ny) ** 2 <= rad**2
        return out.astype(np.float64)

    def features(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Every per-point quantity: tissue, region, nucleus, stain concentrations, hidden fields."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        fields = {
            "tissue": self._eval_field(self._tissue_field, x, y),
            "regions": np.stack([self._eval_field(f, x, y) for f in self._region_fields]),
            "hidden": np.stack([self._eval_field(f, x, y) for f in self._hidden_fields], -1),
        }
        return self._assemble(x, y, fields)

    def features_grid(self, xs: np.ndarray, ys: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`features` on the grid ``ys × xs`` (µm), with separable (matrix-product) field evaluation.

        ``xs`` ``(w,)`` and ``ys`` ``(h,)`` give ``(h, w)`` arrays; ``(n, w)`` and ``(n, h)`` give ``(n, h, w)``.
        """
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        X = np.broadcast_to(xs[..., None, :], (*ys.shape, xs.shape[-1]))
        Y = np.broadcast_to(ys[..., :, None], (*ys.shape, xs.shape[-1]))
        fields = {
            "tissue": self._eval_field_grid(self._tissue_field, xs, ys),
            "regions": np.stack([self._eval_field_grid(f, xs, ys) for f in self._region_fields]),
            "hidden": np.stack([self._eval_field_grid(f, xs, ys) for f in self._hidden_fields], -1),
        }
        return self._assemble(X, Y, fields)

    @staticmethod
    def _eval_field_grid(f: dict, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        ax = np.multiply.outer(xs, f["k"][:, 0])
        ay = np.multiply.outer(ys, f["k"][:, 1]) + f["phase"]
        cx, sx = np.cos(ax), np.sin(ax)
        cy, sy = np.cos(ay) * f["amp"], np.sin(ay) * f["amp"]
        return cy @ np.swapaxes(cx, -1, -2) - sy @ np.swapaxes(sx, -1, -2)

    def _tissue_from(self, x: np.ndarray, y: np.ndarray, field: np.ndarray) -> np.ndarray:
        w, h = self.extent_um
        rx, ry = (x - w / 2) / (0.46 * w), (y - h / 2) / (0.46 * h)
        r = np.sqrt(rx**2 + ry**2)
        return (0.35 * field + 1.0 - r**4) > 0.35

    def _assemble(self, x: np.ndarray, y: np.ndarray, fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tis = self._tissue_from(x, y, fields["tissue"])
        reg = np.argmax(fields["regions"], axis=0)
        nuc = self.nucleus(x, y) * tis
        ang, per = self.fibre_angle[reg], self.fibre_period[reg]
        fibre = 0.5 + 0.5 * np.cos(2 * np.pi * (x * np.cos(ang) + y * np.sin(ang)) / per)
        c_e = tis * self.e_density[reg] * (0.6 + 0.4 * fibre) * (1 - 0.7 * nuc)
        c_h = tis * (nuc * self.h_nucleus[reg] + (1 - nuc) * self.h_background[reg])
        hidden = 1 / (1 + np.exp(-2.0 * fields["hidden"]))
        return {
            "tissue": tis.astype(np.float64),
            "region": reg,
            "nucleus": nuc,
            "eosin": c_e,
            "hematoxylin": c_h,
            "hidden": hidden,
        }

    def rates(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Expression rate λ (points × genes) at points (µm)."""
        f = self.features(x, y)
        return self._rates_from(f)

    def _design(self, f: dict[str, np.ndarray]) -> np.ndarray:
        K = self.p.n_regions
        onehot = np.eye(K)[f["region"]]
        vis = np.concatenate(
            [onehot, f["nucleus"][..., None], f["eosin"][..., None], np.ones_like(f["eosin"])[..., None]], -1
        )
        s = self.p.image_signal
        stains = np.stack([f["hematoxylin"], f["eosin"]], -1)
        return np.concatenate([s * vis, (1 - s) * f["hidden"], stains], -1) * f["tissue"][..., None]

    def _rates_from(self, f: dict[str, np.ndarray]) -> np.ndarray:
        W = np.vstack([self.W_visible, self.W_hidden, self.W_stain])
        return np.maximum(self._design(f) @ W, 0.0)

    # --- region means ---------------------------------------------------------------------------------
    def mean_rates(
        self,
        centers_um: np.ndarray,
        size_um: float,
        shape: Literal["circle", "square"] = "circle",
        *,
        step_um: float | None = None,
        chunk: int = 64,
    ) -> np.ndarray:
        """Mean λ inside circles (diameter ``size_um``) or squares (side ``size_um``) around centres (µm)."""
        centers_um = np.asarray(centers_um, dtype=float).reshape(-1, 2)
        step = step_um or min(2.0, size_um / 4.0)
        half = size_um / 2
        g = np.arange(-half + step / 2, half, step)
        ox, oy = np.meshgrid(g, g)
        inside = np.ones((len(g), len(g)), dtype=bool)
        if shape == "circle":
            inside = ox.reshape(len(g), len(g)) ** 2 + oy.reshape(len(g), len(g)) ** 2 <= half**2
        out = np.empty((len(centers_um), self.p.n_genes))
        for s in range(0, len(centers_um), chunk):
            c = centers_um[s : s + chunk]
            f = self.features_grid(c[:, :1] + g[None], c[:, 1:] + g[None])
            r = self._rates_from(f)[:, inside]  # (n, points, genes)
            out[s : s + chunk] = r.mean(axis=1)
        return out

    def mean_region(self, centers_um: np.ndarray, size_um: float, *, step_um: float | None = None) -> np.ndarray:
        """Majority region label inside circles around centres (µm)."""
        centers_um = np.asarray(centers_um, dtype=float).reshape(-1, 2)
        step = step_um or min(4.0, size_um / 4.0)
        g = np.arange(-size_um / 2 + step / 2, size_um / 2, step)
        ox, oy = np.meshgrid(g, g)
        keep = ox**2 + oy**2 <= (size_um / 2) ** 2
        ox, oy = ox[keep], oy[keep]
        lab = self.region(centers_um[:, :1] + ox[None], centers_um[:, 1:] + oy[None])
        return np.array([np.bincount(r, minlength=self.p.n_regions).argmax() for r in lab])

    # --- image ----------------------------------------------------------------------------------------
    def render(self, y0: int, x0: int, h: int, w: int, *, mpp: float, supersample: int = 1) -> np.ndarray:
        """RGB ``(3, h, w)`` uint8 of the block at pixel offset ``(y0, x0)`` of a level with ``mpp`` µm/px."""
        s = max(1, int(supersample))
        off = (np.arange(s) + 0.5) / s
        xs = ((x0 + np.arange(w))[:, None] + off[None]).ravel() * mpp
        ys = ((y0 + np.arange(h))[:, None] + off[None]).ravel() * mpp
        f = self.features_grid(xs, ys)
        X, Y = np.meshgrid(xs, ys)
        od = f["hematoxylin"][..., None] * self.stain_matrix[0] + f["eosin"][..., None] * self.stain_matrix[1]
        # glass and scanner noise, per level pixel
        iy = np.floor(Y / mpp).astype(np.int64)
        ix = np.floor(X / mpp).astype(np.int64)
        noise = _hash_uniform(iy, ix, salt=self.p.seed * 13 + int(mpp * 1000)) - 0.5
        od = od + 0.035 + 0.04 * noise[..., None]
        rgb = 255.0 * np.exp(-np.clip(od, 0, None))
        if s > 1:
            rgb = rgb.reshape(h, s, w, s, 3).mean(axis=(1, 3))
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8).transpose(2, 0, 1)

    def dask_level(self, shape_yx: tuple[int, int], mpp: float, chunks: int, supersample: int = 1) -> da.Array:
        """A lazy ``(3, h, w)`` level rendered block by block."""
        h, w = shape_yx
        cy = tuple(min(chunks, h - s) for s in range(0, h, chunks))
        cx = tuple(min(chunks, w - s) for s in range(0, w, chunks))
        ystarts = np.cumsum((0, *cy))[:-1]
        xstarts = np.cumsum((0, *cx))[:-1]

        def block(block_info=None):
            loc = block_info[None]["chunk-location"]
            by, bx = loc[1], loc[2]
            return self.render(int(ystarts[by]), int(xstarts[bx]), cy[by], cx[bx], mpp=mpp, supersample=supersample)

        return da.map_blocks(block, dtype=np.uint8, chunks=((3,), cy, cx), meta=np.empty((0, 0, 0), np.uint8))

    # --- spots ----------------------------------------------------------------------------------------
    def spot_layout(self) -> tuple[np.ndarray, np.ndarray]:
        """Spot centres (µm) on tissue and their array coordinates (row, col).

        ``"visium_hd"``: the square bins of side ``pitch_um`` that tile the image from its origin (bin
        ``(row, col)`` spans ``[col · s, (col + 1) · s) × [row · s, (row + 1) · s)`` µm), kept where their centre
        is on tissue.
        """
        p = self.p
        w, h = self.extent_um
        r = p.spot_diameter_um / 2
        if p.layout == "visium_hd":
            s = p.pitch_um
            rr, cc = np.meshgrid(np.arange(int(h // s)), np.arange(int(w // s)), indexing="ij")
            arr = np.column_stack([rr.ravel(), cc.ravel()])
            pts = (arr[:, ::-1] + 0.5) * s
        elif p.layout == "visium":
            dy = p.pitch_um * np.sqrt(3) / 2
            rows = np.arange(int((h - 2 * r) // dy) + 1)
            pts, arr = [], []
            for i in rows:
                off = (p.pitch_um / 2) * (i % 2)
                xs = np.arange(r + off, w - r + 1e-9, p.pitch_um)
                pts += [(x, r + i * dy) for x in xs]
                arr += [(i, 2 * j + (i % 2)) for j in range(len(xs))]
        elif p.layout == "st":
            xs = np.arange(r + 50.0, w - r + 1e-9, p.pitch_um)
            ys = np.arange(r + 50.0, h - r + 1e-9, p.pitch_um)
            pts = [(x, y) for y in ys for x in xs]
            arr = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
        else:
            msg = f"layout must be 'visium', 'st' or 'visium_hd', got {p.layout!r}."
            raise ValueError(msg)
        pts = np.asarray(pts, dtype=float).reshape(-1, 2)
        arr = np.asarray(arr, dtype=int).reshape(-1, 2)
        on = self.tissue(pts[:, 0], pts[:, 1])
        return pts[on], arr[on]
