"""Experiment tracking: TensorBoard event files, the backend interface, missing packages."""

import io
import sys

import numpy as np
import pytest
from PIL import Image

from voxseg.cli.main import main
from voxseg.errors import SettingsError
from voxseg.runlog import read_log
from voxseg.training import tracking
from voxseg.training.run import train
from voxseg.training.settings import load_settings
from voxseg.training.tracking import Backend, LoggingSettings, requested_backends, scalars_of

QUICK = ["training.iterations_per_epoch=2", "training.val_iterations=1", "training.final_validation=false", "sampling.workers=0"]


def quick(*extra: str, epochs: int = 2):
    return load_settings(None, [*QUICK, f"training.epochs={epochs}", *extra])


def test_tensorboard_holds_every_number_of_the_log_and_the_overlays(tiny_work):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(
        tiny_work, "3d_fullres", "0", quick("logging.tensorboard=true", "logging.images_every=2"), device="cpu", name="tb"
    )
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    log = read_log(run / "log.jsonl")
    expected = {k for record in log for k in scalars_of(record)}
    assert {
        "lr",
        "train/loss",
        "train/seg/ce",
        "train/seg/dice",
        "val/loss",
        "val/dice/organ",
        "val/mean_dice",
        "val/ema_dice",
        "epoch_time",
        "data_wait",
        "s_per_iteration",
    } <= expected
    assert set(events.Tags()["scalars"]) == expected
    for key in expected:
        logged = [(r["epoch"], r[key]) for r in log if isinstance(r.get(key), (int, float))]
        written = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in written] == [s for s, _ in logged], key
        np.testing.assert_allclose([v for _, v in written], [v for _, v in logged], rtol=1e-6, err_msg=key)
    # images_every=2: the second epoch only, two samples of the last validation batch
    assert sorted(events.Tags()["images"]) == ["val/overlay/0", "val/overlay/1"]
    (shot,) = events.Images("val/overlay/0")
    picture = np.asarray(Image.open(io.BytesIO(shot.encoded_image_string)))
    assert shot.step == 1 and picture.shape == (shot.height, shot.width, 3)
    assert shot.width > 2 * shot.height, "image | reference | prediction side by side"


class FakeTracker:
    """An in-test backend: records what the loop sends through the interface."""

    def __init__(self, run):
        self.run, self.scalars, self.images, self.closed = run, [], [], 0

    def log_scalars(self, step, scalars):
        self.scalars.append((step, dict(scalars)))

    def log_images(self, step, images):
        self.images.append((step, dict(images)))

    def close(self):
        self.closed += 1


def test_a_backend_gets_every_epoch_through_the_interface(tiny_work, monkeypatch):
    opened = []
    # "json" is always importable: the fake stands in for W&B's package and its server.
    monkeypatch.setitem(
        tracking.BACKENDS, "wandb", Backend("json", "-", lambda s, run: opened.append(FakeTracker(run)) or opened[-1])
    )
    settings = quick("logging.wandb=true", "logging.images_every=1", "logging.images=1", "logging.project=demo-project")
    run = train(tiny_work, "3d_fullres", "0", settings, device="cpu", name="fake")
    (fake,) = opened
    assert (fake.run.project, fake.run.run_name, fake.run.run_dir) == ("demo-project", f"{run.parent.name}/fold_0", run)
    assert fake.run.config == settings.to_dict() and fake.run.start_step == 0
    log = read_log(run / "log.jsonl")
    assert fake.scalars == [(r["epoch"], scalars_of(r)) for r in log]
    assert [step for step, _ in fake.images] == [0, 1]
    for _, images in fake.images:
        (image,) = images.values()
        assert list(images) == ["val/overlay/0"] and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert fake.closed == 1


@pytest.mark.parametrize(
    "name, package, install",
    [
        ("tensorboard", "tensorboard", "pip install 'voxseg[tensorboard]'"),
        ("mlflow", "mlflow", "pip install mlflow"),
        ("wandb", "wandb", "pip install wandb"),
    ],
)
def test_a_backend_whose_package_is_missing_is_one_settings_error(monkeypatch, name, package, install):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed, whatever this machine has
    with pytest.raises(SettingsError) as e:
        requested_backends(LoggingSettings(**{name: True}))
    assert e.value.one_line() == (
        f"logging.{name}=true needs the '{package}' package, which is not installed (fix: {install}, or set logging.{name}=false)"
    )


def test_train_stops_before_the_first_epoch_when_a_tracker_is_missing(tiny_work, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    args = [
        "train",
        str(tiny_work),
        "3d_fullres",
        "0",
        "--device",
        "cpu",
        "--name",
        "no-mlflow",
        "--set",
        "logging.mlflow=true",
        *[a for s in QUICK for a in ("--set", s)],
    ]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: logging.mlflow=true needs the 'mlflow' package") and len(err) == 1
    assert not (tiny_work / "runs" / "3d_fullres__default__no-mlflow" / "fold_0" / "log.jsonl").exists()


def test_logging_settings_are_checked():
    assert requested_backends(LoggingSettings()) == []
    with pytest.raises(SettingsError, match="did you mean 'tensorboard'"):
        load_settings(None, ["logging.tensorbord=true"])
    with pytest.raises(SettingsError, match=r"logging\.images_every=-1 must be >= 0"):
        load_settings(None, ["logging.images_every=-1"])
    assert scalars_of({"epoch": 2, "lr": 0.01, "val/dice/lesion": None, "flag": True, "n": np.float32(0.5)}) == {
        "lr": 0.01,
        "n": 0.5,
    }
    # Tracking does not change what is trained: same run folder name, so --resume finds the run.
    assert load_settings(None, ["logging.tensorboard=true", "logging.images=4"]).digest() == load_settings(None, []).digest()
    assert load_settings(None, ["training.epochs=5"]).digest() != load_settings(None, []).digest()
