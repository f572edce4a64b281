"""W&B settings of a run: the config block, offline by default, and the wandb settings object.

Library modules do not import wandb; W&B enters through Lightning's ``WandbLogger``, made by
the CLI with these options (wandb is imported here only to build its ``Settings``).
"""
from __future__ import annotations

import netrc
import os
from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class WandbOptions:
    """W&B run settings (``--wandb false`` logs to CSV only).

    Args:
        project, entity, group, tags: as in ``wandb.init``.
        name: the run's display name; default: the run directory's name.
        flush_interval_s: seconds between writes of the run's data to its ``.wandb`` file
            (wandb's default is 15): how far behind a running job's file (and a dashboard fed
            from it) may be. A job killed hard loses nothing of it: the resumed run logs what
            W&B had not written (``unifews_dist.wandb_history``).
    """
    project: str = "unifews_dist"
    name: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    entity: Optional[str] = None
    flush_interval_s: float = 2.0


def wandb_settings(flush_interval_s: float):
    if not flush_interval_s >= 0:
        raise ValueError(f"wandb.flush_interval_s must be >= 0, got {flush_interval_s}")
    import wandb
    try:
        return wandb.Settings(x_transaction_log_flush_interval=flush_interval_s)
    except Exception:  # an older wandb without the setting: its default behaviour
        return None


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def default_wandb_mode() -> None:
    """Offline unless the user chose a mode or is logged in (no server is assumed reachable)."""
    if "WANDB_MODE" not in os.environ and not wandb_logged_in():
        os.environ["WANDB_MODE"] = "offline"
