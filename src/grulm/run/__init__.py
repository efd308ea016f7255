"""A training run as a library object.

Describe a run with :class:`RunSpec` (from a preset, with overrides), train it with
:func:`start`, continue it with :func:`resume`; both return a :class:`RunResult`. The run
directory they write is what ``grulm train --out`` writes: the last checkpoint (resumable),
``best/``, ``metrics.jsonl`` and the perplexity plot::

    from grulm.run import RunSpec, start, resume

    result = start(RunSpec.from_preset("d2l", epochs=4, seed=0), "runs/four")
    result = resume("runs/four", epochs=8)
    print(result.val_perplexity)

Modules: :mod:`~grulm.run.spec` (the settings), :mod:`~grulm.run.session` (start, resume),
:mod:`~grulm.run.context` (the run as hooks see it; its result),
:mod:`~grulm.run.hooks` (what is written while training; hooks for callers),
:mod:`~grulm.run.resume` (training state and the checks a resume must pass),
:mod:`~grulm.run.directory` (the run directory: lock, refusal, sweep).
"""

from grulm.run.context import RunContext, RunResult
from grulm.run.hooks import RunHook
from grulm.run.session import resume, start
from grulm.run.spec import DataSpec, ModelSpec, OutputSpec, RunSpec

__all__ = ["DataSpec", "ModelSpec", "OutputSpec", "RunContext", "RunHook", "RunResult",
           "RunSpec", "resume", "start"]
