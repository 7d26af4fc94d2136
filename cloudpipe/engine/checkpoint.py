"""Checkpoints that ``torch.load(weights_only=True)`` can read: tensors and plain values,
written atomically (temporary file, then rename)."""

from __future__ import annotations

from pathlib import Path

import torch

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.outputs import atomic_path


def save_checkpoint(state: dict, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place.

    Raises:
        CloudpipeError: the write failed (e.g. no space left on device); ``path`` is untouched.
    """
    # Through a Python file object, so that a failed write is an OSError, which atomic_path
    # reports; torch's zip writer may then fail closing and hide it in a RuntimeError.
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        try:
            torch.save(state, file)
        except RuntimeError as err:
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise


def load_checkpoint(path: Path) -> dict:
    """Load a cloudpipe checkpoint safely.

    Raises:
        CloudpipeError: missing, unreadable, or not a cloudpipe checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CloudpipeError("checkpoint not found", path=path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt files raise many types
        raise CloudpipeError(f"cannot read checkpoint ({type(err).__name__})", path=path) from None
    if not isinstance(state, dict) or not {"model", "config", "classes"} <= set(state):
        raise CloudpipeError("not a cloudpipe checkpoint (no model/config/classes)", path=path)
    return state
