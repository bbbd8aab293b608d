"""Settings of the `sampling.` group: which cases, which patches, how many workers.

A plain dataclass validated in `__post_init__` (rather than a settings library) so that the trainer's
typed settings can nest it and every bad value becomes one `SettingsError` line naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voxseg.errors import SettingsError
from voxseg.parallel import default_workers

BUILTIN_CASE_WEIGHTS = ("uniform", "foreground_rarity")


@dataclass
class SamplingSettings:
    oversample_foreground: float = field(
        default=0.33,
        metadata={"help": "fraction of each (global) batch whose patch is forced to contain foreground (nnU-Net: 0.33)"},
    )
    class_probabilities: dict[int, float] | None = field(
        default=None,
        metadata={
            "help": "foreground class -> relative probability of being a forced patch's class; "
            "null: uniform over the classes present in the drawn case (nnU-Net)"
        },
    )
    # Removes the "foreground always in the middle" bias of centred crops (nnU-Net issue 2045).
    center_jitter: float = field(
        default=0.1, metadata={"help": "random shift of a forced patch's centre, as a fraction of the patch per axis"}
    )
    case_weights: str = field(
        default="uniform",
        metadata={
            "help": "how often each case is drawn: uniform, foreground_rarity, or a JSON ({case: weight}) / CSV (case,weight) file"
        },
    )
    weight_floor: float = field(default=0.1, metadata={"help": "every case keeps at least floor/N of the probability mass"})
    weight_cap: float = field(default=10.0, metadata={"help": "every case keeps at most cap/N of the probability mass"})
    adaptive: bool = field(
        default=False, metadata={"help": "re-weight cases every epoch toward their running (EMA) training loss"}
    )
    adaptive_momentum: float = field(default=0.9, metadata={"help": "EMA momentum of each case's training loss (adaptive)"})
    adaptive_blend: float = field(
        default=0.5, metadata={"help": "share of the loss-based weights in the case probabilities (adaptive)"}
    )
    # Weighted sampling then changes the variance of the gradient but not what is optimised.
    correct_bias: bool = field(default=False, metadata={"help": "multiply each sample's loss by its importance weight 1/(N p_i)"})
    workers: int | None = field(
        default=None, metadata={"help": "background loader processes; null: min(cores, 4); 0: in the training process"}
    )
    prefetch: int = field(default=2, metadata={"help": "batches prepared ahead per worker"})

    def __post_init__(self) -> None:
        def bad(name: str, value: object, fix: str) -> SettingsError:
            return SettingsError(f"sampling.{name} = {value!r} is invalid", fix=fix)

        if not 0.0 <= self.oversample_foreground <= 1.0:
            raise bad("oversample_foreground", self.oversample_foreground, "use a fraction in [0, 1]")
        if not 0.0 <= self.center_jitter <= 0.5:
            raise bad("center_jitter", self.center_jitter, "use a fraction of the patch in [0, 0.5]")
        if self.class_probabilities is not None:
            try:
                probs = {int(k): float(v) for k, v in self.class_probabilities.items()}
            except (TypeError, ValueError, AttributeError):
                raise bad("class_probabilities", self.class_probabilities, "give a mapping class -> weight") from None
            if any(k < 1 for k in probs) or any(v < 0 for v in probs.values()) or sum(probs.values()) <= 0:
                raise bad(
                    "class_probabilities",
                    self.class_probabilities,
                    "keys are foreground classes (>= 1), values non-negative with a positive sum",
                )
            self.class_probabilities = probs
        if not 0.0 <= self.weight_floor <= 1.0:
            raise bad("weight_floor", self.weight_floor, "use a value in [0, 1] (fraction of the uniform share 1/N)")
        if self.weight_cap < 1.0:
            raise bad("weight_cap", self.weight_cap, "use a value >= 1 (multiple of the uniform share 1/N)")
        if not 0.0 <= self.adaptive_momentum < 1.0:
            raise bad("adaptive_momentum", self.adaptive_momentum, "use a value in [0, 1)")
        if not 0.0 <= self.adaptive_blend <= 1.0:
            raise bad("adaptive_blend", self.adaptive_blend, "use a value in [0, 1]")
        if self.workers is not None and self.workers < 0:
            raise bad("workers", self.workers, "use 0 (in-process), a positive count, or null for automatic")
        if self.prefetch < 1:
            raise bad("prefetch", self.prefetch, "use at least 1")
        if not isinstance(self.case_weights, str) or not self.case_weights:
            raise bad("case_weights", self.case_weights, f"use one of {BUILTIN_CASE_WEIGHTS} or a JSON/CSV path")

    def resolved_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return min(default_workers(), 4)
