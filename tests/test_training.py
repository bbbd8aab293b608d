import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from voxseg.model.checkpoint import load_checkpoint
from voxseg.runlog import read_log
from voxseg.training.run import train
from voxseg.training.settings import load_settings
from voxseg.training.trainer import Trainer
from voxseg.workflows.train import train_fold

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUICK = [
    "training.iterations_per_epoch=2",
    "training.val_iterations=1",
    "training.final_validation=false",
    "sampling.workers=0",
]


def quick(*extra: str, epochs: int = 1):
    return load_settings(None, [*QUICK, f"training.epochs={epochs}", *extra])


def test_run_folder_contents_and_log(tiny_work):
    run = train_fold(tiny_work, "3d_fullres", "0", quick("training.final_validation=true", epochs=2), device="cpu", name="contents")
    for name in ("settings.yaml", "run.json", "log.jsonl", "progress.png", "sampling_stats.json", "class_weights.json",
                 "checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt", "validation/summary.json"):
        assert (run / name).is_file(), name
    log = read_log(run / "log.jsonl")
    assert [r["epoch"] for r in log] == [0, 1]
    for key in ("lr", "train/loss", "train/seg/ce", "train/seg/dice", "val/loss", "val/dice/organ", "val/dice/lesion",
                "val/ema_dice", "epoch_time", "data_wait", "data_wait_share"):
        assert key in log[-1], key
    assert log[1]["lr"] < log[0]["lr"], "poly schedule decays"
    stats = json.loads((run / "sampling_stats.json").read_text())
    assert sum(stats["draws"].values()) if "draws" in stats else stats
    assert load_settings(run / "settings.yaml") == quick("training.final_validation=true", epochs=2)


class Crash(RuntimeError):
    pass


class CrashingTrainer(Trainer):
    """Dies in the first step of the third epoch, like a killed job."""

    def train_step(self, batch):
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == 5:
            raise Crash()
        return super().train_step(batch)


def test_resume_gives_the_uninterrupted_weights(tiny_work):
    settings = quick(epochs=4)
    straight = train(tiny_work, "3d_fullres", "1", settings, device="cpu", name="straight")
    with pytest.raises(Crash):
        train(tiny_work, "3d_fullres", "1", settings, trainer=CrashingTrainer, device="cpu", name="resumed")
    resumed = train(tiny_work, "3d_fullres", "1", settings, device="cpu", name="resumed", resume=True)
    a = load_checkpoint(straight / "checkpoint_final.pt")["trainer"]["network"]
    b = load_checkpoint(resumed / "checkpoint_final.pt")["trainer"]["network"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert [r["epoch"] for r in read_log(resumed / "log.jsonl")] == [0, 1, 2, 3]


def test_resume_without_checkpoint_is_a_clear_error(tiny_work):
    from voxseg.errors import CheckpointError

    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(tiny_work, "3d_fullres", "0", quick(), device="cpu", name="never-trained", resume=True)


@pytest.mark.parametrize("spec, logged", [("weighted_ce_trainer.py:WeightedCETrainer", "train/seg/ce"),
                                          ("two_output_trainer.py:TwoOutputTrainer", "train/fg/bce")])
def test_example_trainers_run_and_predict(tiny_work, tmp_path, demo_dataset, spec, logged):
    run = train(tiny_work, "3d_fullres", "0", quick(), trainer=str(EXAMPLES / spec), device="cpu")
    assert logged in read_log(run / "log.jsonl")[0]
    assert run.parent.name.split("__")[1] == spec.split(":")[1]
    from voxseg.inference.cohort import predict

    assert not predict([run.parent], demo_dataset / "imagesTs", tmp_path / "pred", tta=False, device="cpu", progress=False).failed
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 2


class RecordingTrainer(Trainer):
    """Remembers what the loader delivered and what the network was given."""

    seen: list = []

    def train_step(self, batch):
        tb = self.prepare(batch, self.augmenter)
        RecordingTrainer.seen.append((batch.augmented, tuple(batch.image.shape[2:]), tuple(tb.image.shape[2:])))
        return super().train_step(batch)


@pytest.mark.parametrize("where, in_loader", [("auto", True), ("loader", True), ("device", False)])
def test_augmentation_runs_where_the_setting_says(tiny_work, where, in_loader):
    RecordingTrainer.seen = []
    train(tiny_work, "3d_fullres", "0", quick(f"augmentation.where={where}", "sampling.workers=1"),
          trainer=RecordingTrainer, device="cpu", name=f"where-{where}")
    from voxseg.plans import load_plans

    patch = tuple(load_plans(tiny_work).configuration("3d_fullres").patch_size)
    assert len(RecordingTrainer.seen) == 2
    for augmented, delivered, network_input in RecordingTrainer.seen:
        assert augmented == in_loader
        assert network_input == patch
        # On the device, the loader delivers the enlarged crop the augmentation needs.
        assert (delivered == patch) == in_loader


def test_2d_configuration_trains(tiny_work):
    run = train(tiny_work, "2d", "0", quick(), device="cpu")
    assert read_log(run / "log.jsonl")[0]["train/loss"] > 0


def test_ddp_two_cpu_ranks(tiny_work):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "voxseg", "train",
           str(tiny_work), "3d_fullres", "0", "--device", "cpu", "--name", "ddp",
           *[a for s in [*QUICK, "training.epochs=1", "training.batch_size=4"] for a in ("--set", s)]]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    run = tiny_work / "runs" / "3d_fullres__default__ddp" / "fold_0"
    assert len(read_log(run / "log.jsonl")) == 1, "only rank 0 writes"
    stats = json.loads((run / "sampling_stats.json").read_text())
    assert stats
