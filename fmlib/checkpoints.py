"""Checkpoints that describe themselves: a trained vector field saved with its constructor arguments, its dtype and
the conditional path it was trained with, and rebuilt from the file alone::

    fmlib.save_model(model, "moons.pt", path=fmlib.LinearPath(0.01))
    model, path = fmlib.load_model("moons.pt")

The file is a plain dict of strings, numbers and tensors, which ``torch.load(file, weights_only=True)`` reads (no
pickled code): ``{"format": "fmlib.model", "version": 1, "class": "MLPVectorField", "config": {...},
"state_dict": {...}, "path": {"class": "LinearPath", "sigma_min": 0.01} or None}``.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from ._checks import check_device
from .networks import MLPVectorField
from .paths import GaussianPath, LinearPath, VPDiffusionPath

__all__ = ["save_model", "load_model", "LoadedModel"]

FORMAT, VERSION = "fmlib.model", 1

_PATHS = {"LinearPath": (LinearPath, ("sigma_min",)), "VPDiffusionPath": (VPDiffusionPath, ("beta_min", "beta_max"))}


class LoadedModel(NamedTuple):
    """What :func:`load_model` returns: the rebuilt ``model`` (in eval mode) and the ``path`` it was trained with
    (a :class:`fmlib.GaussianPath`, or None if none was saved)."""

    model: MLPVectorField
    path: GaussianPath | None


def _check_file(file, *, writing: bool) -> str:
    if isinstance(file, bool) or not isinstance(file, (str, os.PathLike)) or str(file) in ("", "."):
        raise ValueError(f"file must be a non-empty str or path, got {file!r}")
    file = os.path.expanduser(os.fspath(file))
    if os.path.isdir(file):
        raise ValueError(f"file {file!r} is a directory; give the path of a file in it")
    if writing:
        folder = os.path.dirname(os.path.abspath(file))
        if not os.path.isdir(folder):
            raise ValueError(f"file {file!r}: its folder {folder!r} does not exist")
        if not os.access(folder, os.W_OK):
            raise ValueError(f"file {file!r}: its folder {folder!r} is not writable")
    return file


def _path_config(path) -> dict | None:
    if path is None:
        return None
    cls = type(path)
    if cls.__name__ not in _PATHS or cls is not _PATHS[cls.__name__][0]:
        raise ValueError(f"path must be an fmlib.LinearPath or fmlib.VPDiffusionPath (or None), got {path!r}")
    fields = _PATHS[cls.__name__][1]
    try:  # rebuilt now, so that a file that would not load is never written
        values = {k: float(getattr(path, k)) for k in fields}
        cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"path {path!r} has invalid parameters: {err}") from err
    return {"class": cls.__name__, **values}


def save_model(model: MLPVectorField, file, *, path: GaussianPath | None = None) -> None:
    """Save a vector field with everything needed to rebuild it: its constructor arguments (``model.config``), its
    weights in their dtype, and the conditional path it was trained with.

    Args:
        model: an :class:`fmlib.MLPVectorField` (on any device; the file keeps the tensors' device, and
            :func:`load_model` can map them elsewhere), or one compiled by ``torch.compile`` (its model is saved).
        file: where to write, a str or path (``~`` expanded; an existing file is replaced; its folder must exist).
        path: the conditional path of training, a :class:`fmlib.LinearPath` or :class:`fmlib.VPDiffusionPath`
            (its sigma_min or betas are stored), or None.

    Raises:
        ValueError: if model is not an MLPVectorField (subclasses neither: load_model could not rebuild them), path
            is not one of the two path classes or has invalid parameters, or file is not a writable file path.
    """
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper holds the model itself
    if type(model) is not MLPVectorField:
        raise ValueError(f"model must be an fmlib.MLPVectorField (for another module, save its state_dict), got "
                         f"{type(model).__name__}")
    path_config = _path_config(path)
    file = _check_file(file, writing=True)
    saved = {"format": FORMAT, "version": VERSION, "class": "MLPVectorField", "config": model.config,
             "state_dict": model.state_dict(), "path": path_config}
    try:
        torch.save(saved, file)
    except (OSError, RuntimeError) as err:
        raise ValueError(f"file {file!r} could not be written: {err}") from err


def load_model(file, *, map_location=None) -> LoadedModel:
    """Rebuild a vector field saved by :func:`save_model`, from the file alone.

    The file is read with ``torch.load(..., weights_only=True)``; the model is built with the saved constructor
    arguments, in the saved dtype, and gets the saved weights.

    Args:
        file: a file written by :func:`save_model` (str or path, ``~`` expanded).
        map_location: the device to put the model on ("cpu", "cuda", a ``torch.device``), or None: where it was
            saved (as ``torch.load``).

    Returns:
        :class:`LoadedModel` ``(model, path)``; the model is in eval mode.

    Raises:
        ValueError: if the file does not exist, cannot be read, is not an fmlib model file of this version, or its
            contents do not make a model (a damaged or edited file), or map_location is not a device of this machine.
    """
    file = _check_file(file, writing=False)
    if map_location is not None:
        map_location = check_device("map_location", map_location)
    if not os.path.isfile(file):
        raise ValueError(f"file {file!r} does not exist")
    try:
        saved = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"file {file!r} could not be read as a torch file with weights_only=True: {err}") from err
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ValueError(f"file {file!r} was not written by fmlib.save_model (for a bare state_dict, build the model "
                         f"and call model.load_state_dict(torch.load(file)))")
    if saved.get("version") != VERSION or saved.get("class") != "MLPVectorField":
        raise ValueError(f"file {file!r} holds a {saved.get('class')!r} in version {saved.get('version')!r} of "
                         f"fmlib's model format; this fmlib reads an 'MLPVectorField' in version {VERSION}")
    try:
        state = saved["state_dict"]
        tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
        if not tensors or not all(v.is_floating_point() for v in tensors):
            raise ValueError("its weights are missing or not floating point")
        model = MLPVectorField(**saved["config"]).to(device=tensors[0].device, dtype=tensors[0].dtype)
        model.load_state_dict(state)
        path = None
        if saved["path"] is not None:
            config = dict(saved["path"])
            cls, fields = _PATHS[config.pop("class")]
            path = cls(**{k: config[k] for k in fields})
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
        raise ValueError(f"file {file!r} does not hold a model that can be rebuilt (damaged or edited?): "
                         f"{type(err).__name__}: {err}") from err
    return LoadedModel(model.eval(), path)
