"""Test-size configurations of the predictors: tiny networks and inputs so that every predictor runs in seconds.

They live with the tests, not on the classes (as timm registers its ``test_*`` variants beside the real ones):
production code never sees them. A predictor without an entry runs with its defaults.
"""

from __future__ import annotations

from typing import Any

SMOKE_CONFIGS: dict[str, dict[str, Any]] = {
    "diffusion": {"channels": 16, "steps": 4, "n_samples": 3, "steps_per_epoch": 5},
    "histosge": {"n_models": 2, "dim": 64, "head_hidden": 64},
    "pixnet": {"input_mpp": 4.0, "tile_um": 192.0, "channels": 16},
    "stnet": {"trunk": "resnet18", "patch_px": 32, "batch_size": 8},
}


def smoke_config(name: str) -> dict[str, Any]:
    """The fast configuration of predictor ``name`` (``{}``: its defaults are fast already)."""
    return dict(SMOKE_CONFIGS.get(name, {}))
