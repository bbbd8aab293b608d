"""Recipe: a second output (binary foreground) with its own loss, summed in compute_loss.

voxseg train WORK 3d_fullres 0 --trainer examples/two_output_trainer.py:TwoOutputTrainer
(The same without code: a `heads:` entry in the settings YAML, see docs/multi-output.md.)
"""

import dataclasses

import torch.nn.functional as F

from voxseg.data.labels import IGNORE
from voxseg.model.build import build_from_spec
from voxseg.model.config import HeadSettings
from voxseg.training.trainer import Trainer


class TwoOutputTrainer(Trainer):
    fg_weight = 0.3

    @classmethod
    def build_network_architecture(cls, spec):  # a classmethod: predict rebuilds it from the checkpoint
        fg = HeadSettings(name="fg", target="foreground", loss="bce")
        return build_from_spec(dataclasses.replace(spec, heads=(fg,)))

    def compute_loss(self, outputs, batch):
        parts = self.loss(outputs, batch.targets, batch.weights)  # Dice + CE on "seg"
        target = batch.targets["labels"][0][:, 0]
        valid = target != IGNORE
        bce = F.binary_cross_entropy_with_logits(outputs["fg"][0][:, 0].float()[valid], (target[valid] > 0).float())
        return {**parts, "loss": parts["loss"] + self.fg_weight * bce, "fg/bce": bce}
