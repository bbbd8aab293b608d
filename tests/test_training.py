import json
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from voxseg.data.io import read_image
from voxseg.model.checkpoint import load_checkpoint
from voxseg.plans import load_plans
from voxseg.preprocessing.preprocess import store_dir
from voxseg.preprocessing.store import Store
from voxseg.runlog import read_log
from voxseg.sampling.patch_sampler import forced_flags
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
    run = train_fold(
        tiny_work, "3d_fullres", "0", quick("training.final_validation=true", epochs=2), device="cpu", name="contents"
    )
    for name in (
        "settings.yaml",
        "run.json",
        "log.jsonl",
        "progress.png",
        "sampling_stats.json",
        "class_weights.json",
        "checkpoint_latest.pt",
        "checkpoint_best.pt",
        "checkpoint_final.pt",
        "validation/summary.json",
    ):
        assert (run / name).is_file(), name
    log = read_log(run / "log.jsonl")
    assert [r["epoch"] for r in log] == [0, 1]
    for key in (
        "lr",
        "train/loss",
        "train/seg/ce",
        "train/seg/dice",
        "val/loss",
        "val/dice/organ",
        "val/dice/lesion",
        "val/ema_dice",
        "epoch_time",
        "data_wait",
        "data_wait_share",
    ):
        assert key in log[-1], key
    assert log[1]["lr"] < log[0]["lr"], "poly schedule decays"
    stats = json.loads((run / "sampling_stats.json").read_text())
    batch = load_plans(tiny_work).configuration("3d_fullres").batch_size
    served = 2 * 2 * batch  # epochs x iterations x batch size; validation batches are not counted
    assert stats["patches"] == served == stats["forced"] + stats["random"] == sum(stats["case_draws"].values())
    assert stats["forced"] == 2 * 2 * int(forced_flags(batch, 0.33).sum())
    train_ids = json.loads((run / "run.json").read_text())["train"]
    assert set(stats["case_draws"]) <= set(train_ids)
    assert stats["case_probabilities"] == pytest.approx({c: 1 / len(train_ids) for c in train_ids})
    assert set(stats["class_patch_fraction"]) <= {"1", "2"}
    assert sum(stats["class_patch_fraction"].values()) >= stats["forced"] / served, "every forced patch holds foreground"
    assert stats["schedule"] == [], "adaptive sampling is off"
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


@pytest.mark.slow
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


@pytest.mark.parametrize(
    "spec, logged",
    [("weighted_ce_trainer.py:WeightedCETrainer", "train/seg/ce"), ("two_output_trainer.py:TwoOutputTrainer", "train/fg/bce")],
)
def test_example_trainers_run_and_predict(tiny_work, tmp_path, demo_dataset, spec, logged):
    run = train(tiny_work, "3d_fullres", "0", quick(), trainer=str(EXAMPLES / spec), device="cpu")
    assert logged in read_log(run / "log.jsonl")[0]
    assert run.parent.name.split("__")[1] == spec.split(":")[1]
    from voxseg.inference.cohort import predict

    assert not predict([run.parent], demo_dataset / "imagesTs", tmp_path / "pred", tta=False, device="cpu", progress=False).failed
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 2


class RecordingTrainer(Trainer):
    """Remembers what the loader delivered and what the network was given."""

    seen: ClassVar[list] = []

    def train_step(self, batch):
        tb = self.prepare(batch, self.augmenter)
        RecordingTrainer.seen.append((batch.augmented, tuple(batch.image.shape[2:]), tuple(tb.image.shape[2:])))
        return super().train_step(batch)


@pytest.mark.parametrize("where, in_loader", [("auto", True), ("loader", True), ("device", False)])
def test_augmentation_runs_where_the_setting_says(tiny_work, where, in_loader):
    RecordingTrainer.seen = []
    train(
        tiny_work,
        "3d_fullres",
        "0",
        quick(f"augmentation.where={where}", "sampling.workers=1"),
        trainer=RecordingTrainer,
        device="cpu",
        name=f"where-{where}",
    )
    from voxseg.plans import load_plans

    patch = tuple(load_plans(tiny_work).configuration("3d_fullres").patch_size)
    assert len(RecordingTrainer.seen) == 2
    for augmented, delivered, network_input in RecordingTrainer.seen:
        assert augmented == in_loader
        assert network_input == patch
        # On the device, the loader delivers the enlarged crop the augmentation needs.
        assert (delivered == patch) == in_loader


class ShapeRecorder(Trainer):
    """Keeps the loader's training batches and the shapes going into and out of the network."""

    batches: ClassVar[list] = []
    shapes: ClassVar[list] = []

    def train_step(self, batch):
        ShapeRecorder.batches.append((batch.image.numpy().copy(), list(batch.case_ids)))
        return super().train_step(batch)

    def compute_loss(self, outputs, batch):
        ShapeRecorder.shapes.append((tuple(batch.image.shape), [tuple(o.shape) for o in outputs["seg"]]))
        return super().compute_loss(outputs, batch)


