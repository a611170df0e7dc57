"""Cross-modal conditional diffusion for super-resolved expression maps.

Wang, Huang, Price & Li, "Cross-modal Diffusion Modelling for Super-resolved Spatial Transcriptomics",
arXiv:2404.12973 (2024). No public code; this implements the paper's three components in a denoiser small
enough to train on one slide on a laptop:

1. **Multi-modal disentangling with cross-modal adaptive modulation.** Histology and expression conditions
   have separate encoders (modality-specific features) plus a shared fusion branch; every denoiser block is
   modulated by a spatial scale-and-shift from each of them, mixed by learned gates — the denoiser's
   features are steered by both modalities without concatenating them into one input.
2. **Dynamic cross-attention to hierarchical cell-to-tissue image features.** At the bottleneck and the
   first decoder level, each map location attends over image features at three scales around it (cell:
   one fine map cell; neighbourhood: 3 cells; tissue: 9 cells, each summarised at three concentric views)
   plus slide-level tissue tokens; a gate computed from the diffusion time and the query re-weights the
   scales at every step (coarse context early in denoising, cell detail late).
3. **Co-expression gene-correlation graph.** A graph over genes from the measured map's gene-gene
   correlations (``|r|`` above a threshold, symmetric-normalised, with self loops) couples genes that co-vary:
   the denoiser's output passes through a learned graph convolution over the gene channels.

Map representation
    Measured spots are rasterised in the coordinates of their own fitted lattice (:func:`stpredict.pp.fit_lattice`):
    square ST, hexagonal Visium and the 2k centred-rectangular array all become a regular grid with one spot per
    cell. A map ``f``× finer has cells at ``origin + basis · (i, j) / f`` — exactly the ``ps4`` (``f = 2``) and
    ``ps16`` (``f = 4``) pseudo-spot lattices, so grid tables come straight out of the sampler; µm bins and other
    regions get coverage-weighted means of the fine cells in linear space (log1p after aggregation).
    Image features for each fine cell come from the ``handcrafted`` backbone's dense path (weight-free).

The denoiser generates the *residual* of the fine map over the bilinearly interpolated coarse map (scaled to unit
variance per gene), as SR3/SRDiff-style super-resolution models do: the paper does not say whether it diffuses the
map or a residual; the residual keeps an under-trained model at interpolation rather than at the mean and makes the
sampled spread the uncertainty of the refinement alone.

Training (DDPM, ε-prediction, cosine schedule; DDIM sampling with ``steps``, deterministic; optional
classifier-free guidance on histology: the histology condition is dropped with probability ``p_uncond`` in
training and ``guidance`` > 1 extrapolates at sampling)

- ``mode="self"`` (default; no high-resolution truth needed): the slide's measured map ``M`` is pooled 2 × 2
  (over the measured cells, in linear space weighted by library size: what a spot twice the size would have
  measured) to make low/high pairs ``(pool(M), M)``; the model learns that step
  conditioned on histology and is then applied to ``M`` itself to predict the ``2×`` finer map (``4×`` by applying
  it twice). *Assumption:* the relation between a map and its 2× refinement, given histology, does not depend
  on the absolute scale (it is learned one octave coarser than it is used).
- ``mode="paired"``: the training slides carry high-resolution measurements (e.g. Visium HD bins or Xenium
  cells pooled to a grid) as their "spots"; pairs are (pool(H), H) at the target scale and the model is
  applied to a spot-level slide whose lattice spacing equals the pooled one. *Assumption:* the training slides'
  tissue and chemistry match the predicted slide's.

Values are log1p-normalised expression, standardised per gene for the network; each requested region gets
the mean over ``n_samples`` samples (``training["n_samples"]`` and ``.uns`` record it) and their sd scaled by
the calibrated spread factor of the gene. Code: the denoiser in ``_diffusion_net``, conditions, schedule, sampling,
calibration and reading samples at the regions in ``_diffusion_sampler``, lattice maps in :mod:`stpredict.pp._lattice`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._logging import get_logger
from ..pp._lattice import LatticeMap, lattice_map
from ._base import register_predictor
from ._diffusion_net import build_denoiser, denoising_batches, denoising_loss, standardisation
from ._diffusion_sampler import (
    coarse_condition,
    ddim_sample,
    gate_and_spread,
    image_features,
    region_samples,
    training_pair,
)
from ._torch import check_budget, fit_module, load_module_state, module_state
from ._torch_predictor import TorchPredictor

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._base import Regions, SlideData

__all__ = ["CrossModalDiffusion", "LatticeMap", "lattice_map"]

logger = get_logger(__name__)

#: training epochs (of ``steps_per_epoch`` steps) of each budget: 500 steps on the CPU (about 80 s at 0.16 s a
#: step on the 379-spot mob demo, 2 cores), 1,500 on CUDA
BUDGETS = {"cpu": {"max_epochs": 10}, "gpu": {"max_epochs": 30}}
#: the arrays of a fitted model besides the denoiser's weights (attributes ``_<name>``)
_STATE = ("mu", "sd", "rsd", "spread", "gate", "img_mu", "img_sd", "adj")


@register_predictor("diffusion")
class CrossModalDiffusion(TorchPredictor):
    """Cross-modal conditional diffusion (Wang et al. 2024): sampled super-resolved maps with uncertainty.

    A within-slide super-resolution method: it refines the measured map of the slide it predicts (see the
    module docstring for the components, the map representation and the two training modes).

    Parameters
    ----------
    mode
        ``"self"`` (pairs from 2 × 2 pooling of the slide's own map) or ``"paired"`` (training slides carry
        high-resolution measurements).
    factor
        Refinement of the predicted map over the measured one: 2 (ps4) or 4 (ps16; two 2× steps).
    channels
        Denoiser width.
    timesteps
        Diffusion steps in training.
    steps
        DDIM sampling steps (deterministic).
    n_samples
        Samples per prediction (mean and sd are reported).
    guidance
        Classifier-free guidance weight on histology (1: none).
    p_uncond
        Probability of dropping the histology condition in training.
    corr_threshold
        ``|r|`` above which two genes are linked in the co-expression graph.
    lr, weight_decay, batch_size
        Optimiser settings; the batch is made of random crops of the training maps.
    budget
        ``"auto"`` (the GPU budget on CUDA, the CPU budget otherwise), ``"cpu"`` or ``"gpu"``: epochs, see
        :data:`BUDGETS`; the one used is recorded in ``training["budget"]``.
    max_epochs
        Epochs of ``steps_per_epoch`` optimisation steps (``None``: from the budget; ``fit(max_epochs=...)``
        overrides both).
    steps_per_epoch
        Steps per epoch.
    crop
        Side of the training crops in map cells.
    calibrate
        Hold out a random fifth of the measured cells from the loss and use them to gate the sampled residual per
        gene and to rescale the sampled spread so that the central 90 % of the samples covers 90 % of them
        (noise-aware, split-conformal style; see ``_calibrate``). ``False`` keeps the raw samples.
    """

    consumes = "map"
    default_backbone = None
    provides_std = True
    uses_slide_targets = True
    budgets = BUDGETS

    def __init__(
        self,
        *,
        mode: str = "self",
        factor: int = 2,
        channels: int = 48,
        timesteps: int = 1000,
        steps: int = 25,
        n_samples: int = 16,
        guidance: float = 1.0,
        p_uncond: float = 0.1,
        corr_threshold: float = 0.3,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 8,
        budget: str = "auto",
        max_epochs: int | None = None,
        steps_per_epoch: int = 50,
        crop: int = 16,
        calibrate: bool = True,
    ) -> None:
        if mode not in ("self", "paired"):
            msg = f"mode must be 'self' or 'paired', got {mode!r}."
            raise ValueError(msg)
        if factor not in (2, 4):
            msg = f"factor must be 2 or 4, got {factor!r}."
            raise ValueError(msg)
        check_budget(budget)
        super().__init__(
            mode=mode, factor=int(factor), channels=int(channels), timesteps=int(timesteps), steps=int(steps),
            n_samples=int(n_samples), guidance=float(guidance), p_uncond=float(p_uncond),
            corr_threshold=float(corr_threshold), lr=float(lr), weight_decay=float(weight_decay),
            batch_size=int(batch_size), budget=budget, max_epochs=None if max_epochs is None else int(max_epochs),
            steps_per_epoch=int(steps_per_epoch), crop=int(crop),
            calibrate=bool(calibrate),
        )  # fmt: skip
        self._net: Any = None
        self._mu: np.ndarray | None = None
        self._sd: np.ndarray | None = None
        self._rsd: np.ndarray | None = None
        self._spread: np.ndarray | None = None
        self._gate: np.ndarray | None = None
        self._img_mu: np.ndarray | None = None
        self._img_sd: np.ndarray | None = None
        self._adj: np.ndarray | None = None

    def _standardise(self, a: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
        return (a - mu[:, None, None]) / sd[:, None, None]

    def _residual(self, pair: dict[str, np.ndarray], high: np.ndarray) -> np.ndarray:
        """The diffusion target: standardised ``high`` minus the standardised coarse condition, per-gene unit variance."""
        r = self._standardise(high, self._mu, self._sd) - self._standardise(pair["low"], self._mu, self._sd)
        return (r / self._rsd[:, None, None]).astype(np.float32)

    # -- training ------------------------------------------------------------------------------------
    def fit(
        self,
        slides: Sequence[SlideData],
        *,
        genes: Sequence[str],
        max_epochs: int | None = None,
        seed: int | None = None,
    ) -> CrossModalDiffusion:
        """Train the denoiser on low/high pairs made by pooling the slides' measured maps."""
        import torch

        cfg = self.config
        dev, seed = self._start_fit(seed)
        pairs = [training_pair(s) for s in slides]
        # a random fifth of the measured cells is kept out of the loss to calibrate the sampled spread on
        split_rng = np.random.default_rng(seed)
        for p in pairs:
            held = (
                p["mask"] & (split_rng.random(p["mask"].shape) < 0.2) if cfg["calibrate"] else np.zeros_like(p["mask"])
            )
            p["calib"], p["train"] = held, p["mask"] & ~held
        st = standardisation(pairs, cfg["corr_threshold"])
        self._mu, self._sd, self._rsd = st["mu"], st["sd"], st["rsd"]
        self._img_mu, self._img_sd, self._adj = st["img_mu"], st["img_sd"], st["adj"]
        net = build_denoiser(len(genes), len(self._img_mu), self._adj, cfg).to(dev)
        data = [
            {
                "x0": torch.as_tensor(self._residual(p, p["high"]), device=dev),
                "mask": torch.as_tensor(p["train"], device=dev),
                "low": torch.as_tensor(self._standardise(p["low"], self._mu, self._sd), device=dev),
                "low_mask": torch.as_tensor(p["low_mask"][None], device=dev),
                "img": torch.as_tensor(self._standardise(p["img"], self._img_mu, self._img_sd), device=dev),
            }
            for p in pairs
        ]
        train_batches = denoising_batches(
            data, crop=cfg["crop"], batch_size=cfg["batch_size"], steps_per_epoch=cfg["steps_per_epoch"],
            timesteps=cfg["timesteps"], p_uncond=cfg["p_uncond"], device=dev,
        )  # fmt: skip
        budget = self._budget(dev, max_epochs)
        log = fit_module(
            net, train_batches, denoising_loss, val_batches=None, max_epochs=int(budget["max_epochs"]), patience=10**9,
            lr=cfg["lr"], weight_decay=cfg["weight_decay"], device=dev, seed=seed, progress=self.progress, desc="diffusion",
        )  # fmt: skip
        self._net = net.cpu()
        self._spread = np.ones(len(genes), np.float32)
        self._gate = np.ones(len(genes), np.float32)
        if cfg["calibrate"]:
            self._gate, self._spread = self._calibrate(pairs, seed)
        self.genes = list(genes)
        self.training = {
            "n_spots": int(sum(s.n for s in slides)), "seed": seed, "mode": cfg["mode"], "n_samples": cfg["n_samples"],
            "spread_factor_median": float(np.median(self._spread)), "residual_gate_median": float(np.median(self._gate)),
            "budget": budget, **log.as_dict(),
        }  # fmt: skip
        return self

    def _calibrate(self, pairs: list[dict[str, np.ndarray]], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-gene residual gate and spread factor, from the training octave (pooled map → measured map).

        Samples the measured map from its own 2 × 2 pooling. The gate ``w`` ∈ [0, 1] scales the sampled mean
        residual over the interpolated map by its least-squares fit to the held-out cells' true residual, shrunk
        towards 0 by its standard error (positive-part James–Stein, ``w·max(0, 1 - 1/t²)``), so a model that has
        not clearly learned a gene's refinement falls back to interpolation instead of adding noise (small
        slides, short training). Then it chooses, per gene, the factor ``f`` for which
        90 % of the measured values of the held-out calibration cells (a random fifth of the measured cells,
        excluded from the training loss) fall within ``mean ± 1.645 · sqrt((f · sd)² + noise²)``, where ``noise`` is
        the Poisson count noise of each measured spot in log1p units (delta method from its library size and the
        sampled mean). The factor thus calibrates the model's uncertainty about the expected expression, not the
        count noise the measurements add to it (split-conformal, on the octave the model learned).
        """
        zs, ns = [], []
        n = max(int(self.config["n_samples"]), 4)
        for i, p in enumerate(pairs):
            low = self._standardise(p["low"], self._mu, self._sd).astype(np.float32)
            img = self._standardise(p["img"], self._img_mu, self._img_sd).astype(np.float32)
            x = self._sample(low, p["low_mask"].astype(np.float32), img, n, seed + 7919 + i, spread=None)
            high = self._standardise(p["high"], self._mu, self._sd)
            m = p["calib"]
            mean_log = np.maximum(x.mean(0) * self._sd[:, None, None] + self._mu[:, None, None], 0.0)
            lib = np.maximum(p["library"], 1.0)[None]
            noise_var = np.expm1(mean_log) * (1e4 / lib) * np.exp(-2 * mean_log) / self._sd[:, None, None] ** 2
            zs.append(np.stack([(high - low)[:, m], (x.mean(0) - low)[:, m], x.std(0)[:, m]]))
            ns.append(noise_var[:, m])
        r_true, r_pred, sd = np.concatenate(zs, 2)
        noise = np.concatenate(ns, 1)
        ones = np.ones(r_true.shape[0], np.float32)
        if r_true.shape[1] < 5:
            logger.warning("diffusion: fewer than 5 held-out cells; the samples are left uncalibrated.")
            return ones, ones
        return gate_and_spread(r_true, r_pred, sd, noise)

    # -- sampling ------------------------------------------------------------------------------------
    def _sample(
        self,
        low_std: np.ndarray,
        low_mask: np.ndarray,
        img: np.ndarray,
        n: int,
        seed: int,
        *,
        spread: np.ndarray | None | str = "fitted",
    ) -> np.ndarray:
        """DDIM samples ``(n, G, H, W)`` in standardised units (the coarse condition plus a sampled residual).

        ``spread="fitted"``: the residual's sample mean is gated and the samples' spread around it scaled by the
        calibrated factors; ``"gate"``: gated mean, raw spread; ``None``: raw samples; an array: raw mean, that
        spread factor per gene.
        """
        import torch

        from ._device import resolve_device

        cfg = self.config
        dev = resolve_device(self.device)
        net = self._net.to(dev).eval()
        x = ddim_sample(
            net, low_std, low_mask, img, n=n, seed=seed,
            timesteps=cfg["timesteps"], steps=cfg["steps"], guidance=cfg["guidance"], device=dev,
        )  # fmt: skip
        low = torch.as_tensor(low_std, device=dev)[None]
        rsd = torch.as_tensor(self._rsd, dtype=torch.float32, device=dev)[None, :, None, None]
        if isinstance(spread, str):
            gate = torch.as_tensor(self._gate, dtype=torch.float32, device=dev)[None, :, None, None]
            mean = x.mean(0, keepdim=True)
            x = gate * mean + (x - mean)
            spread = self._spread if spread == "fitted" else None
        if spread is not None and n > 1:
            f = torch.as_tensor(spread, dtype=torch.float32, device=dev)[None, :, None, None]
            mean = x.mean(0, keepdim=True)
            x = mean + f * (x - mean)
        return (low.float() + x * rsd).cpu().numpy()

    def predict(self, slide: SlideData, regions: Regions) -> tuple[np.ndarray, np.ndarray]:
        """Sample the refined map of ``slide``'s measured spots and read it at the regions (mean, sd)."""
        self._check_fitted()
        if slide.y is None:
            msg = "diffusion super-resolves the measured map of the slide it predicts; this slide has no measurements."
            raise ValueError(msg)
        seed = int(regions.meta.get("seed") or 0)
        lm = lattice_map(slide.centers_px, np.asarray(slide.y))
        # The point prediction is read from the samples' mean map (log1p units, before clipping): reading each
        # noisy sample through the clip at zero and expm1/log1p and then averaging would bias it upwards wherever
        # the samples spread widely (an undertrained denoiser, a lowly expressed gene). The sd is the spread of
        # the samples' region values (not inflated), scaled by the gene's calibrated factor.
        raw, fine = self.sample_maps(slide, lm, seed=seed, calibrated_spread=False, clip=False)  # (n, G, H, W)
        mean, _ = region_samples(slide, fine, np.maximum(raw.mean(0, keepdims=True), 0.0), regions)
        _, sd = region_samples(slide, fine, np.maximum(raw, 0.0), regions)
        if self._spread is not None:
            sd = sd * self._spread[None, :].astype(np.float32)
        return mean, sd

    def sample_maps(
        self,
        slide: SlideData,
        lm: LatticeMap,
        *,
        seed: int = 0,
        calibrated_spread: bool = True,
        clip: bool = True,
    ) -> tuple[np.ndarray, LatticeMap]:
        """``n_samples`` refined maps (log1p-normalised units) and the fine lattice they live on.

        ``factor=4`` applies the 2× step twice; each first-octave sample is refined once more. With
        ``calibrated_spread`` the samples' spread around their mean is scaled by the calibrated factors (so that
        their central 90 % is a 90 % interval); otherwise they are the denoiser's samples (residual mean gated
        either way). ``clip`` sets negative log1p values to 0 (expression cannot be negative).
        """
        n = self.config["n_samples"]
        cur, cur_mask = lm, lm.mask
        cur_std = self._standardise(lm.values, self._mu, self._sd)[None]  # (1, G, h, w)
        for step in range(int(np.log2(self.config["factor"]))):
            fine = cur.finer(2)
            img = self._standardise(image_features(slide, fine), self._img_mu, self._img_sd)
            reps = n if cur_std.shape[0] == 1 else 1
            outs = []
            for i in range(cur_std.shape[0]):
                low_up, mask_up = coarse_condition(cur_std[i], cur_mask, fine.shape, training=False)
                outs.append(
                    self._sample(
                        low_up, mask_up, img, reps, seed + 1000 * step + i,
                        spread="fitted" if calibrated_spread else "gate",
                    )
                )  # fmt: skip
            cur_std, cur, cur_mask = np.concatenate(outs), fine, fine.mask
        out = cur_std * self._sd[None, :, None, None] + self._mu[None, :, None, None]
        return (np.maximum(out, 0.0) if clip else out), cur

    def get_state(self) -> dict[str, np.ndarray]:
        """Denoiser weights, standardisation, calibration and the gene graph."""
        return {**{k: getattr(self, f"_{k}") for k in _STATE}, **module_state(self._net, "net.")}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Rebuild the denoiser."""
        for k in _STATE:
            setattr(self, f"_{k}", np.asarray(state[k]))
        net = build_denoiser(len(self._mu), len(self._img_mu), self._adj, self.config)
        load_module_state(net, state, "net.")
        self._net = net.eval()
