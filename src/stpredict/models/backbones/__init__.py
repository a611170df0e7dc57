"""Backbones: frozen feature extractors from H&E patches, and where their weights come from.

One module per concern, imports pointing down the list only:

- :mod:`._base`: :class:`Backbone`, :class:`TorchBackbone`;
- :mod:`._handcrafted`: the weight-free :class:`HandcraftedBackbone`;
- :mod:`._table`: :class:`FoundationModelCfg` and :data:`FOUNDATION_MODELS`, the pathology foundation models;
- :mod:`._weights`: weight files (reading, SHA-256) and :func:`load_trunk_weights`, the one loader;
- :mod:`._lookup`: where weights are (local paths, ``settings.weights_dir``, the Hugging Face cache, downloads);
- :mod:`._builders`: building foundation models (timm, CONCH, transformers);
- :mod:`._timm`: any timm model;
- :mod:`._factory`: :func:`get_backbone` and :func:`list_backbones`.

Importing this package imports neither torch nor timm.
"""

from __future__ import annotations

from ._base import Backbone, TorchBackbone
from ._builders import build_foundation_module, create_foundation
from ._factory import foundation_table, get_backbone, list_backbones
from ._handcrafted import HandcraftedBackbone
from ._lookup import foundation_weights_available
from ._table import FOUNDATION_MODELS, FoundationModelCfg, get_foundation_cfg
from ._timm import create_timm
from ._weights import RANDOM_SOURCE, file_sha256, load_trunk_weights, load_weights_file

__all__ = [
    "FOUNDATION_MODELS",
    "RANDOM_SOURCE",
    "Backbone",
    "FoundationModelCfg",
    "HandcraftedBackbone",
    "TorchBackbone",
    "build_foundation_module",
    "create_foundation",
    "create_timm",
    "file_sha256",
    "foundation_table",
    "foundation_weights_available",
    "get_backbone",
    "get_foundation_cfg",
    "list_backbones",
    "load_trunk_weights",
    "load_weights_file",
]
