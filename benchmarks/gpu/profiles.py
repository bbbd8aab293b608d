"""Sizes and time limits of the GPU check: ``run`` (a GPU host, <= 8 minutes) and ``dry`` (CPU, CI).

Standard library only: the orchestrator (check.py) reads this before voxseg's dependencies are
installed. Stages run in this order; a stage starts only while at least its ``need_s`` seconds of
the total budget are left, and is stopped after ``max_s`` (or when the budget runs out). Our own
GPU paths come first, nnU-Net's side rows after them, DDP last (one GPU can only check its start).
"""

from __future__ import annotations

from dataclasses import dataclass, field

STAGES = (
    "install",
    "env",
    "data",
    "train",
    "augment",
    "memory",
    "predict",
    "nnunet_env",
    "nnunet_preprocess",
    "nnunet_train",
    "nnunet_predict",
    "ddp",
)
NNUNET_STAGES = ("nnunet_env", "nnunet_preprocess", "nnunet_train", "nnunet_predict")
# The H100 numbers issue 18 quotes (nnU-Net 2.8.1, patch 88x160x128 batch 2), shown beside ours.
H100_REFERENCE = {
    "step_ms_eager_fp16": 77.6,
    "step_ms_compile": 51.2,
    "step_ms_best_bf16_compile": 46.5,
    "ms_per_it_12_workers": 103.0,
    "ms_per_it_2_workers": 392.0,
    "predict_4_cases_112_208_tta_s": 52.0,
    "predict_2_ct_cases_tta_s": 99.5,
}
# `--set` values are YAML: a bare on/off would arrive as a boolean, which training.compile refuses.
COMPILE_ON, COMPILE_OFF = "training.compile='on'", "training.compile='off'"
GOALS = {"ms_per_it_2_workers": 52.0, "augment_ms_per_batch": 10.0, "predict_speedup": 3.0, "memory_min_share": 0.7}


@dataclass(frozen=True)
class Limit:
    need_s: float  # start the stage only with this much of the budget left
    max_s: float  # stop it after this long


@dataclass(frozen=True)
class KitProfile:
    name: str
    device: str
    budget_s: float
    cases: int  # training cases of the demo dataset
    size_range: tuple[int, int]  # their size per axis (the slice axis comes out about half)
    ct_shape: tuple[int, int, int]  # the two held-out "CT-sized" volumes predict runs on
    ct_spacing: tuple[float, float, float]
    patch: tuple[int, int, int]
    batch: int
    workers: int  # loader workers while training (the goal is for 2)
    warmup: int  # untimed steps (compile happens here)
    iterations: int  # timed steps
    train_overrides: tuple[str, ...]  # the GPU paths under test, spelled out
    augment_patches: tuple[tuple[int, int, int], ...]
    augment_batches: int
    memory_budgets_gb: tuple[float, ...]
    memory_problem: tuple[tuple[float, ...], tuple[int, ...]]  # spacing, median shape
    memory_steps: int
    preprocess_workers: int
    predict_workers: int  # nnU-Net's -npp/-nps (its default is 3)
    nnunet_warmup: int
    nnunet_iterations: int
    nnunet_compile: bool
    ddp_iterations: int
    limits: dict[str, Limit] = field(default_factory=dict)

    def limit(self, stage: str) -> Limit:
        return self.limits.get(stage, Limit(0.0, self.budget_s))


RUN = KitProfile(
    name="run",
    device="cuda",
    budget_s=480.0,
    cases=8,
    size_range=(112, 208),
    ct_shape=(330, 330, 330),
    ct_spacing=(1.0, 0.8, 0.8),
    patch=(64, 160, 160),
    batch=2,
    workers=2,
    warmup=25,
    iterations=200,
    train_overrides=("training.precision=bf16", COMPILE_ON, "augmentation.where=device"),
    augment_patches=((64, 160, 160), (88, 160, 128)),
    augment_batches=20,
    memory_budgets_gb=(4.0, 8.0, 16.0),
    memory_problem=((1.0, 0.8, 0.8), (200, 512, 512)),
    memory_steps=3,
    preprocess_workers=8,
    predict_workers=3,
    # nnU-Net trains eagerly here: with 2 loader workers its speed is set by its CPU augmentation
    # (392 vs 103 ms/it with 12 workers on an H100), and compiling would cost a minute of the budget.
    nnunet_warmup=10,
    nnunet_iterations=50,
    nnunet_compile=False,
    ddp_iterations=20,
    limits={
        "install": Limit(30, 120),
        "env": Limit(10, 60),
        "data": Limit(20, 120),
        "train": Limit(90, 240),
        "augment": Limit(10, 60),
        "memory": Limit(20, 120),
        "predict": Limit(40, 180),
        "nnunet_env": Limit(20, 90),
        "nnunet_preprocess": Limit(40, 150),
        "nnunet_train": Limit(60, 200),
        "nnunet_predict": Limit(100, 240),
        "ddp": Limit(25, 120),
    },
)

DRY = KitProfile(
    name="dry",
    device="cpu",
    budget_s=300.0,
    cases=4,
    size_range=(24, 40),
    ct_shape=(40, 48, 48),
    ct_spacing=(1.0, 0.8, 0.8),
    patch=(16, 32, 32),
    batch=2,
    workers=1,
    warmup=1,
    iterations=2,
    # the device-side augmentation path, as on a GPU; compile and bf16 stay off on a CPU (slow there)
    train_overrides=("augmentation.where=device", COMPILE_OFF),
    augment_patches=((16, 32, 32),),
    augment_batches=2,
    memory_budgets_gb=(0.35, 0.4, 0.5),
    memory_problem=((1.0, 1.0, 1.0), (48, 64, 64)),
    memory_steps=1,
    preprocess_workers=1,
    predict_workers=1,
    nnunet_warmup=1,
    nnunet_iterations=2,
    nnunet_compile=False,
    ddp_iterations=2,
    limits={stage: Limit(0, 150) for stage in STAGES},
)

PROFILES = {"run": RUN, "dry": DRY}
