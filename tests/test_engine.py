"""The training engine: U-Net, device and numeric path, inference, the training loop.

Real torch, real data (crops of the repository's BBBC039 sample), no mocks.
"""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_noisyseg.core import io
from napari_noisyseg.core.dataset import build_dataset
from napari_noisyseg.core.metrics import dice_per_class
from napari_noisyseg.engine.device import (
    available_devices,
    cpu_supports_bf16,
    numeric_path,
    resolve_device,
)
from napari_noisyseg.engine.events import (
    EpochEvent,
    EventLog,
    PreviewEvent,
    Progress,
    StateEvent,
    StepEvent,
    as_progress,
)
from napari_noisyseg.engine.infer import predict_many, predict_probabilities
from napari_noisyseg.engine.train import PREDICTION_RESERVE, TrainingRun
from napari_noisyseg.engine.unet import UNet, build_unet, set_dropout
from napari_noisyseg.methods import TrainConfig, baseline

BBBC = Path(__file__).resolve().parents[1] / "sample_data" / "bbbc039"
CPU = torch.device("cpu")
FP32 = numeric_path(CPU, "fp32")
BF16 = numeric_path(CPU, "bf16")


@functools.lru_cache(maxsize=None)
def bbbc_crops(size: int = 128) -> tuple:
    """(images, clean labels, names, full first image) of the BBBC039 samples that contain nuclei."""
    images, labels, names, full = [], [], [], None
    for image_path in io.list_files(BBBC / "images"):
        stem = io.split_stem(image_path)[0]
        label, _ = io.read_labels(BBBC / "labels_clean" / f"{stem}.png")
        if not label.any():
            continue
        image, _ = io.read_image(image_path)
        full = image if full is None else full
        images.append(image[100 : 100 + size, 100 : 100 + size])
        labels.append(label[100 : 100 + size, 100 : 100 + size])
        names.append(stem)
    assert len(images) >= 3, f"expected BBBC039 sample data under {BBBC}"
    return tuple(images[:3]), tuple(labels[:3]), tuple(names[:3]), full


def small_config(**changes) -> TrainConfig:
    settings = dict(epochs=2, patch_size=64, batch_size=4, width=8, depth=2, seed=0, device="cpu")
    settings.update(changes)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def dataset():
    images, labels, names, _ = bbbc_crops()
    return build_dataset(list(images), list(labels), list(names))


@pytest.fixture(scope="module")
def trained(dataset):
    """One baseline run (fp32, 12 epochs, previews every 5 steps) shared by several tests."""
    log = EventLog()
    config = small_config(epochs=12, precision="fp32", preview_every=5, preview_samples=(0, 2))
    result = baseline.fit(dataset, config, log)
    return result, log


# ----------------------------------------------------------------------------- U-Net


@pytest.mark.parametrize("up_mode", ["transpose", "bilinear"])
def test_unet_2d_shapes(up_mode):
    torch.manual_seed(0)
    model = UNet(in_channels=3, n_classes=4, width=8, depth=3, ndim=2, up_mode=up_mode, dropout=0.2)
    x = torch.randn(2, 3, 32, 48)
    logits, features = model.forward_features(x)
    assert logits.shape == (2, 4, 32, 48)
    assert features.shape == (2, 8, 32, 48)
    model.eval()
    torch.testing.assert_close(model(x), model.forward_features(x)[0])
    assert any(isinstance(m, torch.nn.Dropout2d) for m in model.modules())
    assert model.spec() == dict(in_channels=3, n_classes=4, width=8, depth=3, ndim=2, dropout=0.2, up_mode=up_mode)


@pytest.mark.parametrize("up_mode", ["transpose", "bilinear"])
def test_unet_3d_shapes(up_mode):
    torch.manual_seed(0)
    model = UNet(in_channels=1, n_classes=3, width=4, depth=2, ndim=3, up_mode=up_mode).eval()
    logits, features = model.forward_features(torch.randn(1, 1, 8, 16, 12))
    assert logits.shape == (1, 3, 8, 16, 12)
    assert features.shape == (1, 4, 8, 16, 12)
    assert any(isinstance(m, torch.nn.Conv3d) for m in model.modules())


