"""The Trainer the CLI makes: Lightning's, with ``limit_*_batches`` read as typed.

Lightning types ``limit_{train,val,test,predict}_batches`` as ``Union[float, int]``, so through
LightningCLI the ``1`` a user types (or writes in YAML) becomes ``1.0``, which Lightning reads as
100% of the batches. Here an integer is that many batches and a float a fraction, as written.
"""
from __future__ import annotations

from typing import Optional, Union

import pytorch_lightning as pl
import yaml
from jsonargparse.typing import register_type


class BatchLimit(float):
    """A batch limit as written: ``1`` is one batch, ``1.0`` all of them, ``0.25`` a quarter."""


def _batch_limit(value) -> Union[int, float]:
    if isinstance(value, str):
        value = yaml.safe_load(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"expected a number of batches (an integer >= 0) or a fraction (a float in [0, 1]), "
                         f"got {value!r}")
    return value


register_type(BatchLimit, serializer=lambda v: v, deserializer=_batch_limit)


class Trainer(pl.Trainer):
    """:class:`pytorch_lightning.Trainer`; every argument is Lightning's.

    Args:
        limit_train_batches: training batches per epoch: an integer is that many batches, a float
            the fraction of them (``1`` is one batch, ``1.0`` every batch).
        limit_val_batches: validation batches, likewise.
        limit_test_batches: test batches, likewise.
        limit_predict_batches: prediction batches, likewise.
    """

    def __init__(self, *args, limit_train_batches: Optional[BatchLimit] = None,
                 limit_val_batches: Optional[BatchLimit] = None, limit_test_batches: Optional[BatchLimit] = None,
                 limit_predict_batches: Optional[BatchLimit] = None, **kwargs):
        super().__init__(*args, limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches,
                         limit_test_batches=limit_test_batches, limit_predict_batches=limit_predict_batches,
                         **kwargs)
