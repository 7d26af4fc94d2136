"""Checkpoints that ``torch.load(weights_only=True)`` can read: tensors and plain values,
written atomically (temporary file, then rename)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.outputs import atomic_path


def save_checkpoint(state: dict, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place (a failed
    write, e.g. no space left on device, is a CloudpipeError and leaves ``path`` untouched)."""
    # Through a Python file object, so that a failed write is an OSError, which atomic_path
    # reports; torch's zip writer may then fail closing and hide it in a RuntimeError.
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        try:
            torch.save(state, file)
        except RuntimeError as err:
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise


KINDS: dict[str, tuple[type, ...]] = {
    "model": (dict,), "config": (dict,), "classes": (list,), "optimizer": (dict,), "scheduler": (dict,),
    "scaler": (dict,), "rng": (dict,), "epoch": (int,), "best_score": (int, float), "best_epoch": (int,),
    "history": (list,), "trained": (dict,), "average": (dict,),
}
"""What each key of a checkpoint holds (``model``, ``trained``: tensors by name)."""
WEIGHTS = ("model", "trained")


def load_checkpoint(path: Path, needs: tuple[str, ...] = ()) -> dict:
    """Load a cloudpipe checkpoint safely: ``model``, ``config``, ``classes`` and the keys in
    ``needs`` present, each holding the kind of value :data:`KINDS` says; anything else (a
    missing or unreadable file included) is a CloudpipeError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CloudpipeError("checkpoint not found", path=path)
    try:
        with warnings.catch_warnings():  # a refused pickle is said in one line, not with torch's warning too
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt files raise many types
        raise CloudpipeError(f"cannot read checkpoint ({type(err).__name__})", path=path) from None
    if not isinstance(state, dict) or not {"model", "config", "classes"} <= set(state):
        raise CloudpipeError("not a cloudpipe checkpoint (no model/config/classes)", path=path)
    missing = [key for key in needs if key not in state]
    if missing:
        raise CloudpipeError(f"checkpoint has no {', '.join(missing)}", path=path)
    for key in ("model", "config", "classes", *needs):
        value, kinds = state[key], KINDS.get(key, (object,))
        wrong = not isinstance(value, kinds) or isinstance(value, bool)
        if key in WEIGHTS and not wrong:
            wrong = not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
        if key == "classes" and not wrong:
            wrong = not all(isinstance(c, str) for c in value)
        if wrong:
            what = ("tensors by name" if key in WEIGHTS else "a list of class names" if key == "classes"
                    else " or ".join(k.__name__ for k in kinds))
            raise CloudpipeError(f"checkpoint's {key} is not {what} ({type(value).__name__})", path=path)
    return state
