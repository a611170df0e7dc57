"""Checkpoint I/O: one ``.safetensors`` file, arrays as tensors and a JSON header; never pickle.

``save`` writes the file atomically (a temporary file renamed into place) with a manifest of the tensors'
shapes and dtypes in the header; ``read_header`` and ``load`` refuse anything else with a
:class:`CheckpointError` that says what the file is and what was expected.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._records import jsonable
from .._version import __version__

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._predictor import Predictor

__all__ = ["FORMAT_VERSION", "CheckpointError", "digest", "load", "read_header", "save"]

#: the checkpoint format this stpredict writes
FORMAT_VERSION = 1
#: the formats it reads
READABLE_FORMAT_VERSIONS = (1,)
SUFFIX = ".safetensors"
_METADATA_KEY = "stpredict"
_REQUIRED = {"predictor": str, "genes": list, "format_version": int}
_OPTIONAL = {"config": dict, "preprocessing": dict, "backbone": dict, "training": dict, "tensors": dict}


class CheckpointError(ValueError):
    """A file that is not a readable stpredict checkpoint (truncated, not safetensors, bad header, wrong tensors)."""


def checkpoint_path(path: str | Path) -> Path:
    """The file :func:`save` writes for ``path``: ``path`` itself if it ends in ``.safetensors``, else with it added."""
    path = Path(path)
    if path.suffix == SUFFIX:
        return path
    return path.with_name(path.name + SUFFIX)


def _resolve(path: str | Path) -> Path:
    """The existing checkpoint for ``path`` (as given, or with ``.safetensors`` added, as :func:`save` does)."""
    given = Path(path)
    tried = [given]
    if given.is_file():
        return given
    alt = checkpoint_path(given)
    if alt != given:
        tried.append(alt)
        if alt.is_file():
            return alt
    if given.is_dir():
        msg = f"Checkpoint {str(given)!r} is a directory, not a .safetensors file written by Predictor.save."
        raise FileNotFoundError(msg)
    msg = f"Checkpoint {str(given)!r} does not exist (tried {', '.join(repr(str(p)) for p in tried)})."
    raise FileNotFoundError(msg)


def _what_is(path: Path) -> str:
    """A few words on what a file that is not safetensors looks like (from its first bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        size = path.stat().st_size
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if not head:
        return "an empty file"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "a Python pickle (stpredict never loads pickles: they can run arbitrary code)"
    if head[:4] == b"PK\x03\x04":
        return "a zip archive, e.g. a torch.save file (stpredict never loads pickles: they can run arbitrary code)"
    if head[:1] in (b"{", b"["):
        return "a JSON or text file"
    if len(head) >= 8:
        n = int.from_bytes(head[:8], "little")
        if n + 8 > size:
            return f"a truncated file ({size} bytes; its header alone announces {n + 8})"
        end = _data_end(path, n)
        if end is not None and n + 8 + end > size:
            return f"a truncated file ({size} bytes; its header announces tensors up to byte {n + 8 + end})"
    return f"not a safetensors file ({size} bytes)"


def _data_end(path: Path, n: int) -> int | None:
    """The end of the tensor data a safetensors header of ``n`` bytes announces (``None``: not such a header)."""
    if n > 100_000_000:
        return None
    try:
        with open(path, "rb") as f:
            f.seek(8)
            header = json.loads(f.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return max(ends, default=0)


def _safetensors_error(path: Path, e: Exception) -> CheckpointError:
    msg = (
        f"{str(path)!r} is not a readable stpredict checkpoint: it is {_what_is(path)}; expected a .safetensors "
        f"file written by Predictor.save (safetensors says: {e})."
    )
    return CheckpointError(msg)


def _check_header(path: Path, header: Any) -> dict[str, Any]:
    if not isinstance(header, dict):
        msg = f"{str(path)!r}: the stpredict header is a JSON {type(header).__name__}, expected an object."
        raise CheckpointError(msg)
    missing = [k for k in _REQUIRED if k not in header]
    if missing:
        msg = (
            f"{str(path)!r}: the stpredict header lacks {missing} (it has {sorted(header)}); a checkpoint written by "
            f"Predictor.save has {sorted(_REQUIRED)} and {sorted(_OPTIONAL)}."
        )
        raise CheckpointError(msg)
    version = header["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        msg = f"{str(path)!r}: format_version is {version!r}, expected an integer."
        raise CheckpointError(msg)
    if version > max(READABLE_FORMAT_VERSIONS):
        msg = (
            f"{str(path)!r} is a checkpoint of format version {version}, newer than this stpredict reads "
            f"(format {', '.join(map(str, READABLE_FORMAT_VERSIONS))}; written by stpredict "
            f"{header.get('stpredict_version', 'unknown')}): upgrade stpredict to load it."
        )
        raise CheckpointError(msg)
    if version not in READABLE_FORMAT_VERSIONS:
        msg = (
            f"{str(path)!r} is a checkpoint of format version {version}, older than this stpredict reads "
            f"(format {', '.join(map(str, READABLE_FORMAT_VERSIONS))}): load it with the stpredict that wrote it "
            f"({header.get('stpredict_version', 'unknown')}) and fit again, or re-save it there."
        )
        raise CheckpointError(msg)
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key in header and not isinstance(header[key], kind):
            msg = f"{str(path)!r}: header field {key!r} is a {type(header[key]).__name__}, expected a {kind.__name__}."
            raise CheckpointError(msg)
    bad = [g for g in header["genes"] if not isinstance(g, str)]
    if bad:
        msg = f"{str(path)!r}: header field 'genes' holds non-strings {bad[:3]}; expected gene names."
        raise CheckpointError(msg)
    return header


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a checkpoint (config, genes, preprocessing, backbone).

    Reads only the header, not the arrays: cheap for inspecting what a checkpoint predicts.

    Parameters
    ----------
    path
        A checkpoint written by :meth:`Predictor.save`; without its ``.safetensors`` suffix, the suffix is added
        when ``path`` itself does not exist (as ``save`` does).

    Returns
    -------
    The header as a dict: ``"predictor"`` (registered name), ``"config"``, ``"genes"``, ``"preprocessing"``,
    ``"backbone"``, ``"training"``, ``"format_version"``, ``"stpredict_version"`` and ``"tensors"`` (shape
    and dtype of each array).

    Raises
    ------
    FileNotFoundError
        If no checkpoint exists at ``path`` (the message lists the paths tried).
    CheckpointError
        If the file is not a readable stpredict checkpoint: not safetensors (a pickle is refused), truncated,
        without stpredict metadata, a header that is not JSON or lacks ``predictor``/``genes``/``format_version``,
        or a format version this stpredict does not read.
    """
    from safetensors import safe_open

    path = _resolve(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception as e:  # SafetensorError, OSError...: all mean unreadable
        raise _safetensors_error(path, e) from e
    if _METADATA_KEY not in meta:
        msg = (
            f"{str(path)!r} is a safetensors file but not an stpredict checkpoint (no {_METADATA_KEY!r} metadata; "
            f"it has {sorted(meta) or 'none'})."
        )
        raise CheckpointError(msg)
    try:
        header = json.loads(meta[_METADATA_KEY])
    except ValueError as e:
        msg = f"{str(path)!r}: the stpredict header is not JSON ({e})."
        raise CheckpointError(msg) from e
    return _check_header(path, header)


def _identity(predictor: Predictor) -> dict[str, Any]:
    """What a predictor is, besides its arrays: class name, configuration, panel, preprocessing, backbone."""
    return {
        "predictor": predictor.name,
        "config": predictor.config,
        "genes": list(predictor.genes or []),
        "preprocessing": predictor.preprocessing,
        "backbone": predictor.backbone,
    }


def digest(predictor: Predictor) -> str:
    """SHA-256 of what a fitted predictor computes.

    It covers the class name, configuration, panel, preprocessing, backbone and fitted arrays, not the training
    log: a saved and reloaded predictor has the digest it had.

    Parameters
    ----------
    predictor
        A fitted predictor.

    Returns
    -------
    The hex digest (64 characters).
    """
    predictor._check_fitted()
    h = hashlib.sha256()
    h.update(json.dumps(jsonable(_identity(predictor)), sort_keys=True).encode())
    for k, v in sorted(predictor.get_state().items()):
        a = np.ascontiguousarray(v)
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(predictor: Predictor, path: str | Path) -> Path:
    """Write ``predictor`` to one ``.safetensors`` file (see :meth:`Predictor.save`); returns the file's path.

    The file is written beside its destination and renamed into place: an interrupted save leaves the previous
    checkpoint (or none), never a truncated one.
    """
    from safetensors.numpy import save_file

    predictor._check_fitted()
    path = checkpoint_path(path)
    state = {k: np.ascontiguousarray(v) for k, v in predictor.get_state().items()}
    header = {
        **_identity(predictor),
        "training": predictor.training,
        "format_version": FORMAT_VERSION,
        "stpredict_version": __version__,
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in state.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file(state, str(tmp), metadata={_METADATA_KEY: json.dumps(jsonable(header))})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _check_tensors(path: Path, header: dict[str, Any], state: dict[str, np.ndarray]) -> None:
    manifest = header.get("tensors")
    if manifest is None:  # written before the manifest existed
        return
    missing = sorted(set(manifest) - set(state))
    extra = sorted(set(state) - set(manifest))
    if missing or extra:
        msg = (
            f"{str(path)!r}: its tensors do not match its header: missing {missing or 'none'}, unexpected "
            f"{extra or 'none'} (the header lists {sorted(manifest)})."
        )
        raise CheckpointError(msg)
    for k, spec in manifest.items():
        shape = list(np.shape(state[k]))
        if isinstance(spec, dict) and "shape" in spec and list(spec["shape"]) != shape:
            msg = f"{str(path)!r}: tensor {k!r} has shape {tuple(shape)}, its header says {tuple(spec['shape'])}."
            raise CheckpointError(msg)


def _accepted_options(cls: type) -> list[str] | None:
    try:
        params = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def load(path: str | Path, *, lookup: Callable[[str], type[Predictor]]) -> Predictor:
    """Load a predictor saved with :meth:`Predictor.save`, its class found by ``lookup(name)``.

    :func:`stpredict.models.load` passes the registry's ``get_predictor_class`` (this module does not import the
    registry, which imports the predictor base class, which imports this module to save). Parameters, result
    and errors: :func:`stpredict.models.load`; ``lookup`` raises :class:`KeyError` for a name it does not know.
    """
    from safetensors.numpy import load_file

    path = _resolve(path)
    header = read_header(path)
    name = header["predictor"]
    try:
        cls = lookup(name)
    except KeyError as e:
        msg = (
            f"{str(path)!r} is a checkpoint of predictor {name!r}, which is not registered here "
            f"({e.args[0]}) Install the package that provides it."
        )
        raise CheckpointError(msg) from e
    config = header.get("config", {})
    accepted = _accepted_options(cls)
    unknown = [k for k in config if accepted is not None and k not in accepted]
    if unknown:
        msg = (
            f"{str(path)!r}: options {unknown} in its config are not options of {name!r} ({cls.__name__} takes "
            f"{accepted}); the checkpoint comes from another version of stpredict "
            f"({header.get('stpredict_version', 'unknown')})."
        )
        raise CheckpointError(msg)
    try:
        pred = cls(**config)
    except (TypeError, ValueError) as e:
        msg = f"{str(path)!r}: its config {config} does not make a {name!r} predictor: {e}"
        raise CheckpointError(msg) from e
    pred.genes = list(header["genes"])
    pred.preprocessing = header.get("preprocessing", {})
    pred.backbone = header.get("backbone", {})
    pred.training = header.get("training", {})
    try:
        state = load_file(str(path))
    except Exception as e:  # SafetensorError, OSError: arrays unreadable
        raise _safetensors_error(path, e) from e
    _check_tensors(path, header, state)
    try:
        pred.set_state(state)
    except KeyError as e:
        msg = f"{str(path)!r}: a {name!r} predictor needs tensor {e.args[0]!r}, the file holds {sorted(state)}."
        raise CheckpointError(msg) from e
    except Exception as e:  # each predictor's set_state raises its own errors
        shapes = {k: tuple(np.shape(v)) for k, v in state.items()}
        msg = f"{str(path)!r}: its tensors {shapes} do not fit a {name!r} predictor with config {config}: {e}"
        raise CheckpointError(msg) from e
    return pred
