"""Test-only callback: all-gathers the weight masks every rank used at every training step (after
the step, before the next forward, whose DDP buffer broadcast would overwrite them), and
weights, masks, step counts and thresholds at the end of training (or of a test run)."""
import gc
import json
import os

import torch
from pytorch_lightning import Callback


class RankCheck(Callback):
    def __init__(self, out: str, stage: str = "fit"):
        self.out, self.stage = out, stage
        self.step_mask_diff, self.steps_checked = 0.0, 0

    @staticmethod
    def _masks(pl_module):
        return torch.cat([b.flatten().float() for n, b in pl_module.named_buffers() if n.endswith("weight_mask")])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        g = trainer.strategy.all_gather(self._masks(pl_module))
        if trainer.world_size > 1:
            self.step_mask_diff = max(self.step_mask_diff, float((g - g[0]).abs().max()))
        self.steps_checked += 1

    def on_train_end(self, trainer, pl_module):
        if self.stage == "fit":
            self._write(trainer, pl_module)

    def on_test_end(self, trainer, pl_module):
        if self.stage == "test":
            self._write(trainer, pl_module)

    def _write(self, trainer, pl_module):
        params = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        masks = self._masks(pl_module)
        steps = torch.tensor([float(trainer.global_step)])
        thr = torch.tensor(pl_module.model.thr_a + pl_module.model.thr_w, dtype=torch.float64)
        # objects the process found frozen (gc.freeze) when it started: > 0 in a rank forked by
        # unifews_dist.launch, 0 in a fresh interpreter
        frozen = torch.tensor([float(gc.get_freeze_count())])
        self.threads = trainer.strategy.all_gather(torch.tensor([float(torch.get_num_threads())])).view(-1).tolist()
        gp, gm, gs, gt, gf = (trainer.strategy.all_gather(t) for t in (params, masks, steps, thr, frozen))
        if trainer.world_size == 1:
            gp, gm, gs, gt, gf = (t.unsqueeze(0) for t in (gp, gm, gs, gt, gf))
        if trainer.is_global_zero:
            with open(self.out, "w") as f:
                json.dump({"world": trainer.world_size, "steps": gs.view(-1).tolist(),
                           "param_diff": float((gp - gp[0]).abs().max()), "mask_diff": float((gm - gm[0]).abs().max()),
                           "mask_density": float(gm[0].mean()), "step_mask_diff": self.step_mask_diff,
                           "steps_checked": self.steps_checked,
                           "thr_diff": float((gt - gt[0]).abs().max()), "thr": gt[0].tolist(), "pid": os.getpid(),
                           "frozen": gf.view(-1).tolist(), "threads": self.threads}, f)


class SlowSteps(Callback):
    """Test-only: sleeps after every training step so a job is still running when a test
    interrupts it."""

    def __init__(self, seconds: float = 0.5):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import time
        time.sleep(self.seconds)