def test_unet_spec_rebuilds_the_same_network_and_refuses_bad_settings():
    torch.manual_seed(1)
    model = UNet(in_channels=1, n_classes=2, width=8, depth=2, up_mode="bilinear").eval()
    copy = build_unet(model.spec()).eval()
    copy.load_state_dict(model.state_dict())
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(copy(x), model(x))
    with pytest.raises(ValueError, match="Unknown U-Net settings"):
        build_unet({**model.spec(), "heads": 2})
    with pytest.raises(ValueError, match="ndim"):
        UNet(ndim=4)
    with pytest.raises(ValueError, match="up_mode"):
        UNet(up_mode="nearest")


def test_set_dropout_switches_only_the_dropout_layers():
    torch.manual_seed(2)
    model = UNet(in_channels=1, n_classes=2, width=8, depth=2, dropout=0.5).train()
    x = torch.randn(2, 1, 16, 16)
    set_dropout(model, False)
    assert model.training and all(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    torch.testing.assert_close(model(x), model(x))  # batch statistics, no dropout: the same output twice
    set_dropout(model, True)
    assert not torch.allclose(model(x), model(x))  # channel dropout samples differ
    model.eval()
    set_dropout(model, True)  # Monte-Carlo sampling of a model in eval mode
    assert not torch.allclose(model(x), model(x))


# ----------------------------------------------------------------------------- device and numeric path


def test_resolve_device_on_this_machine():
    devices = available_devices()
    assert devices[-1] == "cpu"
    device, note = resolve_device("cpu")
    assert device.type == "cpu" and note is None
    device, note = resolve_device("auto")
    assert device.type == devices[0]
    if devices[0] == "cpu":
        assert "CPU" in note
    with pytest.raises(ValueError, match="Unknown device 'tpu'.*cpu"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the fallback on machines without CUDA")
@pytest.mark.parametrize("requested", ["cuda", "CUDA:1"])
def test_resolve_device_falls_back_to_cpu_with_a_note(requested):
    device, note = resolve_device(requested)
    assert device.type == "cpu"
    assert requested.lower() in note and "CPU" in note


def test_numeric_path_choice():
    fp32 = numeric_path(CPU, "fp32")
    assert fp32.autocast_dtype is None and not fp32.channels_last and fp32.name == "cpu-fp32"
    assert fp32.memory_format(4) == torch.contiguous_format
    bf16 = numeric_path(CPU, "BF16")
    assert bf16.autocast_dtype == torch.bfloat16 and bf16.channels_last and not bf16.grad_scaler
    assert bf16.name == "cpu-bf16"
    assert bf16.memory_format(4) == torch.channels_last and bf16.memory_format(5) == torch.channels_last_3d
    auto = numeric_path(CPU, "auto")
    assert auto.autocast_dtype == (torch.bfloat16 if cpu_supports_bf16() else None)
    cuda = numeric_path(torch.device("cuda"), "auto")  # the policy only; nothing runs on it
    assert cuda.autocast_dtype == torch.float16 and cuda.grad_scaler and cuda.name == "cuda-fp16"
    assert numeric_path(torch.device("cuda"), "bf16").grad_scaler is False
    assert numeric_path(torch.device("mps"), "auto").autocast_dtype is None
    with pytest.raises(ValueError, match="Unknown precision"):
        numeric_path(CPU, "int8")
    conv = torch.nn.Conv2d(1, 2, 3)
    x = torch.randn(1, 1, 8, 8)
    with bf16.autocast():
        assert conv(x).dtype == torch.bfloat16
    with fp32.autocast():
        assert conv(x).dtype == torch.float32


def test_bf16_and_fp32_paths_agree(trained, dataset):
    result, _ = trained
    model = result.models["model"]
    images = [s.image for s in dataset.samples]
    p32 = predict_many(model, images, FP32, multiple=4)
    p16 = predict_many(model, images, BF16, multiple=4)
    for a, b in zip(p32, p16):
        assert np.abs(a - b).max() < 0.05
        assert (a.argmax(0) == b.argmax(0)).mean() > 0.99


# ----------------------------------------------------------------------------- inference


def test_sliding_window_matches_a_single_pass(trained):
    result, _ = trained
    model = result.models["model"]
    _, _, _, full = bbbc_crops()
    image = build_dataset([full[:200, :232]], [np.zeros((200, 232), int)]).samples[0].image
    single = predict_probabilities(model, image, FP32, tile=512, multiple=4)
    tiled = predict_probabilities(model, image, FP32, tile=64, multiple=4)  # 5 x 5 overlapping tiles
    assert single.shape == tiled.shape == (2, 200, 232) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)
    difference = np.abs(single - tiled)
    assert difference.mean() < 0.01 and difference.max() < 0.15
    assert (single.argmax(0) == tiled.argmax(0)).mean() > 0.99
    # Odd sizes are padded to the network's multiple and cropped back.
    odd = predict_probabilities(model, image[:, :61, :75], FP32, tile=64, multiple=4)
    assert odd.shape == (2, 61, 75)


def test_predict_many_groups_shapes_and_keeps_order():
    torch.manual_seed(2)
    model = UNet(in_channels=1, n_classes=3, width=4, depth=2).eval()
    rng = np.random.default_rng(0)
    shapes = [(40, 48), (24, 32), (40, 48), (100, 50), (24, 32), (40, 48)]
    images = [rng.random((1, *shape)).astype(np.float32) for shape in shapes]
    together = predict_many(model, images, FP32, tile=64, multiple=4, batch_size=2)
    assert [p.shape for p in together] == [(3, *shape) for shape in shapes]
    for image, probabilities in zip(images, together):
        alone = predict_probabilities(model, image, FP32, tile=64, multiple=4)
        np.testing.assert_allclose(probabilities, alone, atol=1e-5)
    # Two models: the ensemble is the mean of their softmaxes.
    other = UNet(in_channels=1, n_classes=3, width=4, depth=2).eval()
    mean = predict_many([model, other], images[:2], FP32, tile=64, multiple=4)
    single_other = predict_many(other, images[:2], FP32, tile=64, multiple=4)
    np.testing.assert_allclose(mean[0], (together[0] + single_other[0]) / 2, atol=1e-5)


def test_small_samples_are_centred_in_zeros_like_training_patches():
    """A sample smaller than the training patch is predicted in the context training
    gave it: centred in zeros up to the patch side (not edge-padded at one corner)."""
    torch.manual_seed(4)
    model = UNet(in_channels=1, n_classes=2, width=4, depth=2).eval()
    image = np.random.default_rng(1).random((1, 30, 42)).astype(np.float32) + 1.0
    (result,) = predict_many(model, [image], FP32, tile=512, multiple=4, min_size=64)
    canvas = np.zeros((1, 1, 64, 64), np.float32)
    canvas[0, :, 17:47, 11:53] = image
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(canvas)), dim=1)[0, :, 17:47, 11:53].numpy()
    np.testing.assert_allclose(result, expected, atol=1e-5)


