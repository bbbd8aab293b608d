"""Fine-tuning: start a run from another run's weights, output channels matched by class name.

nnU-Net's ``-pretrained_weights`` loads every weight except the segmentation layers and demands equal
shapes. Here every tensor whose name and shape match is copied, and the output layers
(``seg_layers.*`` of voxseg's U-Nets) are mapped channel by channel **by class (or region) name**:
a class present in both keeps its weights even if its label value changed, a new class keeps its
fresh initialisation, a class the new dataset lacks is dropped. Only the first convolution may differ
in its input channels (a dataset with other modalities): it is re-initialised. Any other difference
means another topology, which fine-tuning cannot bridge: plan the new dataset with
``voxseg plan DATASET -o WORK --like PRETRAINED_WORK`` to reuse the pretrained run's topology.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from voxseg.errors import CheckpointError
from voxseg.model.checkpoint import load_checkpoint
from voxseg.plans import Plan

OUTPUT_PREFIX = "seg_layers."


@dataclass
class TransferReport:
    copied: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    classes: dict[str, str] = field(default_factory=dict)  # target output name -> "kept (was value v)" / "new"

    def lines(self) -> list[str]:
        out = [
            f"pretrained: copied {len(self.copied)} tensors, re-initialised {len(self.reinitialised)}, dropped {len(self.dropped)}"
        ]
        out += [f"  output '{name}': {what}" for name, what in self.classes.items()]
        out += [f"  re-initialised {n}" for n in self.reinitialised]
        out += [f"  dropped {n}" for n in self.dropped]
        return out


def output_names(plan: Plan) -> list[str]:
    """One name per output channel: regions, or classes (background first)."""
    if plan.regions:
        return list(plan.region_names or [str(r) for r in plan.regions])
    return list(plan.class_names or [str(i) for i in range(plan.num_classes)])


def find_checkpoint(source: str | Path) -> Path:
    """A checkpoint file, a fold folder (its checkpoint_final.pt) or a run folder with one fold."""
    source = Path(source)
    if source.is_file():
        return source
    if (source / "checkpoint_final.pt").is_file():
        return source / "checkpoint_final.pt"
    folds = sorted(p for p in source.glob("fold_*") if (p / "checkpoint_final.pt").is_file())
    if len(folds) == 1:
        return folds[0] / "checkpoint_final.pt"
    if not folds:
        raise CheckpointError(
            "no trained checkpoint here", path=source, fix="pass a checkpoint_*.pt, a fold_N folder or a trained run folder"
        )
    raise CheckpointError(
        f"{len(folds)} trained folds here ({', '.join(p.name for p in folds)})",
        path=source,
        fix=f"pass one of them, e.g. --pretrained {folds[0]}",
    )


def transfer_weights(network: nn.Module, target: Plan, checkpoint: str | Path) -> TransferReport:
    """Load matching weights of `checkpoint` into `network` (built for plan `target`); see the module doc."""
    path = find_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    try:
        source_state: dict[str, torch.Tensor] = ckpt["trainer"]["network"]
        source_plan = Plan.from_json(ckpt["meta"]["plan"])
    except (KeyError, TypeError):
        raise CheckpointError("not a voxseg checkpoint", path=path, fix="pass a checkpoint written by `voxseg train`") from None
    same_kind = bool(source_plan.regions) == bool(target.regions)
    src_names, dst_names = output_names(source_plan), output_names(target)
    rows = [src_names.index(n) if same_kind and n in src_names else None for n in dst_names]
    report = TransferReport(
        classes={
            n: ("kept" if r is not None else "new (fresh weights)") + (f", was channel {r}" if r is not None and r != j else "")
            for j, (n, r) in enumerate(zip(dst_names, rows))
        }
    )
    state = network.state_dict()
    first_conv = next((k for k, v in state.items() if v.ndim >= 4), None)
    mismatched = []
    for name, tensor in state.items():
        src = source_state.get(name)
        if name.startswith(OUTPUT_PREFIX):
            if src is None or src.shape[1:] != tensor.shape[1:]:
                mismatched.append(f"{name} {tuple(src.shape) if src is not None else 'missing'} vs {tuple(tensor.shape)}")
                continue
            _copy_rows(tensor, src, rows)
            report.copied.append(name)
        elif src is not None and src.shape == tensor.shape:
            tensor.copy_(src)
            report.copied.append(name)
        elif name == first_conv and src is not None and src.shape[0] == tensor.shape[0] and src.shape[2:] == tensor.shape[2:]:
            report.reinitialised.append(f"{name} (input channels {src.shape[1]} -> {tensor.shape[1]})")
        else:
            mismatched.append(f"{name} {tuple(src.shape) if src is not None else 'missing'} vs {tuple(tensor.shape)}")
    if mismatched:
        raise CheckpointError(
            f"the pretrained network has another topology ({len(mismatched)} tensors differ, e.g. {mismatched[0]})",
            path=path,
            fix="plan this dataset with the pretrained run's topology: voxseg plan DATASET -o WORK --like PRETRAINED_WORK",
        )
    report.dropped = [n for n in source_state if n not in state] + [
        f"output '{n}'" for n in src_names if same_kind and n not in dst_names
    ]
    network.load_state_dict(state)
    return report


def _copy_rows(tensor: torch.Tensor, src: torch.Tensor, rows: list[int | None]) -> None:
    with torch.no_grad():
        for j, r in enumerate(rows):
            if r is not None:
                tensor[j] = src[r]
