"""Training, with the seed's semantics by default, resumable at any step.

:func:`fit` runs epochs of steps (:func:`train_step`) until a budget runs out (epochs,
``max_steps``, ``max_time``, early stopping on validation, or a stop asked for by a hook,
e.g. on SIGTERM). ``max_time`` is checked before every step, against the last step's
duration, so a run ends within its budget once it has timed one step; an evaluation
estimated to run far past it is skipped (:func:`evaluation_fits`).

Everything needed to continue a run exactly lives in :class:`Progress`: epoch, step, position
in the epoch, the data RNG's state at the epoch's start, the carried hidden state, the
epoch's partial loss, the best validation loss. Saved with the model, optimiser, schedule and
torch RNG states (:mod:`grulm.run.resume`), it lets a stopped run continue with the very same
losses.

The loop keeps the device busy: losses accumulate on the device, clipping and the optimiser
step use multi-tensor kernels (one fused kernel for plain SGD on the ``cpu`` backend, chosen
once by :func:`build_step`), and the host reads the loss (and checks it is finite) only at an
epoch's end and when a hook asks for it (logging, checkpoints).

==============  ==================================================================
``config``      :class:`TrainConfig`: how to train, recorded in every checkpoint
``progress``    :class:`Progress`, :class:`EpochStats`, :class:`StepStats`
``loop``        :func:`fit`, :func:`train_step`, :class:`Hooks`, the optimiser's update
``splits``      :func:`training_splits`: the tokens a run trains and validates on
==============  ==================================================================
"""

from grulm.data.batches import PARTITIONS
from grulm.train.config import BUDGET_FIELDS, TrainConfig
from grulm.train.loop import (
    EVAL_OVERRUN_FRACTION,
    EVAL_OVERRUN_S,
    Hooks,
    TrainingDiverged,
    build_optimizer,
    build_step,
    check_finite,
    evaluation_fits,
    fit,
    run_fraction,
    train_step,
)
from grulm.train.progress import EpochStats, Progress, StepStats
from grulm.train.splits import training_splits

__all__ = [
    "BUDGET_FIELDS",
    "EVAL_OVERRUN_FRACTION",
    "EVAL_OVERRUN_S",
    "PARTITIONS",
    "EpochStats",
    "Hooks",
    "Progress",
    "StepStats",
    "TrainConfig",
    "TrainingDiverged",
    "build_optimizer",
    "build_step",
    "check_finite",
    "evaluation_fits",
    "fit",
    "run_fraction",
    "train_step",
    "training_splits",
]