def test_prediction_keeps_the_training_mode():
    """Predicting mid-training (previews) must not switch the network to eval mode."""
    torch.manual_seed(3)
    model = UNet(in_channels=1, n_classes=2, width=4, depth=2, dropout=0.3).train()
    predict_many(model, [np.zeros((1, 16, 16), np.float32)], FP32, multiple=4, mc_dropout=2)
    assert all(module.training for module in model.modules())
    model.eval()
    predict_many(model, [np.zeros((1, 16, 16), np.float32)], FP32, multiple=4, mc_dropout=2)
    assert not any(module.training for module in model.modules())


# ----------------------------------------------------------------------------- training loop


def test_baseline_learns_on_a_real_crop(trained, dataset):
    result, _ = trained
    losses = result.history["loss"]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.85 * losses[0]
    assert result.history["iou"][-1][1] > 0.6  # foreground IoU against the training labels
    for sample, corrected, probabilities, noise in zip(
        dataset.samples, result.corrected, result.probabilities, result.noise
    ):
        assert probabilities.shape == (2, 128, 128) and noise.shape == corrected.shape == (128, 128)
        np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-4)
        assert dice_per_class(corrected, sample.labels, 2)[1] > 0.75
        assert 0.0 <= noise.min() and noise.max() <= 1.0
    assert result.stopped is False and result.history["stopped"] is False
    assert result.history["steps"] == 12 * 3 and result.history["device"] == "cpu-fp32"
    assert result.sample_reliability.shape == (3,)
    assert np.all((result.sample_reliability > 0.5) & (result.sample_reliability <= 1.0))


