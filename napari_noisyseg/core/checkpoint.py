"""Model checkpoints that load without executing code.

Format: one safetensors file. Tensors are named ``<model>/<parameter>``; the
header's string metadata carries the format name and version, the package
version, the method, each network's constructor spec, the training config and
a SHA-256 over every tensor's bytes so that a file edited after saving is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import __version__
from ..engine.unet import build_unet

FORMAT_NAME = "napari-noisyseg-checkpoint"
FORMAT_VERSION = 1
EXTENSION = ".safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: rebuilt networks (eval mode, on the CPU) and their metadata."""

    models: dict
    final_model: str
    method: str
    config: dict
    n_classes: int
    in_channels: int
    package_version: str
    extra: dict

    @property
    def model(self) -> torch.nn.Module:
        return self.models[self.final_model]


def _digest(tensors: dict) -> str:
    hasher = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        hasher.update(name.encode())
        hasher.update(str(tuple(tensor.shape)).encode())
        hasher.update(str(tensor.dtype).encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return hasher.hexdigest()


def save_checkpoint(
    path,
    models: dict,
    method: str,
    config: dict,
    n_classes: int,
    in_channels: int,
    final_model: str = "model",
    extra: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``models`` (name -> :class:`~napari_noisyseg.engine.unet.UNet`) atomically.

    Parameters
    ----------
    path : str or Path
        Target file; ``.safetensors`` is appended when missing.
    config : dict
        The training config (:meth:`TrainConfig.to_dict`), kept for reference.
    extra : dict, optional
        JSON-serialisable notes (e.g. normalisation settings).
    overwrite : bool
        Refuse to replace an existing file unless True.
    """
    path = Path(path)
    if not path.name.endswith(EXTENSION):
        path = path.with_name(path.name + EXTENSION)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if final_model not in models:
        raise ValueError(f"final_model {final_model!r} is not among the models {sorted(models)}")
    tensors = {}
    for name, model in models.items():
        for key, tensor in model.state_dict().items():
            tensors[f"{name}/{key}"] = tensor.detach().cpu().contiguous()
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "package_version": __version__,
        "method": method,
        "final_model": final_model,
        "specs": json.dumps({name: model.spec() for name, model in models.items()}),
        "config": json.dumps(config, default=str),
        "n_classes": str(int(n_classes)),
        "in_channels": str(int(in_channels)),
        "extra": json.dumps(extra or {}, default=str),
        "sha256": _digest(tensors),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; no code is executed.

    Raises
    ------
    CheckpointError
        Not a safetensors file, another format, a newer format version, missing
        or mismatched tensors, or contents that do not match the saved digest.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({error})") from error
    if metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a napari-noisyseg checkpoint (format {metadata.get('format')!r})")
    try:
        version = int(metadata["format_version"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{path}: checkpoint has no valid format version") from error
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} was written by napari-noisyseg "
            f"{metadata.get('package_version')}; this version ({__version__}) reads format {FORMAT_VERSION} at most"
        )
    if metadata.get("sha256") != _digest(tensors):
        raise CheckpointError(f"{path}: weights do not match the checksum saved with them (file modified or corrupt)")
    try:
        specs = json.loads(metadata["specs"])
        models = {}
        for name, spec in specs.items():
            model = build_unet(spec)
            prefix = f"{name}/"
            state = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
            model.load_state_dict(state, strict=True)
            models[name] = model.eval()
        return Checkpoint(
            models=models,
            final_model=metadata["final_model"],
            method=metadata.get("method", "unknown"),
            config=json.loads(metadata.get("config", "{}")),
            n_classes=int(metadata["n_classes"]),
            in_channels=int(metadata["in_channels"]),
            package_version=metadata.get("package_version", "unknown"),
            extra=json.loads(metadata.get("extra", "{}")),
        )
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(f"{path}: checkpoint does not fit its network description ({error})") from error


def save_result(path, result, overwrite: bool = False, extra: dict | None = None) -> Path:
    """Save the models of a :class:`~napari_noisyseg.methods.base.CurationResult`.

    ``extra["patch_size"]`` records the patch side training actually used (prediction
    pads small samples to it, as training did); ``extra["refit_state"]`` keeps
    ``result.history["refit_state"]``, what the method's retrain needs from the run (ADELE:
    the classes it corrected), so a loaded model retrains as the run it came from would.
    """
    extra = dict(extra or {})
    extra.setdefault("patch_size", result.history.get("patch_size", result.config.patch_size))
    if isinstance(result.history.get("refit_state"), dict):
        extra.setdefault("refit_state", result.history["refit_state"])
    return save_checkpoint(
        path, result.models, result.method, result.config.to_dict(), result.n_classes,
        result.in_channels, result.final_model, extra=extra, overwrite=overwrite,
    )


def training_patch_size(checkpoint) -> int:
    """The patch side a loaded checkpoint was trained on (0 when unknown)."""
    value = checkpoint.extra.get("patch_size", checkpoint.config.get("patch_size", 0))
    return int(value or 0)
