"""`SamplingStats`: what the sampler actually served, written to the run's sampling_stats.json."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class SamplingStats:
    """What the sampler actually served; the trainer writes `to_json()` to sampling_stats.json."""

    case_draws: dict[str, int] = field(default_factory=dict)
    forced: int = 0
    random: int = 0
    patches_with_class: dict[int, int] = field(default_factory=dict)
    probabilities: dict[str, float] = field(default_factory=dict)
    schedule: list[dict] = field(default_factory=list)

    def record(self, case_ids: Sequence[str], forced: Sequence[bool], classes: Sequence[Sequence[int]]) -> None:
        for c, f, ks in zip(case_ids, forced, classes):
            self.case_draws[c] = self.case_draws.get(c, 0) + 1
            self.forced += bool(f)
            self.random += not f
            for k in ks:
                self.patches_with_class[k] = self.patches_with_class.get(k, 0) + 1

    def to_json(self) -> dict:
        n = max(self.forced + self.random, 1)
        return {
            "patches": self.forced + self.random,
            "forced": self.forced,
            "random": self.random,
            "class_patch_fraction": {str(k): v / n for k, v in sorted(self.patches_with_class.items())},
            "case_draws": dict(sorted(self.case_draws.items())),
            "case_probabilities": self.probabilities,
            "schedule": self.schedule,
        }

    def state_dict(self) -> dict:
        return {
            "case_draws": dict(self.case_draws),
            "forced": self.forced,
            "random": self.random,
            "patches_with_class": {str(k): v for k, v in self.patches_with_class.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.case_draws = dict(state["case_draws"])
        self.forced, self.random = int(state["forced"]), int(state["random"])
        self.patches_with_class = {int(k): int(v) for k, v in state["patches_with_class"].items()}
