"""Backbones, the predictor contract and registry, and the built-in predictors."""

from __future__ import annotations

from . import baselines, diffusion, histosge, nsl, pixnet, ridge, stnet
from ._base import (
    Predictor,
    Regions,
    SlideData,
    create_predictor,
    get_predictor_class,
    list_predictors,
    load,
    predictors_table,
    register_predictor,
)
from ._checkpoint import CheckpointError, digest, read_header
from .backbones import Backbone, HandcraftedBackbone, TorchBackbone, get_backbone, list_backbones
from .baselines import MeanBaseline, NearestBaseline, NeighborsBaseline, RidgeNeighborsBaseline
from .diffusion import CrossModalDiffusion
from .histosge import HisToSGE
from .nsl import NeuralStainLearning
from .pixnet import PixNet
from .ridge import RidgePredictor
from .stnet import STNet

__all__ = [
    "CrossModalDiffusion",
    "diffusion",
    "histosge",
    "nsl",
    "pixnet",
    "stnet",
    "Backbone",
    "CheckpointError",
    "HandcraftedBackbone",
    "HisToSGE",
    "MeanBaseline",
    "NearestBaseline",
    "NeighborsBaseline",
    "RidgeNeighborsBaseline",
    "NeuralStainLearning",
    "PixNet",
    "Predictor",
    "Regions",
    "RidgePredictor",
    "STNet",
    "SlideData",
    "TorchBackbone",
    "baselines",
    "create_predictor",
    "digest",
    "get_backbone",
    "get_predictor_class",
    "list_backbones",
    "list_predictors",
    "load",
    "predictors_table",
    "read_header",
    "register_predictor",
    "ridge",
]
