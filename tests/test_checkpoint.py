"""Safe checkpoints (core/checkpoint.py): round trip, refusals, no overwrite, no code run on load."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from napari_noisyseg import __version__
from napari_noisyseg.core import checkpoint as ckpt
from napari_noisyseg.core.checkpoint import (
    FORMAT_NAME,
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    save_result,
    training_patch_size,
)
from napari_noisyseg.core.dataset import build_dataset
from napari_noisyseg.engine.unet import UNet
from napari_noisyseg.methods import TrainConfig, baseline


def _models() -> dict:
    """Two small networks with non-trivial weights *and* batch-norm buffers."""
    torch.manual_seed(0)
    models = {
        "f": UNet(in_channels=1, n_classes=3, width=4, depth=2),
        "g": UNet(in_channels=1, n_classes=3, width=4, depth=2, up_mode="bilinear", dropout=0.1),
    }
    x = torch.randn(4, 1, 16, 16) * 3 + 1
    for model in models.values():
        model.train()
        with torch.no_grad():
            model(x)  # moves the running statistics away from their defaults
        model.eval()
    return models


def _save(path, models=None, **changes):
    models = models or _models()
    settings = dict(method="coseg", config={"epochs": 3, "seed": 1}, n_classes=3, in_channels=1,
                    final_model="g", extra={"mode": "2d", "names": ["a"]})
    settings.update(changes)
    return save_checkpoint(path, models, **settings), models


def _read_raw(path):
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())


def test_round_trip_same_predictions(tmp_path):
    path, models = _save(tmp_path / "run" / "model")  # folder created, extension added
    assert path == tmp_path / "run" / "model.safetensors" and path.is_file()
    loaded = load_checkpoint(path)
    assert set(loaded.models) == {"f", "g"} and loaded.final_model == "g"
    assert loaded.model is loaded.models["g"]
    assert loaded.method == "coseg" and loaded.n_classes == 3 and loaded.in_channels == 1
    assert loaded.config == {"epochs": 3, "seed": 1}
    assert loaded.extra == {"mode": "2d", "names": ["a"]}
    assert loaded.package_version == __version__
    x = torch.randn(2, 1, 24, 32)
    for name, model in models.items():
        rebuilt = loaded.models[name]
        assert not rebuilt.training and rebuilt.spec() == model.spec()
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


def test_save_result_keeps_the_training_config(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.zeros((32, 32), np.int32)
    labels[8:20, 10:26] = 1
    image = labels * 2.0 + rng.normal(0, 0.3, labels.shape)
    dataset = build_dataset([image], [labels])
    config = TrainConfig(epochs=1, patch_size=32, batch_size=2, width=4, depth=2, seed=5)
    result = baseline.fit(dataset, config)
    path = save_result(tmp_path / "model.safetensors", result, extra={"mode": "auto"})
    loaded = load_checkpoint(path)
    assert loaded.config == config.to_dict() and loaded.method == "baseline"
    # The patch side training used is recorded: prediction pads small samples to it.
    assert loaded.final_model == "model" and loaded.extra == {"mode": "auto", "patch_size": 32}
    assert training_patch_size(loaded) == 32
    x = torch.from_numpy(dataset.samples[0].image[None])
    model = result.models["model"].float().eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x.contiguous(memory_format=torch.channels_last)))


def test_file_is_plain_safetensors_header_then_json(tmp_path):
    path, _ = _save(tmp_path / "m.safetensors")
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert 8 + length < len(raw)
    header = json.loads(raw[8 : 8 + length].decode("utf-8"))
    metadata = header["__metadata__"]
    assert metadata["format"] == FORMAT_NAME and metadata["format_version"] == str(FORMAT_VERSION)
    assert json.loads(metadata["specs"])["g"]["up_mode"] == "bilinear"
    assert len(metadata["sha256"]) == 64
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert tensors and all(k.startswith(("f/", "g/")) for k in tensors)
    assert all(set(v) == {"dtype", "shape", "data_offsets"} for v in tensors.values())


def test_loading_executes_no_code(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"state": Payload()}))
    with pytest.raises(CheckpointError, match="evil.safetensors: not a readable safetensors"):
        load_checkpoint(evil)
    assert not marker.exists()
    legacy = tmp_path / "legacy.safetensors"
    torch.save({"w": torch.ones(2)}, legacy)  # a torch pickle under our extension
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(legacy)


def test_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="nope.safetensors: no such checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors")
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.safetensors: not a readable"):
        load_checkpoint(text)
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.ones(3, 3)}, str(other))
    with pytest.raises(CheckpointError, match="other.safetensors: not a napari-noisyseg checkpoint"):
        load_checkpoint(other)
    tagged = tmp_path / "tagged.safetensors"
    save_file({"weight": torch.ones(3)}, str(tagged), metadata={"format": "somebody-else"})
    with pytest.raises(CheckpointError, match="format 'somebody-else'"):
        load_checkpoint(tagged)


def test_refuses_a_newer_format_version(tmp_path):
    path, _ = _save(tmp_path / "m.safetensors")
    tensors, metadata = _read_raw(path)
    newer = tmp_path / "newer.safetensors"
    save_file(tensors, str(newer), metadata={**metadata, "format_version": str(FORMAT_VERSION + 1)})
    with pytest.raises(CheckpointError, match=rf"newer.safetensors: checkpoint format {FORMAT_VERSION + 1}.*"
                       rf"reads format {FORMAT_VERSION} at most"):
        load_checkpoint(newer)
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata={**metadata, "format_version": "one"})
    with pytest.raises(CheckpointError, match="no valid format version"):
        load_checkpoint(broken)


def test_refuses_a_tampered_weight(tmp_path):
    path, _ = _save(tmp_path / "m.safetensors")
    raw = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    start, stop = header["g/head.weight"]["data_offsets"]
    raw[8 + length + start + 1] ^= 0x40  # one bit of one float of the final model's head
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="edited.safetensors: weights do not match the checksum"):
        load_checkpoint(edited)
    # The same through the library: one tensor changed, the old metadata kept.
    tensors, metadata = _read_raw(path)
    tensors["f/encoders.0.0.weight"] = tensors["f/encoders.0.0.weight"] * 1.001
    rewritten = tmp_path / "rewritten.safetensors"
    save_file(tensors, str(rewritten), metadata=metadata)
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_checkpoint(rewritten)


def test_refuses_missing_tensors_even_with_a_matching_checksum(tmp_path):
    path, _ = _save(tmp_path / "m.safetensors")
    tensors, metadata = _read_raw(path)
    del tensors["g/head.bias"]
    partial = tmp_path / "partial.safetensors"
    save_file(tensors, str(partial), metadata={**metadata, "sha256": ckpt._digest(tensors)})
    with pytest.raises(CheckpointError, match=r"(?s)partial.safetensors: checkpoint does not fit.*Missing key.*head.bias"):
        load_checkpoint(partial)
    # A spec that does not match the weights is refused the same way.
    specs = json.loads(metadata["specs"])
    specs["f"]["width"] = 8
    wrong = tmp_path / "wrong.safetensors"
    tensors, _ = _read_raw(path)
    save_file(tensors, str(wrong), metadata={**metadata, "specs": json.dumps(specs)})
    with pytest.raises(CheckpointError, match="does not fit its network description"):
        load_checkpoint(wrong)


def test_never_overwrites_without_permission(tmp_path):
    path, models = _save(tmp_path / "m.safetensors")
    before = path.read_bytes()
    changed = _models()
    with torch.no_grad():
        changed["g"].head.bias.add_(1.0)
    with pytest.raises(FileExistsError, match="m.safetensors exists; pass overwrite=True"):
        _save(tmp_path / "m", models=changed)
    assert path.read_bytes() == before
    _save(tmp_path / "m", models=changed, overwrite=True)
    loaded = load_checkpoint(path)
    torch.testing.assert_close(loaded.models["g"].head.bias, changed["g"].head.bias)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temp files left
    with pytest.raises(ValueError, match="final_model 'h'"):
        _save(tmp_path / "n", final_model="h")
    assert not (tmp_path / "n.safetensors").exists()
