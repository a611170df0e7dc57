"""HisToSGE: pathology foundation-model features + a transformer feature-learning module.

Shi, Xue, Zhu & Min, "High-Resolution Spatial Transcriptomics from Histology Images using HisToSGE",
arXiv:2407.20518 (2024); public code github.com/wenwenmin/HisToSGE.

What is kept from the method
    Spot features from a pathology image large model (UNI, ViT-L/16, 1024-d on 224 px crops; here any
    backbone, ``"auto"`` = UNI when its weights are local, else ``handcrafted``); learned position
    embeddings added to the features; a one-layer pre-norm transformer encoder with 4 heads of 64 dims;
    a gene head ``Linear(dim, hidden) → ReLU → LayerNorm → Linear(hidden, genes)`` (with a non-negative output);
    MSE loss; Adam-type optimiser at lr 1e-3; prediction at pseudo-spots between measured spots from the image
    features at those positions.

Deviations (each documented, none changes the method's intent)
    1. *Attention context.* The released code attends over chunks of ~50 spots in table order, an accident
       of batching. Here each query (a measured spot, pseudo-spot or grid point) attends over itself and its
       ``n_neighbors`` nearest **measured** spots of the slide, so every region is a query over its spatial
       neighbourhood, whatever it is.
    2. *Position encoding.* The released code embeds integer array row/col (and truncates half-integer
       pseudo-spot positions onto a measured spot's embedding). Here positions are continuous: the offset in
       µm of each context spot from the query, encoded by sin/cos at wavelengths 25–1600 µm and a learned
       linear map — defined at any point, and invariant to where a section sits on the slide, so it
       transfers across sections.
    3. *Crops* are windows in µm (default 112 µm, resampled to the backbone's input) instead of 50 × 50 px at
       whatever the scan resolution is.
    4. *Training.* Instead of a fixed 1000 epochs: AdamW (weight decay), a spatially blocked validation split
       of the training spots for early stopping (best weights restored), mini-batches of queries (memory
       bounded by the batch, not the slide), seeds, autocast on CUDA. Two budgets (``budget=``): on the
       **CPU** at most 150 epochs with a patience of 10, on **CUDA** 300 and 25. On the 379-spot mob demo
       the best validation epoch of a fit lies between 5 and 41, and the CPU budget gives the same
       out-of-fold accuracy (mean per-gene Pearson 0.526 vs 0.524) from 0.53x the epochs (324 vs 608).
    5. *Input projection.* Features are standardised and projected to ``dim`` (the released model uses the
       1024-d UNI features directly), so that any backbone fits.
    6. *Uncertainty.* ``n_models`` independently seeded fits; the mean is the prediction and their standard
       deviation the reported std (epistemic only).
    7. *Output.* The released head ends in a ReLU; here a softplus, with the output bias starting at each gene's
       training mean. Under the ReLU, a gene whose output fell below zero for every spot of a section (dead at
       initialisation, or pushed there by the shift between sections) was predicted as a constant 0: on her2st
       leave-one-section-out that was 42–52 % of 50 genes, even with the bias started at the mean. The softplus
       keeps outputs non-negative and keeps their order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.spatial import cKDTree

from .._logging import get_logger
from ._base import register_predictor
from ._torch import check_budget, fit_module, load_module_state, module_state, seed_everything
from ._torch_predictor import TorchPredictor

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from ._base import Regions, SlideData

__all__ = ["HisToSGE"]

logger = get_logger(__name__)

WAVELENGTHS_UM = (25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0)

#: epochs and early-stopping patience of each budget (module docstring, deviation 4)
BUDGETS = {"cpu": {"max_epochs": 150, "patience": 10}, "gpu": {"max_epochs": 300, "patience": 25}}


def _build_net(d_in: int, n_genes: int, cfg: dict[str, Any]) -> torch.nn.Module:
    import torch
    import torch.nn.functional as F
    from torch import nn

    dim, heads, dim_head = int(cfg["dim"]), int(cfg["heads"]), int(cfg["dim_head"])
    n_freq = len(WAVELENGTHS_UM)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            inner = heads * dim_head
            self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
            self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(cfg["dropout"]))

        def forward(self, x: torch.Tensor, mask: torch.Tensor, *, query_only: bool = False) -> torch.Tensor:
            """Attention of every token (or, with ``query_only``, of token 0 alone) over all tokens."""
            b, t, _ = x.shape
            inner = heads * dim_head
            if query_only:  # the same weights, the query projected for token 0 only
                w = self.to_qkv.weight
                q = F.linear(x[:, :1], w[:inner]).view(b, 1, heads, dim_head).transpose(1, 2)
                k, v = F.linear(x, w[inner:]).view(b, t, 2, heads, dim_head).permute(2, 0, 3, 1, 4)
            else:
                q, k, v = self.to_qkv(x).view(b, t, 3, heads, dim_head).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
            return self.to_out(out.transpose(1, 2).reshape(b, q.shape[2], inner))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n1, self.attn = nn.LayerNorm(dim), Attention()
            self.n2 = nn.LayerNorm(dim)
            self.ff = nn.Sequential(
                nn.Linear(dim, dim),
                nn.GELU(),
                nn.Dropout(cfg["dropout"]),
                nn.Linear(dim, dim),
                nn.Dropout(cfg["dropout"]),
            )

        def forward(self, x: torch.Tensor, mask: torch.Tensor, *, query_only: bool = False) -> torch.Tensor:
            """The block's output for every token, or (``query_only``) for token 0 alone: ``(b, 1, dim)``."""
            a = self.attn(self.n1(x), mask, query_only=query_only)
            x = (x[:, :1] if query_only else x) + a
            return x + self.ff(self.n2(x))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(d_in, dim)
            self.pos = nn.Linear(4 * n_freq, dim)
            self.query = nn.Parameter(torch.zeros(dim))
            self.blocks = nn.ModuleList([Block() for _ in range(int(cfg["depth"]))])
            self.head = nn.Sequential(
                nn.Linear(dim, int(cfg["head_hidden"])),
                nn.ReLU(),
                nn.LayerNorm(int(cfg["head_hidden"])),
                nn.Linear(int(cfg["head_hidden"]), n_genes),
            )
            self.register_buffer("omega", 2 * torch.pi / torch.tensor(WAVELENGTHS_UM), persistent=False)

        def forward(self, feats: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            ang = offsets[..., None] * self.omega  # (b, t, 2, f)
            pe = torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(-2)
            x = self.inp(feats) + self.pos(pe)
            x = torch.cat([x[:, :1] + self.query, x[:, 1:]], dim=1)
            # only the query token reaches the head: the last block computes its keys and values from every
            # token and the rest (query, output projection, feed-forward) for the query alone -- the same
            # function as the full block, ~2x fewer operations
            for i, blk in enumerate(self.blocks):
                x = blk(x, mask, query_only=i == len(self.blocks) - 1)
            return F.softplus(self.head(x[:, 0]))

    return Net()


@register_predictor("histosge")
class HisToSGE(TorchPredictor):
    """HisToSGE (Shi et al. 2024): foundation-model spot features through a transformer over spatial context.

    Each query region attends over itself and its ``n_neighbors`` nearest measured spots, with continuous
    µm offsets as positions (see the module docstring for every deviation from the released code).

    Parameters
    ----------
    n_neighbors
        Measured spots in each query's context.
    dim
        Transformer width (features are standardised and projected to it).
    depth
        Transformer layers (1 in the paper).
    heads, dim_head
        Attention heads and their width (4 × 64 in the paper).
    head_hidden
        Hidden width of the gene head (2048 in the paper).
    dropout
        Dropout in attention and feed-forward layers.
    n_models
        Independently seeded fits averaged for the prediction; their sd is the reported std.
    lr, weight_decay
        AdamW settings.
    batch_size
        Queries per optimisation step.
    budget
        ``"auto"`` (the GPU budget on CUDA, the CPU budget otherwise), ``"cpu"`` or ``"gpu"``: epochs and
        patience (module docstring, deviation 4). The one used is recorded in ``training["budget"]``.
    max_epochs
        Upper bound on epochs (``None``: from the budget; ``fit(max_epochs=...)`` overrides both).
    patience
        Epochs without validation improvement before stopping (``None``: from the budget).
    val_fraction
        Share of training spots (in spatial blocks) held out for early stopping.
    """

    consumes = "embeddings"
    default_backbone = "auto"
    provides_std = True
    uses_slide_embeddings = True
    budgets = BUDGETS

    def __init__(
        self,
        *,
        n_neighbors: int = 16,
        dim: int = 256,
        depth: int = 1,
        heads: int = 4,
        dim_head: int = 64,
        head_hidden: int = 1024,
        dropout: float = 0.1,
        n_models: int = 3,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 128,
        budget: str = "auto",
        max_epochs: int | None = None,
        patience: int | None = None,
        val_fraction: float = 0.1,
    ) -> None:
        check_budget(budget)
        super().__init__(
            n_neighbors=int(n_neighbors), dim=int(dim), depth=int(depth), heads=int(heads), dim_head=int(dim_head),
            head_hidden=int(head_hidden), dropout=float(dropout), n_models=int(n_models), lr=float(lr),
            weight_decay=float(weight_decay), batch_size=int(batch_size), budget=budget,
            max_epochs=None if max_epochs is None else int(max_epochs),
            patience=None if patience is None else int(patience), val_fraction=float(val_fraction),
        )  # fmt: skip
        self._nets: list[Any] = []
        self._mu: np.ndarray | None = None
        self._sd: np.ndarray | None = None

    # ---------------------------------------------------------------------------------------------
    def _context(self, ctx_xy: np.ndarray, q_xy: np.ndarray, *, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
        """Indices ``(m, K)`` of each query's nearest context spots and a validity mask."""
        k = self.config["n_neighbors"]
        kk = min(k + 1, len(ctx_xy))
        d, idx = cKDTree(ctx_xy).query(q_xy, k=kk)
        d, idx = d.reshape(len(q_xy), kk), idx.reshape(len(q_xy), kk)
        if exclude_self:
            self_hit = d < 1.0  # a context spot at the query itself (µm): not its own context
            order = np.argsort(self_hit, axis=1, kind="stable")
            idx = np.take_along_axis(idx, order, 1)
            d = np.where(np.take_along_axis(self_hit, order, 1), np.inf, np.take_along_axis(d, order, 1))
        idx, d = idx[:, :k], d[:, :k]
        valid = np.isfinite(d)
        if idx.shape[1] < k:
            pad = k - idx.shape[1]
            idx = np.pad(idx, ((0, 0), (0, pad)))
            valid = np.pad(valid, ((0, 0), (0, pad)))
        return idx, valid

    def _tensors(self, q_feat, q_xy, ctx_feat, ctx_xy, idx, *, valid, device):
        import torch

        feats = np.concatenate([q_feat[:, None], ctx_feat[idx]], axis=1)
        offs = np.concatenate([np.zeros((len(q_xy), 1, 2)), ctx_xy[idx] - q_xy[:, None]], axis=1)
        mask = np.concatenate([np.ones((len(q_xy), 1), bool), valid], axis=1)
        t = lambda a, dt: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
        return t(feats, torch.float32), t(offs, torch.float32), t(mask, torch.bool)

    def fit(
        self,
        slides: Sequence[SlideData],
        *,
        genes: Sequence[str],
        max_epochs: int | None = None,
        seed: int | None = None,
    ) -> HisToSGE:
        """Fit ``n_models`` seeded networks on the slides' spots (contexts within each slide)."""
        import torch

        cfg = self.config
        dev, seed = self._start_fit(seed)
        X = np.concatenate([np.asarray(s.embeddings, np.float64) for s in slides])
        self._mu, self._sd = X.mean(0), X.std(0)
        self._sd[self._sd < 1e-8] = 1.0
        budget = self._budget(dev, max_epochs)
        epochs = int(budget["max_epochs"])
        # per slide: train/validation spots (spatial blocks), context indices among training spots
        parts = []
        for s, (tr, va) in zip(slides, self._validation_split(slides, seed, per_slide=True), strict=True):
            feat = ((np.asarray(s.embeddings, np.float64) - self._mu) / self._sd).astype(np.float32)
            xy = s.centers_um
            tr_idx, tr_valid = self._context(xy[tr], xy[tr], exclude_self=True)
            va_idx, va_valid = self._context(xy[tr], xy[va], exclude_self=True) if len(va) else (None, None)
            parts.append((feat, xy, np.asarray(s.y, np.float32), tr, va, tr_idx, tr_valid, va_idx, va_valid))
        n_train = sum(len(p[3]) for p in parts)
        y_mean = np.concatenate([p[2][p[3]] for p in parts]).mean(0).astype(np.float32)

        def loss_fn(net, feats, offs, mask, y):
            return torch.nn.functional.mse_loss(net(feats, offs, mask), y)

        def batches(rng, which):
            for feat, xy, y, tr, va, tr_idx, tr_valid, va_idx, va_valid in parts:
                q = tr if which == "train" else va
                if len(q) == 0:
                    continue
                cidx, cval = (tr_idx, tr_valid) if which == "train" else (va_idx, va_valid)
                order = rng.permutation(len(q)) if rng is not None else np.arange(len(q))
                for s0 in range(0, len(q), cfg["batch_size"]):
                    o = order[s0 : s0 + cfg["batch_size"]]
                    f, of, m = self._tensors(feat[q[o]], xy[q[o]], feat[tr], xy[tr], cidx[o], valid=cval[o], device=dev)
                    yield f, of, m, torch.as_tensor(y[q[o]], device=dev)

        has_val = any(len(p[4]) for p in parts)
        self._nets, logs = [], []
        for i in range(cfg["n_models"]):
            seed_everything(seed + 1000 * i)
            net = _build_net(X.shape[1], len(genes), cfg)
            with torch.no_grad():  # start every gene at its mean (inverse softplus)
                net.head[-1].bias.copy_(torch.as_tensor(np.log(np.expm1(np.maximum(y_mean, 1e-3)))))
            log = fit_module(
                net,
                lambda rng: batches(rng, "train"),
                loss_fn,
                val_batches=(lambda: batches(None, "val")) if has_val else None,
                max_epochs=epochs,
                patience=int(budget["patience"]),
                lr=cfg["lr"],
                weight_decay=cfg["weight_decay"],
                device=dev,
                seed=seed + i,
                desc=f"histosge {i + 1}/{cfg['n_models']}",
                progress=self.progress,
            )
            self._nets.append(net)
            logs.append(log.as_dict())
        self.genes = list(genes)
        self._arch = np.array([X.shape[1], len(genes), cfg["n_models"]], dtype=np.int64)
        self.training = {"n_spots": int(n_train), "seed": seed, "max_epochs": epochs, "budget": budget, "members": logs}
        return self

    def predict(self, slide: SlideData, regions: Regions) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble mean and sd at the regions, each attending over its nearest measured spots of ``slide``."""
        import torch

        from ._device import autocast

        self._check_fitted()
        if regions.embeddings is None or slide.embeddings is None:
            msg = "histosge needs embeddings of the regions and of the slide's measured spots (built by stp.tl)."
            raise ValueError(msg)
        dev = self._torch_device()
        ctx_feat = ((np.asarray(slide.embeddings, np.float64) - self._mu) / self._sd).astype(np.float32)
        q_feat = ((np.asarray(regions.embeddings, np.float64) - self._mu) / self._sd).astype(np.float32)
        ctx_xy, q_xy = slide.centers_um, regions.centers_um(slide)
        idx, valid = self._context(ctx_xy, q_xy, exclude_self=True)
        outs = []
        for net in self._nets:
            net.to(dev).eval()
            preds = []
            with torch.inference_mode(), autocast(dev):
                for s0 in range(0, len(q_xy), 1024):
                    sl = slice(s0, s0 + 1024)
                    f, of, m = self._tensors(
                        q_feat[sl], q_xy[sl], ctx_feat, ctx_xy, idx[sl], valid=valid[sl], device=dev
                    )
                    preds.append(net(f, of, m).float().cpu().numpy())
            outs.append(np.concatenate(preds) if preds else np.zeros((0, len(self.genes)), np.float32))
        stack = np.stack(outs)
        return stack.mean(0).astype(np.float32), stack.std(0).astype(np.float32)

    def get_state(self) -> dict[str, np.ndarray]:
        """Standardisation, architecture and every ensemble member's weights."""
        state = {"mu": self._mu, "sd": self._sd, "arch": self._arch}
        for i, net in enumerate(self._nets):
            state.update(module_state(net, f"m{i}."))
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Rebuild the ensemble from saved weights."""
        self._mu, self._sd, self._arch = state["mu"], state["sd"], state["arch"]
        d_in, n_genes, n_models = (int(v) for v in self._arch)
        self._nets = []
        for i in range(n_models):
            net = _build_net(d_in, n_genes, self.config)
            load_module_state(net, state, f"m{i}.")
            net.eval()
            self._nets.append(net)
