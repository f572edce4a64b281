"""Library advice that does not apply to a run of this CLI, silenced by the libraries' public
switches (warning filters, a logging filter), so that what a run prints is what it has to say."""
from __future__ import annotations

import logging
import warnings


class _DropTips(logging.Filter):
    """Lightning's 'Tip: ... try installing litlogger' line, printed by every Trainer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def quiet_library_advice() -> None:
    """Filters for Lightning's advice that does not apply here:
    - a resumed run's checkpoint folder is not empty by design;
    - the monitors log values they already summed over ranks (no ``sync_dist`` needed);
    - 'srun is available but not used': the SLURM job scripts start the ranks themselves (with
      the forking launcher, or srun with ``LAUNCHER=srun``), a plain command on a login node is no
      SLURM job;
    - the test after ``fit`` reads the first ``ModelCheckpoint`` (the at-target best one), as meant;
    - a deprecation inside Lightning's own use of torch's pytree (nothing a user can change);
    - the litlogger advertisement."""
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r"It is recommended to use .self.log\(.(test/)?"
                                              r"(sparsity|macs|throughput|time|schedule)/")
    warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
    warnings.filterwarnings("ignore", message=r"`\.test\(ckpt_path=\"best\"\)` is called with Trainer configured "
                                              "with multiple `ModelCheckpoint` callbacks")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in log.filters):
        log.addFilter(_DropTips())