def test_events_are_typed_and_ordered(trained, dataset):
    result, log = trained
    events = log.events
    assert isinstance(events[0], StateEvent) and events[0].state == "starting"
    device, precision = result.history["device"].split("-")  # where it trains, and in which precision
    assert events[0].message in (f"No GPU found: training on the CPU in {precision}.",
                                 f"Training on {device}-{precision}.")
    epochs = log.of(EpochEvent)
    assert [e.epoch for e in epochs] == list(range(12))
    assert all(e.total_epochs == 12 and "loss" in e.losses for e in epochs)
    assert all(len(e.metrics["iou"]) == 2 for e in epochs)
    elapsed = [e.elapsed_s for e in epochs]
    assert elapsed == sorted(elapsed)
    steps = log.of(StepEvent)
    assert [s.step for s in steps] == list(range(1, 37))
    # Each epoch's event comes after that epoch's 3 steps and before the next epoch's.
    position = {id(e): i for i, e in enumerate(events)}
    for epoch_event in epochs:
        mine = [s for s in steps if s.epoch == epoch_event.epoch]
        assert len(mine) == 3
        assert max(position[id(s)] for s in mine) < position[id(epoch_event)]
    previews = log.of(PreviewEvent)
    assert [p.step for p in previews] == [5, 10, 15, 20, 25, 30, 35]
    for preview in previews:
        assert preview.sample_indices == [0, 2]
        for index, noise, corrected in zip(preview.sample_indices, preview.noise, preview.corrected):
            shape = dataset.samples[index].shape
            assert noise.shape == corrected.shape == shape
            assert noise.dtype == np.float32 and 0 <= noise.min() and noise.max() <= 1
            assert np.issubdtype(corrected.dtype, np.integer)
    # Training over, the closing predictions are announced after the last epoch, and last.
    finishing = events[-1]
    assert isinstance(finishing, StateEvent) and finishing.state == "finishing"
    assert finishing.message.startswith("Training done (36 steps") and position[id(epochs[-1])] < len(events) - 1
    assert result.history["epoch"] == list(range(12))


def test_previews_do_not_change_training(dataset):
    plain = baseline.fit(dataset, small_config(epochs=2, precision="fp32"))
    previewed = baseline.fit(dataset, small_config(epochs=2, precision="fp32", preview_every=1))
    assert plain.history["loss"] == previewed.history["loss"]
    np.testing.assert_array_equal(plain.probabilities[1], previewed.probabilities[1])


def test_stop_request_ends_within_one_step(dataset):
    progress = Progress()
    seen = []

    def listen(event):
        seen.append(event)
        if isinstance(event, StepEvent) and event.step == 4:
            progress.request_stop()

    progress.callback = listen
    result = baseline.fit(dataset, small_config(epochs=50), progress)
    steps = [e for e in seen if isinstance(e, StepEvent)]
    assert len(steps) == 4  # the stop flag is checked before every step
    assert result.stopped is True and result.history["stopped"] is True
    assert [e.state for e in seen if isinstance(e, StateEvent)] == ["starting", "stopping", "finishing"]
    assert len(result.history["epoch"]) == 2  # epoch 0 (3 steps) and the interrupted epoch 1
    assert len(result.probabilities) == len(result.noise) == len(result.corrected) == 3
    for sample, probabilities, noise, corrected in zip(
        dataset.samples, result.probabilities, result.noise, result.corrected
    ):
        assert probabilities.shape == (2, *sample.shape) and np.isfinite(probabilities).all()
        assert noise.shape == corrected.shape == sample.shape
    assert result.models["model"] is not None


def test_stop_from_another_thread_before_training(dataset):
    stop = threading.Event()
    stop.set()
    log = EventLog()
    result = baseline.fit(dataset, small_config(epochs=5), Progress(log, stop))
    assert result.stopped and result.history["steps"] == 0 and not log.of(StepEvent)
    assert [p.shape for p in result.probabilities] == [(2, 128, 128)] * 3


