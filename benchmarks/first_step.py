"""A callback for benchmarks: prints the seconds from launch (``BENCH_T0``, set by the
benchmark) to the first training batch, once per rank."""
import os
import time

from pytorch_lightning.callbacks import Callback


class FirstStep(Callback):
    def __init__(self):
        self.done = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.done:
            self.done = True
            print(f"[bench] first step at {time.time() - float(os.environ.get('BENCH_T0', time.time())):.2f} s",
                  flush=True)
