"""Neural stain learning on a synthetic slide whose expression depends on stain concentrations."""

from __future__ import annotations

import numpy as np
import pytest

import stpredict as stp
from stpredict.models.nsl import RJ_DECONV


def test_eleven_weights_per_gene():
    assert stp.models.create_predictor("nsl").n_parameters() == 11


@pytest.mark.slow
def test_learns_the_generating_stain_plane():
    """NSL's effective OD direction per gene moves from the Ruifrok–Johnston init to the generating stains.

    For a gene ``λ = a·c_H + b·c_E`` the identifiable part of the model is the OD direction
    ``u_g = v_g · W_g``; it must lie in the plane of the generating stain vectors. Tolerance: the median angle
    over the stain genes is below 15° (measured ≈ 11° with Poisson noise at depth 50 and library-size
    normalisation, which mixes other genes into each target), and at least 5° below the angle of the same
    output weights applied to the Ruifrok–Johnston rows the layer starts from (measured ≈ 19°; the generating
    stains are deliberately not Ruifrok–Johnston's, whose rows lie 28° and 38° off the generating plane).
    """
    sdata = stp.datasets.synthetic(image_size=1600, n_genes=30, stain_genes=0.3, depth=50, seed=2)
    truth = stp.datasets.synthetic_truth(sdata)
    genes = [f"gene_{i}" for i in range(30)]
    pred = stp.tl.fit(sdata, "nsl", genes=genes, progress=False)
    W = pred.stain_matrices
    v = pred._net.v.detach().numpy()
    normal = np.cross(truth.stain_matrix[0], truth.stain_matrix[1])
    normal /= np.linalg.norm(normal)

    def angle_to_plane(u):
        return np.degrees(np.arcsin(min(1.0, abs(u @ normal) / np.linalg.norm(u))))

    stain_genes = np.flatnonzero(truth.stain_gene)
    learned = np.median([angle_to_plane(v[g] @ W[g]) for g in stain_genes])
    initial = np.median([angle_to_plane(v[g] @ RJ_DECONV) for g in stain_genes])
    assert learned < 15.0
    assert learned < initial - 5.0