def test_time_budget_stops_on_time(dataset):
    """``minutes=0.1``: no step starts after the budget (less the 15 % kept for predictions).

    Asserted from event times rather than a fixed wall-clock bound, so that a loaded
    machine (slow steps) cannot make it flaky. The first step is held up by 1.5 s, as
    one-off costs (kernel warm-up) hold up a real first epoch: the epoch plan must
    not stay the one the first epoch's speed made, which would end training at
    about a third of the budget.
    """
    times, epochs = [], []

    def listen(event):
        if isinstance(event, StepEvent):
            times.append(time.perf_counter())
            if len(times) == 1:
                time.sleep(1.5)
        elif isinstance(event, EpochEvent):
            epochs.append(event)

    baseline.fit(dataset, small_config(epochs=1))  # warm up the kernels: the first step is slow
    start = time.perf_counter()
    result = baseline.fit(dataset, small_config(epochs=None, minutes=0.1), listen)
    wall = time.perf_counter() - start
    training_budget = 0.1 * 60 * (1 - PREDICTION_RESERVE)  # 5.1 s
    assert times and result.history["steps"] == len(times)
    # Every step began (right after the previous step's event) before the budget ran out ...
    assert all(t - start <= training_budget for t in times[:-1])
    # ... and training went on until the time was up: either a step was cut by the budget,
    # or the re-estimated plan ended with less than one epoch's time left.
    longest_step = max(np.diff([start] + times))
    assert len(epochs) >= 2
    longest_epoch = max(np.diff([e.elapsed_s for e in epochs]))  # after the held-up first
    assert (training_budget - epochs[-1].elapsed_s <= longest_epoch + 0.5
            or times[-1] - start >= training_budget - longest_step - 0.5)
    assert result.stopped is False  # running out of time is not a user stop
    assert wall < 60.0  # a hang would be caught
    assert [p.shape for p in result.probabilities] == [(2, 128, 128)] * 3


def test_seeded_runs_are_deterministic(dataset):
    first = baseline.fit(dataset, small_config(seed=3))
    again = baseline.fit(dataset, small_config(seed=3))
    other = baseline.fit(dataset, small_config(seed=4))
    for a, b in zip(first.probabilities, again.probabilities):
        np.testing.assert_array_equal(a, b)
    assert first.history["loss"] == again.history["loss"]
    assert any(np.abs(a - c).max() > 1e-3 for a, c in zip(first.probabilities, other.probabilities))


def test_training_run_budget_helpers(dataset):
    log = EventLog()
    run = TrainingRun(dataset, small_config(epochs=3), log)
    assert run.patch_size == 64 and run.planned_epochs() == 3
    assert list(run.epochs()) == [0, 1, 2]
    batch = next(iter(run.batches(extras={"double": ([2 * s.labels for s in dataset.samples], 0)})))
    assert batch.image.shape == (4, 1, 64, 64) and batch.labels.dtype == torch.int64
    assert torch.equal(batch.extras["double"], 2 * batch.labels)
    assert batch.weights.shape == (4, 64, 64) and batch.trust.dtype == torch.bool
    with pytest.raises(ValueError, match="no training budget"):
        TrainingRun(dataset, small_config(epochs=None, minutes=None))
    timed = TrainingRun(dataset, small_config(epochs=None, minutes=1.0))
    assert timed.total_epochs is None and timed.planned_epochs(default=7) == 7
    assert as_progress(log).callback is log and as_progress(None).callback is None
    with pytest.raises(TypeError):
        as_progress(42)


def test_closing_reserve_grows_to_what_a_timed_prediction_needs(dataset):
    """A time budget keeps 15 % for the closing predictions until a prediction over most of
    the samples is timed; then ``closing_passes`` such passes (or the method's own timing
    of its closing work) plus a tenth, never more than half of the budget."""
    from napari_noisyseg.engine.train import MAX_PREDICTION_RESERVE

    assert TrainingRun(dataset, small_config(epochs=3)).closing_reserve() == 0.0  # an epoch budget keeps none
    run = TrainingRun(dataset, small_config(epochs=None, minutes=1.0))
    least = PREDICTION_RESERVE * 60.0
    assert run.closing_reserve() == pytest.approx(least)
    run.closing_passes = 8
    run.note_prediction(5.0, [0])  # one crop of three: a preview, dominated by fixed costs
    assert run.closing_reserve() == pytest.approx(least)
    run.note_prediction(3.0, [0, 1, 2], passes=2)  # 1.5 s a pass: 8 passes need 12 s, plus a tenth
    assert run.closing_reserve() == pytest.approx(1.1 * 8 * 1.5)
    run.note_closing(20.0)  # the method timed its closing work (a refresh the end repeats)
    assert run.closing_reserve() == pytest.approx(22.0)
    run.note_closing(100.0)
    assert run.closing_reserve() == pytest.approx(MAX_PREDICTION_RESERVE * 60.0)
    run.closing_passes, run._closing_seconds = 1, 0.0
    assert run.closing_reserve() == pytest.approx(least)  # one 1.5-s pass fits in the 15 %
    model, _ = run.new_model()
    run.predict(model, flip_tta=True)  # a real prediction is timed too (three 128-pixel crops: milliseconds)
    assert run._seconds_per_pass is not None and run._seconds_per_pass < 1.5


