"""Checks of the verbs' plain arguments, run at the door (before any element is read or any work is done).

Each check names the argument, what it was given, the valid range and the fix; a misspelt name is answered
with the closest valid ones. Checks of elements (keys, layers, counts) that need the SpatialData are here too
when they are about an argument (``layer=``, ``key_added=``); :mod:`stpredict._validate` checks the data.
"""

from __future__ import annotations

import difflib
import math
import numbers
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable

    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = [
    "check_embedding_key",
    "check_flag",
    "check_genes_arg",
    "check_layer",
    "check_length",
    "check_max_epochs",
    "check_oof_folds",
    "check_predict_key",
    "check_seed",
    "check_table_name",
    "close_matches",
]


def close_matches(word: Any, options: Iterable[Any], *, n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The ``n`` options closest to ``word`` (case-insensitive), as given."""
    opts = [str(o) for o in options]
    lower = {o.lower(): o for o in reversed(opts)}
    hits = difflib.get_close_matches(str(word).lower(), list(lower), n=n, cutoff=cutoff)
    return [lower[h] for h in hits]


def _did_you_mean(arg: str, hits: list[str]) -> str:
    if not hits:
        return ""
    return " Did you mean " + " or ".join(f"{arg}={h!r}" for h in hits) + "?"


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_seed(seed: Any) -> None:
    """``seed`` is ``None`` or a non-negative integer."""
    if seed is None:
        return
    if not _is_int(seed):
        msg = (
            f"seed must be a non-negative integer or None (not reproducible), got {seed!r} of type "
            f"{type(seed).__name__}" + (f": pass seed={int(seed)}." if _integral(seed) else ".")
        )
        raise TypeError(msg)
    if seed < 0:
        msg = f"seed must be a non-negative integer or None, got {seed}: pass e.g. seed=0."
        raise ValueError(msg)


def _integral(value: Any) -> bool:
    try:
        return float(value) == int(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def check_flag(name: str, value: Any) -> None:
    """``value`` is ``True`` or ``False`` (a string such as ``"no"`` would be truthy)."""
    if isinstance(value, bool | np.bool_):
        return
    msg = f"{name} must be True or False, got {value!r} of type {type(value).__name__}"
    if isinstance(value, str) and value.strip().lower() in _WORDS:
        msg += f": pass {name}={_WORDS[value.strip().lower()]}."
    elif _is_int(value) and value in (0, 1):
        msg += f": pass {name}={bool(value)}."
    else:
        msg += "."
    raise TypeError(msg)


_WORDS = dict.fromkeys(("true", "yes", "y", "1", "on"), True) | dict.fromkeys(("false", "no", "n", "0", "off"), False)


def check_max_epochs(max_epochs: Any) -> None:
    """``max_epochs`` is ``None`` (the predictor's default) or a positive integer."""
    if max_epochs is None:
        return
    if not _is_int(max_epochs) or max_epochs < 1:
        msg = (
            f"max_epochs must be a positive integer (passes over the training spots) or None for the predictor's "
            f"default, got {max_epochs!r}. A model trained for no epoch would predict from its random start."
        )
        raise ValueError(msg)


def check_oof_folds(oof_folds: Any, n_spots: int | None = None) -> None:
    """``oof_folds`` is an integer from 2 to half the measured spots (each fold needs two spots)."""
    top = f"{n_spots // 2} (half the {n_spots} measured spots)" if n_spots is not None else "half the measured spots"
    if not _is_int(oof_folds):
        msg = f"oof_folds must be an integer from 2 to {top}, got {oof_folds!r}; 5 is the default."
        raise ValueError(msg)
    if oof_folds < 2:
        msg = (
            f"oof_folds must be at least 2 (got {oof_folds}): every measured spot is predicted by a model that did "
            "not see it, which needs two folds or more; in-sample predictions of measured spots are not offered."
        )
        raise ValueError(msg)
    if n_spots is not None and oof_folds > n_spots // 2:
        msg = (
            f"oof_folds={oof_folds} is too many for {n_spots} measured spots: use an integer from 2 to {top} "
            "(the default is 5)."
        )
        raise ValueError(msg)


def check_length(name: str, value: Any, *, unit: str = "µm", hint: str = "") -> None:
    """``value`` is ``None`` or a positive finite number (a length)."""
    if value is None:
        return
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        msg = f"{name} must be a positive number of {unit}, got {value!r} of type {type(value).__name__}.{hint}"
        raise TypeError(msg)
    if not math.isfinite(float(value)) or value <= 0:
        msg = f"{name} must be a positive, finite number of {unit}, got {value!r}.{hint}"
        raise ValueError(msg)


def check_genes_arg(genes: Any, n_genes: Any) -> None:
    """``genes`` is ``None``, a positive integer or a non-empty list of distinct names; ``n_genes`` positive."""
    if not _is_int(n_genes) or n_genes < 1:
        msg = f"n_genes must be a positive integer (the size of the gene panel), got {n_genes!r}; the default is 50."
        raise ValueError(msg)
    if genes is None:
        return
    if isinstance(genes, bool | np.bool_):
        msg = f"genes must be a list of gene names, a positive number of genes or None, got {genes!r}."
        raise TypeError(msg)
    if _is_int(genes):
        if genes < 1:
            msg = (
                f"genes={genes} asks for a panel of {genes} genes: pass a positive number of genes, a list of "
                "names, or None for n_genes."
            )
            raise ValueError(msg)
        return
    if isinstance(genes, str):
        msg = f"genes={genes!r} is a single string: pass a list, genes=[{genes!r}]."
        raise TypeError(msg)
    try:
        names = [str(g) for g in genes]
    except TypeError:
        msg = f"genes must be a list of gene names, a positive number of genes or None, got {type(genes).__name__}."
        raise TypeError(msg) from None
    if not names:
        msg = "genes=[] asks for an empty panel: pass gene names, a number of genes, or None for n_genes."
        raise ValueError(msg)
    seen: set[str] = set()
    dup = [g for g in names if g in seen or seen.add(g)]
    if dup:
        dup = list(dict.fromkeys(dup))
        msg = (
            f"genes lists {len(dup)} gene(s) more than once ({dup[:5]}): each gene is one output column, pass each "
            "once (e.g. list(dict.fromkeys(genes)))."
        )
        raise ValueError(msg)


def check_layer(table: AnnData, table_key: str, layer: str | None) -> None:
    """``layer`` is ``None`` (``X``) or a layer of the table."""
    if layer is None or layer in table.layers:
        return
    have = list(table.layers)
    listing = ", ".join(repr(k) for k in have) if have else "none"
    hint = _did_you_mean("layer", close_matches(layer, have))
    msg = (
        f"Table {table_key!r} has no layer {layer!r}; its layers: {listing}.{hint} Pass the layer of raw counts, "
        "or layer=None for X."
    )
    raise KeyError(msg)


def _stp_uns(table: AnnData) -> dict:
    rec = table.uns.get("stpredict", {})
    return rec if isinstance(rec, dict) else {}


def _is_prediction_record(rec: Any) -> bool:
    return isinstance(rec, dict) and "genes" in rec and "mode" in rec


def check_predict_key(table: AnnData | None, table_key: str | None, key_added: Any, *, layer: str | None) -> None:
    """``predict``'s ``key_added`` may replace only what an earlier ``predict`` wrote under that name.

    It names ``layers[key]``, ``layers[f"{key}_std"]``, ``var[key]``, ``obsm[key]`` and
    ``uns["stpredict"][key]``: any of them already present and not written by ``predict`` (counts, a
    user's column, ``obsm["spatial"]``, the embeddings' record) is refused.
    """
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added must be a non-empty string (the name of the predictions' layer), got {key_added!r}."
        raise ValueError(msg)
    if table is None:
        return
    if key_added == layer:
        msg = (
            f"key_added={key_added!r} is the layer of counts the model is fitted on (layer={layer!r}): writing the "
            "predictions there would destroy the counts. Use another name, e.g. key_added='predicted'."
        )
        raise ValueError(msg)
    uns = _stp_uns(table)
    if key_added in uns and not _is_prediction_record(uns[key_added]):
        msg = f"key_added={key_added!r} is reserved: uns['stpredict'][{key_added!r}] holds stpredict's own records."
        raise ValueError(msg)
    if _is_prediction_record(uns.get(key_added)):
        return  # an earlier prediction under this name: replaced
    taken = [f"layers[{key_added!r}]"] if key_added in table.layers else []
    taken += [f"layers[{key_added + '_std'!r}]"] if f"{key_added}_std" in table.layers else []
    taken += [f"var[{key_added!r}]"] if key_added in table.var.columns else []
    taken += [f"obsm[{key_added!r}]"] if key_added in table.obsm else []
    if taken:
        msg = (
            f"key_added={key_added!r} would overwrite {', '.join(taken)} of table {table_key!r}, which stp.tl.predict "
            "did not write (no uns['stpredict'][key_added] record). Choose another name, e.g. "
            f"key_added={_free_name(table, 'predicted')!r}."
        )
        raise ValueError(msg)


def _free_name(table: AnnData, base: str) -> str:
    def used(k: str) -> bool:
        return k in table.layers or k in table.obsm or k in table.var.columns or f"{k}_std" in table.layers

    if not used(base) or _is_prediction_record(_stp_uns(table).get(base)):
        return base
    i = 2
    while used(f"{base}_{i}"):
        i += 1
    return f"{base}_{i}"


def check_embedding_key(table: AnnData, table_key: str, key: str) -> None:
    """``embed``'s ``key_added`` may replace only embeddings stpredict recorded under that name."""
    if not isinstance(key, str) or not key:
        msg = f"key_added must be a non-empty string (an obsm key), got {key!r}."
        raise ValueError(msg)
    if key in table.obsm and key not in _stp_uns(table).get("embeddings", {}):
        msg = (
            f"key_added={key!r} would overwrite obsm[{key!r}] of table {table_key!r}, which holds no embeddings "
            "stpredict recorded (uns['stpredict']['embeddings']). Choose another name, or omit key_added for "
            "'X_<backbone>'."
        )
        raise ValueError(msg)


def check_table_name(sdata: SpatialData, name: Any, *, measured: str | None) -> None:
    """``superresolve``'s table name may replace only a table an earlier ``superresolve`` wrote."""
    if not isinstance(name, str) or not name:
        msg = f"key_added must be a non-empty string (the name of the new table), got {name!r}."
        raise ValueError(msg)
    if name == measured:
        msg = (
            f"key_added={name!r} is the table of the measured spots: the super-resolved table would replace the "
            "counts. Omit key_added for '<model>_<spots_key>_<grid>', or choose another name."
        )
        raise ValueError(msg)
    if name in sdata.tables and "superresolve" not in _stp_uns(sdata.tables[name]):
        msg = (
            f"key_added={name!r} names an existing table that stp.tl.superresolve did not write: it would be "
            "replaced. Choose another name, or omit key_added for '<model>_<spots_key>_<grid>'."
        )
        raise ValueError(msg)
    other = [k for k in ("images", "labels", "points", "shapes") if name in getattr(sdata, k)]
    if other:
        msg = f"Element name {name!r} is already used by {other[0]}; pass key_added=... naming the table otherwise."
        raise ValueError(msg)
