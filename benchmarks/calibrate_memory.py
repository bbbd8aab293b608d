"""Calibrate and check the planner's memory model (voxseg.planning.memory) against real peaks.

On a GPU: for budgets 4/8/16/24 GB, plan a CT-like problem (median 200x512x512 at 1x0.8x0.8 mm,
3 classes), run bf16-autocast training steps of the planned network and batch, and print
predicted vs `torch.cuda.max_memory_allocated`. Goal: measured <= budget and >= 70% of it.
Writes benchmarks/calibration/gpu.json.

On CPU (no GPU): measure the peak RSS increase of fp32 training steps for a few small topologies,
each in a fresh subprocess, fit `activation_scale` and `constant_bytes` by least squares, and print
the table. Writes benchmarks/calibration/cpu.json.

    python benchmarks/calibrate_memory.py [--cpu] [--budgets 4,8,16,24]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from voxseg.losses.compound import DiceCELoss
from voxseg.losses.deep_supervision import DeepSupervisionLoss, deep_supervision_weights
from voxseg.model.registry import build_network
from voxseg.planning.memory import MemoryCoefficients, estimate_training_memory
from voxseg.planning.planner import PlannerOptions, _Problem, plan_configuration
from voxseg.planning.topology import network_dict, pooling_topology

OUT = Path(__file__).resolve().parent / "calibration"
CT_SPACING, CT_MEDIAN_SHAPE = (1.0, 0.8, 0.8), (200, 512, 512)  # the CT-like problem the GPU check plans
CPU_CASES = [  # (spacing, patch, batch, classes): small enough for a shared 2-core CPU
    ((1.0, 1.0, 1.0), (32, 32, 32), 2, 3),
    ((1.0, 1.0, 1.0), (32, 48, 48), 2, 3),
    ((2.5, 1.0, 1.0), (16, 64, 64), 2, 3),
    ((1.0, 1.0, 1.0), (32, 32, 32), 4, 3),
    ((1.0, 1.0), (128, 128), 4, 3),
    ((1.0, 1.0), (192, 192), 4, 5),
]


def train_steps(network: dict, patch, batch: int, classes: int, device: torch.device, steps: int = 3) -> None:
    """Real training steps: SGD (momentum, Nesterov), Dice+CE with deep supervision, bf16 on GPU."""
    net = build_network(network, 1, classes, deep_supervision=True).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    scales = [[1.0] * len(patch)]
    for stride in network["strides"][1:-1]:
        scales.append([s / st for s, st in zip(scales[-1], stride)])
    loss_fn = DeepSupervisionLoss(DiceCELoss(batch_dice=True), deep_supervision_weights(len(scales)))
    x = torch.randn(batch, 1, *patch, device=device)
    seg = torch.randint(0, classes, (batch, 1, *patch), device=device)
    targets = [
        seg
        if s[0] == 1 and len(set(s)) == 1
        else F.interpolate(seg.float(), size=[round(p * f) for p, f in zip(patch, s)], mode="nearest").long()
        for s in scales
    ]
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = net(x)["seg"]
            loss = loss_fn(out, targets)["loss"]
        loss.backward()
        opt.step()


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(spec: str) -> None:
    spacing, patch, batch, classes = json.loads(spec)
    torch.set_num_threads(1)
    network = network_dict(pooling_topology(spacing, patch))
    base = _rss_bytes()
    train_steps(network, patch, batch, classes, torch.device("cpu"), steps=2)
    print(json.dumps({"measured": _rss_bytes() - base}))


def model_terms(network, patch, batch, classes, precision) -> tuple[float, float]:
    """(activation-type bytes, fixed bytes) of the model at scale 1 and constant 0."""
    est = estimate_training_memory(
        network, patch, batch, 1, classes, precision_bytes=precision, coefficients=MemoryCoefficients(1.0, 0.0)
    )
    return est.total_bytes - est.breakdown["parameter_state"], est.breakdown["parameter_state"]


def calibrate_cpu() -> None:
    rows = []
    for spacing, patch, batch, classes in CPU_CASES:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps([spacing, patch, batch, classes])],
            capture_output=True,
            text=True,
            check=True,
        )
        measured = json.loads(proc.stdout.strip().splitlines()[-1])["measured"]
        network = network_dict(pooling_topology(spacing, patch))
        act, fixed = model_terms(network, patch, batch, classes, precision=4)
        rows.append(
            {"patch": list(patch), "batch": batch, "classes": classes, "measured": measured, "activations": act, "fixed": fixed}
        )
    a = np.array([[r["activations"], 1.0] for r in rows])
    y = np.array([r["measured"] - r["fixed"] for r in rows])
    (scale, const), *_ = np.linalg.lstsq(a, y, rcond=None)
    print(f"fit: activation_scale={scale:.3f} constant_bytes={const / 1e6:.0f} MB  (CPU, fp32, peak RSS)")
    print(f"{'patch':>16} {'batch':>5} {'K':>2} {'measured MB':>12} {'predicted MB':>13} {'ratio':>6}")
    for r in rows:
        pred = scale * r["activations"] + r["fixed"] + const
        r["predicted"] = pred
        print(
            f"{r['patch']!s:>16} {r['batch']:>5} {r['classes']:>2} {r['measured'] / 1e6:12.1f} {pred / 1e6:13.1f} {r['measured'] / pred:6.2f}"
        )
    OUT.mkdir(exist_ok=True)
    (OUT / "cpu.json").write_text(
        json.dumps(
            {"device": "cpu", "precision": "fp32", "activation_scale": scale, "constant_bytes": const, "rows": rows}, indent=2
        )
        + "\n"
    )


def budget_rows(
    budgets: list[float],
    device: torch.device,
    *,
    spacing=CT_SPACING,
    median_shape=CT_MEDIAN_SHAPE,
    classes: int = 3,
    steps: int = 3,
) -> list[dict]:
    """Plan a problem (100 cases of ``median_shape``) at each budget in GB and run ``steps`` training
    steps of the planned network and batch; predicted vs measured peak bytes per budget.

    ``measured`` is the CUDA allocator's peak; None on a CPU, which keeps no such count (the steps
    still run, so the code path is exercised).

    Example:
        >>> budget_rows([4, 8], torch.device("cuda"))[0]["measured"] <= 4e9  # doctest: +SKIP
        True
    """
    cuda = device.type == "cuda"
    rows = []
    for gb in budgets:
        pb = _Problem(
            tuple(spacing), tuple(median_shape), math.prod(median_shape) * 100.0, 1, classes, PlannerOptions(gpu_memory_gb=gb)
        )
        cfg = plan_configuration(pb, len(median_shape), batch_dice=True)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        train_steps(cfg.network, cfg.patch_size, cfg.batch_size, classes, device, steps)
        measured = torch.cuda.max_memory_allocated(device) if cuda else None
        act, fixed = model_terms(cfg.network, cfg.patch_size, cfg.batch_size, classes, precision=2)
        rows.append(
            {
                "budget_gb": gb,
                "patch": cfg.patch_size,
                "batch": cfg.batch_size,
                "predicted": cfg.memory["estimate_bytes"],
                "measured": measured,
                "activations": act,
                "fixed": fixed,
            }
        )
    return rows


def refit(rows: list[dict]) -> tuple[float, float]:
    """(activation_scale, constant_bytes) fitted by least squares to measured rows."""
    a = np.array([[r["activations"], 1.0] for r in rows])
    y = np.array([r["measured"] - r["fixed"] for r in rows])
    (scale, const), *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(scale), float(const)


def check_gpu(budgets: list[float]) -> None:
    rows = budget_rows(budgets, torch.device("cuda"))
    print(f"{'budget GB':>9} {'patch':>16} {'batch':>5} {'predicted GB':>12} {'measured GB':>11} {'meas/budget':>11}")
    for r in rows:
        gb, measured = r["budget_gb"], r["measured"]
        print(
            f"{gb:9g} {r['patch']!s:>16} {r['batch']:5d} {r['predicted'] / 1e9:12.2f} "
            f"{measured / 1e9:11.2f} {measured / (gb * 1e9):11.2f}"
        )
    scale, const = refit(rows)
    print(f"refit on these rows: activation_scale={scale:.3f} constant_bytes={const / 1e6:.0f} MB")
    OUT.mkdir(exist_ok=True)
    (OUT / "gpu.json").write_text(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(),
                "precision": "bf16",
                "activation_scale": scale,
                "constant_bytes": const,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="CPU calibration even when a GPU is present")
    parser.add_argument("--budgets", default="4,8,16,24")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
    elif torch.cuda.is_available() and not args.cpu:
        check_gpu([float(b) for b in args.budgets.split(",")])
    else:
        calibrate_cpu()


if __name__ == "__main__":
    main()