@pytest.mark.parametrize("method", ["coseg", "confident", "adele", "clcs", "distill", "cleansing"])
def test_every_method_announces_its_closing_predictions_once(dataset, method):
    """After its last training step each method says training is done before the closing
    predictions (silent otherwise: Distill's Monte-Carlo maps, every slice of a volume)."""
    from napari_noisyseg.methods import get_method

    log = EventLog()
    get_method(method).fit(dataset, small_config(method=method, epochs=2), log)
    finishing = [i for i, e in enumerate(log.events) if isinstance(e, StateEvent) and e.state == "finishing"]
    last_step = max(i for i, e in enumerate(log.events) if isinstance(e, StepEvent))
    assert len(finishing) == 1 and finishing[0] > last_step


@pytest.mark.parametrize("method", ["coseg", "confident", "adele", "clcs", "distill", "cleansing"])
@pytest.mark.parametrize("stopped", [False, True])
def test_every_method_plans_the_closing_passes_it_makes(dataset, method, stopped):
    """``closing_passes``, which sizes a time budget's reserve, is the number of passes over
    every sample that the method's closing really predicts: after a full run and after a
    stop at step 4 (Co-Seg then still has two networks; confident learning's last folds)."""
    from helpers import stop_at

    from napari_noisyseg.methods import get_method

    progress = stop_at(lambda event: event.step >= 4) if stopped else EventLog()
    result = get_method(method).fit(dataset, small_config(method=method, epochs=10 if stopped else 2), progress)
    passes = result.history["closing_passes"]
    assert result.history["closing_s"] >= 0.0
    if method == "distill" and not stopped:
        # Its eight Monte-Carlo passes say how far the closing is, after each but the last.
        said = [e.message for e in progress.of(StateEvent) if e.state == "predicting"]
        assert [m.split(" passes")[0].split(": ")[1] for m in said] == [f"{k} of 8" for k in range(1, 8)]
    if method == "confident" and not stopped:
        # Its out-of-fold maps are made while it trains; the closing predicts nothing more.
        assert passes == {"planned": 1.0, "done": 0.0}
    else:
        assert passes["done"] == pytest.approx(passes["planned"])


def test_cosine_schedule_decays_each_phase_to_zero(dataset):
    """lr_schedule="cosine": the rate follows a half cosine over each optimiser's phase
    (the run by default), step by step; "constant" never touches it."""
    run = TrainingRun(dataset, small_config(epochs=4, lr_schedule="cosine"))
    per_epoch = run.steps_per_epoch
    assert per_epoch == 3 * 4 // 4  # three 128² crops, four 64² patches each, batches of four
    whole, _ = run.new_model()
    stage, _ = run.new_model(seed_offset=1)
    run.lr_phase(stage, start_epoch=2, n_epochs=2)
    assert run.lr_factor(whole, 0) == 1.0 and run.lr_factor(whole, 2) == pytest.approx(0.5)
    assert run.lr_factor(stage, 2) == 1.0 and run.lr_factor(stage, 3) == pytest.approx(0.5)
    assert run.lr_factor(stage, 1) == 1.0  # before its phase: not started
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainingRun(dataset, small_config(lr_schedule="step"))
    constant = TrainingRun(dataset, small_config(epochs=4))
    assert constant.lr_factor(whole, 3) == 1.0

    # A real run: the rate falls within and across epochs and ends near zero.
    result = baseline.fit(dataset, small_config(epochs=4, lr_schedule="cosine"))
    rates = result.history["learning_rate"]  # the last step's rate of each epoch
    assert len(rates) == 4 and all(a > b for a, b in zip(rates, rates[1:]))
    last = 0.5 * (1 + np.cos(np.pi * (3 + (per_epoch - 1) / per_epoch) / 4))
    assert rates[0] < 1e-3 and rates[-1] == pytest.approx(1e-3 * last)
    assert "learning_rate" not in baseline.fit(dataset, small_config(epochs=1)).history
