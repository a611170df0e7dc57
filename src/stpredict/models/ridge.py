"""``ridge``: the HEST-style linear probe on backbone embeddings, with a closed-form predictive std."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._base import Predictor, register_predictor

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._base import Regions, SlideData

__all__ = ["RidgePredictor"]


@register_predictor("ridge")
class RidgePredictor(Predictor):
    """Ridge regression from embeddings to expression (HEST's linear probe), one penalty per gene.

    Features are standardised on the training spots (optionally reduced by PCA); each gene's penalty is
    chosen from ``alphas`` by exact leave-one-out error, computed in closed form from one SVD. The
    predictive standard deviation is the Gaussian-posterior one,
    ``σ_g · sqrt(1 + 1/n + x^T (X^T X + α_g I)^{-1} x)``, with ``σ_g²`` the residual variance over
    ``n - df_g`` degrees of freedom.

    Parameters
    ----------
    alphas
        Candidate penalties, relative to the number of training spots (``α = a · n``).
    pca
        Number of principal components to keep before the regression (``None``: all features).
    clip
        Clip predictions at 0 (expression on the log1p scale cannot be negative).
    """

    consumes = "embeddings"
    default_backbone = "handcrafted"
    provides_std = True

    def __init__(self, *, alphas: Sequence[float] | None = None, pca: int | None = None, clip: bool = True) -> None:
        alphas = list(np.logspace(-4, 3, 15)) if alphas is None else [float(a) for a in alphas]
        super().__init__(alphas=alphas, pca=pca, clip=clip)
        self._state: dict[str, np.ndarray] = {}

    def fit(
        self,
        slides: Sequence[SlideData],
        *,
        genes: Sequence[str],
        max_epochs: int | None = None,
        seed: int | None = None,
    ) -> RidgePredictor:
        """Fit on the slides' embeddings and targets."""
        X = np.concatenate([np.asarray(s.embeddings, dtype=np.float64) for s in slides])
        Y = np.concatenate([np.asarray(s.y, dtype=np.float64) for s in slides])
        n = len(X)
        mu, sd = X.mean(0), X.std(0)
        sd[sd < 1e-8] = 1.0
        Z = (X - mu) / sd
        comps = None
        if self.config["pca"]:
            k = min(int(self.config["pca"]), n - 1, Z.shape[1])
            _, _, vt = np.linalg.svd(Z, full_matrices=False)
            comps = vt[:k]
            Z = Z @ comps.T
        y_mean = Y.mean(0)
        Yc = Y - y_mean
        U, s, Vt = np.linalg.svd(Z, full_matrices=False)
        keep = s > s.max() * 1e-10
        U, s, Vt = U[:, keep], s[keep], Vt[keep]
        UtY = U.T @ Yc
        alphas = np.asarray(self.config["alphas"]) * n
        s2 = s**2
        best_err = np.full(Y.shape[1], np.inf)
        best_alpha = np.zeros(Y.shape[1])
        for a in alphas:
            f = s2 / (s2 + a)
            fitted = U @ (f[:, None] * UtY)
            h = (U**2) @ f + 1.0 / n
            loo = (Yc - fitted) / (1.0 - h)[:, None]
            err = (loo**2).mean(0)
            better = err < best_err
            best_err[better] = err[better]
            best_alpha[better] = a
        # coefficients and residual variance per gene at its penalty
        F = s2[:, None] / (s2[:, None] + best_alpha[None])  # (k, G)
        coef = Vt.T @ ((s[:, None] / (s2[:, None] + best_alpha[None])) * UtY)  # (k_features, G)
        fitted = U @ (F * UtY)
        df = F.sum(0) + 1.0
        sigma2 = ((Yc - fitted) ** 2).sum(0) / np.maximum(n - df, 1.0)
        self.genes = list(genes)
        self._state = {
            "mu": mu,
            "sd": sd,
            "coef": coef,
            "intercept": y_mean,
            "alpha": best_alpha,
            "sigma2": sigma2,
            "s": s,
            "Vt": Vt,
            "n": np.array([n], dtype=np.float64),
        }
        if comps is not None:
            self._state["pca"] = comps
        self.training = {"n_spots": n, "n_slides": len(slides), "loo_mse_mean": float(best_err.mean())}
        return self

    def _transform(self, X: np.ndarray) -> np.ndarray:
        st = self._state
        Z = (np.asarray(X, dtype=np.float64) - st["mu"]) / st["sd"]
        if "pca" in st:
            Z = Z @ st["pca"].T
        return Z

    def predict(self, slide: SlideData, regions: Regions) -> tuple[np.ndarray, np.ndarray]:
        """Mean and posterior std at the regions' embeddings."""
        self._check_fitted()
        if regions.embeddings is None:
            msg = "ridge predicts from embeddings: the regions carry none (stp.tl builds them from the backbone)."
            raise ValueError(msg)
        st = self._state
        Z = self._transform(regions.embeddings)
        mean = Z @ st["coef"] + st["intercept"]
        proj = Z @ st["Vt"].T  # (m, k)
        s2 = st["s"] ** 2
        lev = (proj**2) @ (1.0 / (s2[:, None] + st["alpha"][None]))  # (m, G)
        std = np.sqrt(st["sigma2"][None] * (1.0 + 1.0 / st["n"][0] + lev))
        if self.config["clip"]:
            mean = np.maximum(mean, 0.0)
        return mean.astype(np.float32), std.astype(np.float32)

    def get_state(self) -> dict[str, np.ndarray]:
        """Standardisation, coefficients, penalties and the SVD used for the std."""
        return dict(self._state)

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore the fitted arrays."""
        self._state = {k: np.asarray(v) for k, v in state.items()}
