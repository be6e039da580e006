"""One-file model checkpoints: config, class name, weights, metadata and a format version.

A checkpoint is a ``torch.save`` dictionary of plain data (no pickled classes, so it loads
with ``weights_only=True``)::

    {"format": "lyagym-model", "format_version": 2, "class": "StableDynamics",
     "config": {...constructor kwargs...}, "dtype": "float32", "state_dict": {...},
     "weights_hash": "<sha256>", "model_hash": "<sha256>", "metadata": {...}}

It is written atomically (temporary file in the same folder, then ``os.replace``), so a
crash mid-write never leaves a half-written file under the user's name. ``load_model``
rebuilds the model from ``config`` and checks it against ``model_hash`` (class, config,
dtype and weights, as a ``Certificate`` identifies a model: an edited ``config.alpha`` is
refused) and the weights against ``weights_hash``; a missing, corrupt, truncated or
mismatched file, or one with NaN/inf weights, raises an error naming the file.
Version-1 files (no ``model_hash``) still load, checked against ``weights_hash`` only.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .certificate import model_hash, weights_hash
from .files import atomic_write, remove_stale_temps

__all__ = ["save_model", "load_model", "register_model", "MODEL_CLASSES", "FORMAT_VERSION"]

FORMAT = "lyagym-model"
FORMAT_VERSION = 2  # 2: adds "model_hash" (class, config, dtype, weights)

#: Model classes ``load_model`` can rebuild, by class name. Filled by ``register_model``.
MODEL_CLASSES: dict[str, type] = {}


def register_model(cls: type) -> type:
    """Class decorator: make ``cls`` loadable by ``load_model`` (needs ``config()`` and ``cls(**config)``)."""
    MODEL_CLASSES[cls.__name__] = cls
    return cls


def save_model(model: nn.Module, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> None:
    """Write ``model`` (its ``config()``, weights and ``metadata``) to ``path`` atomically.

    Overwrites ``path`` if it exists: saving is the user's explicit request. ``metadata``
    must be plain data (str, numbers, lists, dicts, tensors).
    """
    name = type(model).__name__
    if name not in MODEL_CLASSES:
        raise TypeError(f"{name} is not a registered model class; decorate it with @register_model")
    dtype = next(model.parameters()).dtype
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class": name,
        "config": model.config(),
        "dtype": str(dtype).removeprefix("torch."),
        "state_dict": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "weights_hash": weights_hash(model),
        "model_hash": model_hash(model),
        "metadata": dict(metadata or {}),
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The validated checkpoint dictionary at ``path`` (no model built)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    remove_stale_temps(path)  # what a killed save of this checkpoint left behind
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, foreign pickle ...
        raise ValueError(f"{path!r} is not a readable lyagym checkpoint (corrupt or truncated?): {type(e).__name__}: {e}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a lyagym model checkpoint (missing format tag {FORMAT!r})")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path!r} has checkpoint format_version {version!r}; this lyagym reads up to {FORMAT_VERSION}")
    missing = [k for k in ("class", "config", "dtype", "state_dict", "weights_hash") if k not in payload]
    if missing:
        raise ValueError(f"{path!r} is an incomplete checkpoint: missing {missing}")
    return payload


def load_model(
    path: str | os.PathLike,
    *,
    map_location: str | torch.device | None = "cpu",
    expected_class: type | None = None,
) -> nn.Module:
    """Rebuild the model saved at ``path`` (any registered class) on ``map_location``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is corrupt or truncated, not a lyagym checkpoint, from a newer
            format, of a different class than ``expected_class``, or its weights do not
            match its config or its recorded hash.
    """
    from . import simple, stable  # noqa: F401  -- registers the built-in model classes

    payload = read_checkpoint(path)
    path = os.fspath(path)
    name = payload["class"]
    if expected_class is not None and name != expected_class.__name__:
        raise ValueError(f"{path!r} holds a {name}, not a {expected_class.__name__}; use lyagym.learned_models.load_model")
    if name not in MODEL_CLASSES:
        raise ValueError(f"{path!r} holds an unknown model class {name!r}; known: {sorted(MODEL_CLASSES)}")
    dtype = getattr(torch, str(payload["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{path!r} records an unknown dtype {payload['dtype']!r}")
    try:
        model = MODEL_CLASSES[name](**payload["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path!r}: its config does not build a {name}: {e}") from None
    model = model.to(dtype)
    state = payload["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path!r}: state_dict is not a dictionary of tensors")
    bad = sorted(k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ValueError(f"{path!r}: weights contain NaN or inf ({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); refusing to load them")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path!r}: weights do not match the {name} built from its config: {e}") from None
    if weights_hash(model) != payload["weights_hash"]:
        raise ValueError(f"{path!r}: weights do not match the hash recorded at save time (file corrupted?)")
    if payload["format_version"] >= 2 and model_hash(model) != payload.get("model_hash"):
        raise ValueError(f"{path!r}: its config does not match the hash recorded at save time (file edited or corrupted?)")
    model.checkpoint_metadata = dict(payload.get("metadata", {}))
    if map_location is not None:
        model = model.to(map_location)
    return model
