"""Recipe: replace Dice + CE by a class-weighted cross-entropy (one hook: build_loss).

voxseg train WORK 3d_fullres 0 --trainer examples/weighted_ce_trainer.py:WeightedCETrainer
(The same without code: --set loss.class_weights=[0.5,1,4] keeps Dice and weights CE.)
"""

import torch
import torch.nn.functional as F

from voxseg.data.labels import IGNORE
from voxseg.training.trainer import Trainer


class WeightedCETrainer(Trainer):
    class_weight = (0.5, 1.0, 4.0)  # background, organ, lesion of the demo data

    def build_loss(self):
        weight = torch.tensor(self.class_weight, device=self.device)

        def loss(outputs, targets, sample_weights=None):
            logits, target = outputs["seg"][0].float(), targets["labels"][0][:, 0].long()
            ce = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
            return {"loss": ce, "seg/ce": ce}

        return loss
