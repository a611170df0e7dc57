"""Domain agreement: spatial domains against reference labels (ARI, NMI)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ari", "nmi"]


def ari(labels_true: Any, labels_pred: Any) -> float:
    """Adjusted Rand index of spatial domains against reference labels (scikit-learn's).

    Parameters
    ----------
    labels_true, labels_pred
        One label per spot or grid point (any hashable values), in the same order.

    Returns
    -------
    ARI: 1 for identical partitions, ~0 for random ones.
    """
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(np.asarray(labels_true), np.asarray(labels_pred)))


def nmi(labels_true: Any, labels_pred: Any) -> float:
    """Normalised mutual information of spatial domains against reference labels (scikit-learn's).

    Parameters
    ----------
    labels_true, labels_pred
        One label per spot or grid point (any hashable values), in the same order.

    Returns
    -------
    NMI between 0 (independent) and 1 (identical partitions).
    """
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(np.asarray(labels_true), np.asarray(labels_pred)))