def test_2d_configuration_trains(tiny_work, demo_dataset, tmp_path):
    ShapeRecorder.batches, ShapeRecorder.shapes = [], []
    run = train(tiny_work, "2d", "0", quick("augmentation.where=device"), trainer=ShapeRecorder, device="cpu")
    plan = load_plans(tiny_work)
    cfg = plan.configuration("2d")
    assert cfg.dims == 2 and len(cfg.patch_size) == 2
    channels, classes = len(plan.channel_names), plan.num_classes
    assert len(ShapeRecorder.shapes) == 2 + 1  # two training steps, one validation batch
    for network_input, outputs in ShapeRecorder.shapes:
        assert network_input == (cfg.batch_size, channels, *cfg.patch_size)
        assert outputs[0] == (cfg.batch_size, classes, *cfg.patch_size)
        assert all(len(o) == 4 for o in outputs), "every deep-supervision output is 2D"
    # The 2D store is 3D; a patch is a crop of one axis-0 slice (noisy images: every value belongs to one slice).
    store = Store(store_dir(tiny_work, "2d", plan))
    for images, case_ids in ShapeRecorder.batches:
        assert images.ndim == 4
        for patch, case_id in zip(images, case_ids):
            volume = np.asarray(store.open(case_id).image)
            values = np.unique(patch[patch != 0])
            assert values.size > 0
            assert [z for z in range(volume.shape[1]) if np.isin(values, volume[:, z]).all()] != [], case_id
    log = read_log(run / "log.jsonl")[0]
    assert log["train/loss"] > 0 and {"val/dice/organ", "val/dice/lesion", "val/mean_dice"} <= set(log)
    from voxseg.inference.cohort import predict

    assert not predict([run.parent], demo_dataset / "imagesTs", tmp_path / "pred", tta=False, device="cpu", progress=False).failed
    for image in sorted((demo_dataset / "imagesTs").glob("*_0000.nii.gz")):
        pred, pred_geometry = read_image(tmp_path / "pred" / image.name.replace("_0000", ""))
        ref, ref_geometry = read_image(image)
        assert pred.shape == ref.shape and pred_geometry == ref_geometry, image.name
        assert set(np.unique(pred)) <= set(range(classes))


RANK_RECORDER = """
import json

from voxseg.training.trainer import Trainer


class RankRecorder(Trainer):
    \"\"\"Writes what this rank trained on, its validation losses and its weights to rank_<r>.json.\"\"\"

    def train_step(self, batch):
        self.__dict__.setdefault("forced", []).append([bool(f) for f in batch.forced])
        return super().train_step(batch)

    def validation_step(self, batch):
        out = super().validation_step(batch)
        self.__dict__.setdefault("val_losses", []).append(out.parts["loss"])
        return out

    def on_epoch_end(self, epoch, logs):
        weights = {k: float(v.double().sum()) for k, v in self.network.state_dict().items()}
        path = self.ctx.run_dir / f"rank_{self.ctx.dist.rank}.json"
        path.write_text(json.dumps({"forced": self.forced, "val_losses": self.val_losses, "weights": weights}))
"""


@pytest.mark.slow
def test_ddp_two_cpu_ranks(tiny_work, tmp_path):
    (tmp_path / "rank_recorder.py").write_text(RANK_RECORDER)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "voxseg",
        "train",
        str(tiny_work),
        "3d_fullres",
        "0",
        "--device",
        "cpu",
        "--name",
        "ddp",
        "--trainer",
        f"{tmp_path / 'rank_recorder.py'}:RankRecorder",
        *[a for s in [*QUICK, "training.epochs=1", "training.batch_size=4"] for a in ("--set", s)],
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run = tiny_work / "runs" / "3d_fullres__RankRecorder__ddp" / "fold_0"
    log = read_log(run / "log.jsonl")
    assert len(log) == 1, "only rank 0 writes"
    ranks = [json.loads((run / f"rank_{r}.json").read_text()) for r in (0, 1)]
    # Each rank served 2 iterations of its half of the global batch of 4, with nnU-Net's forced-foreground
    # pattern laid over the global batch (its last sample forced): 2 x 4 patches in all.
    global_pattern = [bool(f) for f in forced_flags(4, 0.33)]
    assert [a + b for a, b in zip(ranks[0]["forced"], ranks[1]["forced"])] == [global_pattern] * 2
    stats = json.loads((run / "sampling_stats.json").read_text())
    assert stats["patches"] == 2 * 2 and stats["forced"] == 0, "rank 0's share: the first half of each global batch"
    # Gradients were averaged over the ranks: both end with the same weights (their batches differed).
    assert ranks[0]["weights"] == ranks[1]["weights"]
    # The validation loss is the mean over both ranks' batches.
    assert log[0]["val/loss"] == pytest.approx(np.mean(ranks[0]["val_losses"] + ranks[1]["val_losses"]), rel=1e-6)
    final = load_checkpoint(run / "checkpoint_final.pt")["trainer"]["network"]
    assert not any(k.startswith("module.") for k in final), "the checkpoint holds the network, not its DDP wrapper"
    assert {k: float(v.double().sum()) for k, v in final.items()} == ranks[0]["weights"]
