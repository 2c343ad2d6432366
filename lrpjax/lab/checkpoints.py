"""Checkpoints of NNX models: the parameters and a model card, written atomically, read checked.

A checkpoint is two files: ``<stem>.npz`` (the flattened ``nnx.state`` with '/'-joined path
keys) and ``<stem>.json`` (the model card, with the sha256 of the ``.npz``). :func:`load`
checks the card's sha256, the member names, shapes and dtype kinds (from the headers, before
any data is read, :func:`lrpjax.files.read_npz`) and finite values, and changes the model only
when everything fits.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lrpjax.files import (
    Member,
    NpzMismatchError,
    atomic_write_bytes,
    atomic_write_text,
    file_sha256,
    read_json_object,
    read_npz,
)

__all__ = ["flat_arrays", "load", "save"]


def flat_arrays(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's whole ``nnx.state`` as {'dense1/kernel': array, ...}."""
    flat = nnx.to_flat_state(nnx.state(model))
    return {"/".join(map(str, path)): np.asarray(var[...]) for path, var in flat}


def _stem(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".npz", ".json") else path


def save(path: str | os.PathLike, model: nnx.Module, card: dict[str, Any]) -> Path:
    """Write ``<path>.npz`` (parameters) and ``<path>.json`` (card), each atomically.

    Sets ``card["weights_sha256"]`` to the sha256 of the ``.npz`` bytes (checked by :func:`load`).
    """
    stem = _stem(path)
    buffer = io.BytesIO()
    np.savez(buffer, **flat_arrays(model))
    card["weights_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    atomic_write_bytes(stem.with_suffix(".npz"), buffer.getvalue())
    atomic_write_text(stem.with_suffix(".json"), json.dumps(card, indent=2, sort_keys=True) + "\n")
    return stem


def load(path: str | os.PathLike, model: nnx.Module) -> dict[str, Any]:
    """Fill the freshly built ``model`` from ``<path>.npz`` and return the card of ``<path>.json``.

    Arrays are cast to the model's dtypes (a float32 checkpoint loads into a float64 build).
    Raises ``ValueError`` naming the file and the problem: an unreadable card or archive, a
    ``.npz`` whose sha256 differs from the card's ``weights_sha256``, missing / unexpected keys,
    mismatched shapes or dtype kinds (checked from the headers, before any data is read) and
    non-finite values. The model is changed only when everything fits.
    """
    stem = _stem(path)
    npz_path, card_path = stem.with_suffix(".npz"), stem.with_suffix(".json")
    card = read_json_object(card_path) if card_path.exists() else {}
    recorded = card.get("weights_sha256")
    if recorded is not None and file_sha256(npz_path) != recorded:
        raise ValueError(f"checkpoint {npz_path}: sha256 differs from the card's weights_sha256 "
                         f"{recorded} (the weights changed after saving)")
    flat = nnx.to_flat_state(nnx.state(model))
    expected = {"/".join(map(str, p)): v for p, v in flat}
    specs = {k: Member(tuple(v[...].shape), np.dtype(v[...].dtype).kind)
             for k, v in expected.items()}
    try:
        stored = read_npz(npz_path, specs)
    except NpzMismatchError as err:
        raise ValueError(f"checkpoint {stem} does not fit {type(model).__name__}: "
                         + "; ".join(err.problems)) from None
    bad = [k for k, a in stored.items() if a.dtype.kind in "fc" and not np.isfinite(a).all()]
    if bad:
        raise ValueError(f"checkpoint {npz_path}: non-finite values in {', '.join(bad)}")
    for key, var in expected.items():
        var[...] = jnp.asarray(stored[key], dtype=var[...].dtype)
    return card
