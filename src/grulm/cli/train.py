"""``grulm train``: train a GRU language model; with no flags, the seed experiment of d2l §9.1.

Settings come from a preset (``--preset``, default ``d2l``: the seed), or from the
checkpoint when resuming (``--resume DIR``); flags given explicitly override them. A run
directory holds::

    checkpoint.json, tensors-*.safetensors   the last checkpoint (resumable)
    best/                                   the checkpoint with the best validation loss
    metrics.jsonl                           per-epoch and every-K-steps metrics
    perplexity.png                          train and validation perplexity per epoch
    tensorboard/                            the same scalars, when tensorboard is installed
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from grulm import backends
from grulm.checkpoint import load_checkpoint, save_checkpoint
from grulm.compute import check_step_fits_time
from grulm.data.batches import check_batchable, epoch_batches
from grulm.data.corpus import Corpus, load_corpus
from grulm.data.splits import Splits
from grulm.data.text import CLEANINGS, TOKENS
from grulm.devices import resolve_device
from grulm.errors import CheckpointError, ConfigError, DataError
from grulm.evaluate import evaluate
from grulm.generate import TextFormat, predict
from grulm.memory import check_fits, describe, training_bytes
from grulm.metrics_log import AuxiliaryFileWarning, MetricsLog
from grulm.model import GRULM, INITS, INPUT_KINDS, VARIANTS, GRUConfig
from grulm.optim import IMPLEMENTATIONS, OPTIMIZERS, SCHEDULES, Schedule
from grulm.plot import save_perplexity_plot
from grulm.presets import PRESETS
from grulm.resume import differences, restore_training_state, training_state, vocab_differences
from grulm.run_directory import (
    BEST_DIR,
    METRICS_FILE,
    PLOT_FILE,
    TENSORBOARD_DIR,
    open_run_directory,
)
from grulm.train import (
    BUDGET_FIELDS,
    PARTITIONS,
    EpochStats,
    Hooks,
    Progress,
    StepStats,
    TrainConfig,
    build_optimizer,
    check_finite,
    evaluation_fits,
    fit,
    training_splits,
)

DATA_KEYS = ("data", "cleaning", "token", "min_freq", "max_tokens", "split_fractions")
MODEL_KEYS = ("hidden_size", "num_layers", "variant", "input_kind", "embedding_size",
              "dropout", "init", "backend")
TRAIN_KEYS = tuple(TrainConfig.__dataclass_fields__)
RUN_KEYS = ("checkpoint_every_epochs", "checkpoint_every_steps", "log_every_steps",
            "sample_prefixes")
RUN_DEFAULTS = {"checkpoint_every_epochs": 10, "checkpoint_every_steps": 0,
                "log_every_steps": 100, "sample_prefixes": ["time traveller", "traveller"]}
SEED_DATA = "timemachine"
SEED_MAX_TOKENS = 10_000
# Memorisation: training perplexity near 1 with validation perplexity this many times higher.
MEMORISED_TRAIN_PPL, MEMORISED_RATIO = 1.5, 2.0
EXIT_ON_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}


def add_parser(subparsers) -> None:
    presets = "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values())
    parser = subparsers.add_parser(
        "train",
        help="train a model (no flags: the seed experiment)",
        description="Train a GRU language model, validating on held-out text, and save "
        "checkpoints. With no flags this is the seed experiment of d2l §9.1: The Time "
        "Machine (first 10,000 characters, letters only; validation on the last 10% of the "
        "book), 1 layer of 256, reset-before GRU, SGD lr 1, clipping 1, batch 32 × 35 steps, "
        "500 epochs. Unset flags take the preset's value (or, with --resume, the run's).",
        epilog=f"presets — {presets}",
    )
    group = parser.add_argument_group("recipe")
    group.add_argument("--preset", choices=list(PRESETS), default=None,
                       help="the recipe unset flags come from [default: d2l]")
    group.add_argument("--resume", type=Path, default=None, metavar="DIR",
                       help="continue the run in DIR exactly where it stopped (its settings; "
                       "only budgets such as --epochs/--max-time may change)")

    group = parser.add_argument_group("data")
    group.add_argument("--data", help="built-in corpus name (timemachine, tinyshakespeare) or "
                       "a text file [d2l: timemachine]")
    group.add_argument("--cleaning", choices=CLEANINGS,
                       help="d2l: letters only, lower-cased (the seed); raw: UTF-8, a leading BOM "
                       "dropped, universal newlines; none: UTF-8 exactly as is "
                       "[default: d2l for timemachine, raw otherwise]")
    group.add_argument("--token", choices=TOKENS, help="token unit [char]")
    group.add_argument("--min-freq", type=int, help="tokens seen fewer times map to <unk> [0]")
    group.add_argument("--max-tokens", type=int,
                       help="train on the first N tokens of the training split only; 0 = all "
                       f"[{SEED_MAX_TOKENS} for timemachine, all otherwise]")
    group.add_argument("--split-fractions", type=_fractions, metavar="TRAIN,VAL[,TEST]",
                       help="contiguous splits in this order, e.g. 0.9,0.1 or 0.8,0.1,0.1 "
                       "[default: validation = the last 10%% of the text, training from the "
                       "start]")

    group = parser.add_argument_group("model")
    group.add_argument("--hidden-size", type=int, help="H [256]")
    group.add_argument("--num-layers", type=int, help="stacked GRU layers [1]")
    group.add_argument("--variant", choices=VARIANTS,
                       help="reset_before: the textbook GRU; reset_after: cuDNN's / nn.GRU's")
    group.add_argument("--input", dest="input_kind", choices=INPUT_KINDS,
                       help="one-hot (the seed) or a learned embedding")
    group.add_argument("--embedding-size", type=int,
                       help="embedding width for --input embedding [hidden size]")
    group.add_argument("--dropout", type=float, help="dropout between layers [0]")
    group.add_argument("--init", choices=INITS,
                       help="d2l: randn*0.01 weights, zero biases; torch: nn.GRU's uniform")
    group.add_argument("--backend", choices=backends.backend_names(),
                       help="recurrence implementation; auto picks the fastest that fits")

    group = parser.add_argument_group("optimisation")
    group.add_argument("--epochs", type=int, help="passes over the training split [500]")
    group.add_argument("--batch-size", type=int, help="B [32]")
    group.add_argument("--num-steps", type=int, help="T, time steps per sequence [35]")
    group.add_argument("--lr", type=float, help="(peak) learning rate [1]")
    group.add_argument("--clip", type=float, help="max global gradient norm [1]")
    group.add_argument("--partition", choices=PARTITIONS,
                       help="sequential carries the state across batches; random resets it")
    group.add_argument("--seed", type=int, help="seeds weights, dropout and data order [0]")
    group.add_argument("--optimizer", choices=OPTIMIZERS, help="[sgd]")
    group.add_argument("--optimizer-impl", choices=IMPLEMENTATIONS,
                       help="PyTorch kernels: foreach (multi-tensor) or fused [foreach]")
    group.add_argument("--weight-decay", type=float, help="on weight matrices only [0]")
    group.add_argument("--beta1", type=float, help="Adam β1 [0.9]")
    group.add_argument("--beta2", type=float, help="Adam β2 [0.999]")
    group.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule [constant]")
    group.add_argument("--warmup-steps", type=int, help="linear warm-up steps [0]")
    group.add_argument("--min-lr-ratio", type=float, help="cosine: final lr / peak lr [0]")
    group.add_argument("--step-size", type=int, help="step: steps between decays [1000]")
    group.add_argument("--gamma", type=float, help="step: decay factor [0.5]")
    group.add_argument("--plateau-patience", type=int,
                       help="plateau: validations without improvement before a decay [2]")
    group.add_argument("--plateau-factor", type=float, help="plateau: decay factor [0.5]")
    group.add_argument("--max-steps", type=int, help="stop after N optimiser steps")
    group.add_argument("--max-time", type=float, metavar="SECONDS",
                       help="stop after this much training time, with a checkpoint")
    group.add_argument("--early-stop", type=int, metavar="N",
                       help="stop after N validations without a new best; 0 = never [0]")
    group.add_argument("--eval-every", type=int, metavar="EPOCHS",
                       help="validate every N epochs (and after the last) [1]")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    group.add_argument("--threads", type=int, default=None,
                       help="CPU threads for PyTorch [PyTorch's default: one per core]")

    group = parser.add_argument_group("output")
    group.add_argument("--out", type=Path, default=None,
                       help="run directory [runs/seed; with --preset NAME, runs/NAME; with "
                       "--resume, DIR]")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out (its checkpoints, best/, metrics "
                       "and plot; nothing else there) instead of refusing")
    group.add_argument("--checkpoint-every-epochs", type=int, metavar="N",
                       help="save a resumable checkpoint every N epochs; 0 = only at the end")
    group.add_argument("--checkpoint-every-steps", type=int, metavar="N",
                       help="also every N optimiser steps; 0 = never [0]")
    group.add_argument("--log-every-steps", type=int, metavar="K",
                       help="a metrics.jsonl line every K steps (and every epoch); 0 = epochs "
                       "only")
    group.add_argument("--sample-every", type=int, default=10, metavar="EPOCHS",
                       help="print a greedy sample every N epochs; 0 = never")
    group.add_argument("--no-tensorboard", action="store_true",
                       help="no TensorBoard events even when tensorboard is installed")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _fractions(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated fractions such as 0.9,0.1, got {text!r}"
        ) from None


def resolve_settings(args: argparse.Namespace, saved: dict[str, Any] | None) -> dict[str, Any]:
    """Every setting: the preset's (or the resumed run's), then the flags given explicitly.

    When ``--data`` names a different corpus than the preset's, the preset's corpus-specific
    choices (cleaning, max tokens, split) give way to the defaults for that corpus.
    """
    explicit = {k: v for k, v in vars(args).items()
                if k in (*DATA_KEYS, *MODEL_KEYS, *TRAIN_KEYS, *RUN_KEYS) and v is not None}
    if saved is not None:
        return {**saved, **explicit}
    preset = PRESETS[args.preset or "d2l"]
    settings = {"backend": "auto", **TrainConfig().to_dict(), **RUN_DEFAULTS,
                **preset.settings()}
    if "data" in explicit and explicit["data"] != preset.data.get("data"):
        for key in ("cleaning", "max_tokens", "split_fractions"):
            settings.pop(key, None)
    settings.update(explicit)
    seed_data = settings["data"] == SEED_DATA
    settings.setdefault("cleaning", "d2l" if seed_data else "raw")
    settings.setdefault("max_tokens", SEED_MAX_TOKENS if seed_data else 0)
    settings.setdefault("split_fractions", None)
    settings.setdefault("token", "char")
    settings.setdefault("min_freq", 0)
    return settings


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.max_time is not None and not args.max_time > 0:
        raise ConfigError(f"--max-time must be a positive number of seconds, got {args.max_time}")
    if args.sample_every < 0:
        raise ConfigError(f"--sample-every must be ≥ 0, got {args.sample_every}")
    checkpoint = None
    if args.resume is not None:
        if args.preset is not None:
            raise ConfigError("--preset cannot change a run being resumed; drop --preset")
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            raise ConfigError("--resume continues in its own directory; drop --out or give "
                              "the same directory")
        if args.overwrite:
            raise ConfigError("--overwrite starts a new run and --resume continues one; drop "
                              "one of them")
        out = args.resume
        mode = "resume"
    else:
        out = args.out or Path("runs") / (args.preset or "seed")
        mode = "overwrite" if args.overwrite else "new"
    if args.input_kind == "onehot" and args.embedding_size is not None:
        raise ConfigError("--embedding-size sets the width of a learned embedding; one-hot "
                          "input has the vocabulary's width: drop --embedding-size or use "
                          "--input embedding")
    device = resolve_device(args.device)
    with open_run_directory(out, mode) as run_directory:
        if mode == "resume":
            checkpoint = load_checkpoint(out)
        return _train(args, out, run_directory, checkpoint, device, started)


def _train(args, out: Path, run_directory, checkpoint, device, started: float) -> int:
    settings = resolve_settings(args, _saved_settings(checkpoint))
    for key in ("checkpoint_every_epochs", "checkpoint_every_steps", "log_every_steps"):
        if settings[key] < 0:
            raise ConfigError(f"--{key.replace('_', '-')} must be ≥ 0, got {settings[key]}")
    if settings["max_tokens"] < 0:
        raise ConfigError(f"--max-tokens must be ≥ 0 (0 = all), got {settings['max_tokens']}")
    try:
        train_config = TrainConfig(**{k: settings[k] for k in TRAIN_KEYS})
    except TypeError as error:  # a value of the wrong type in an edited checkpoint
        raise ConfigError(f"invalid training settings ({error})") from None
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be ≥ 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    corpus = load_corpus(settings["data"], cleaning=settings["cleaning"],
                         token=settings["token"], min_freq=settings["min_freq"],
                         progress=not args.no_progress)
    splits = training_splits(corpus.ids, settings["max_tokens"], settings["split_fractions"])
    _check_splits(splits, train_config)
    if settings["data"] != SEED_DATA and settings["sample_prefixes"] == RUN_DEFAULTS[
            "sample_prefixes"]:
        # "time traveller" means nothing to another text: prime samples with its opening.
        opening = splits.train[: 16 if settings["token"] == "char" else 3]
        settings["sample_prefixes"] = [corpus.decode(opening)]
    data_meta = {**corpus.describe(), "max_tokens": settings["max_tokens"],
                 "split_fractions": settings["split_fractions"],
                 "ranges": {k: list(v) for k, v in splits.ranges.items()}}
    model_config = GRUConfig(vocab_size=len(corpus.vocab),
                             **{k: settings[k] for k in MODEL_KEYS})
    batch, steps = train_config.batch_size, train_config.num_steps
    check_fits(training_bytes(model_config, batch, steps, train_config.optimizer),
               f"training {describe(model_config, batch, steps)}",
               "use a smaller --hidden-size, --num-layers, --batch-size or --num-steps",
               device=device)
    check_step_fits_time(model_config, batch, steps, train_config.max_time, device)
    if checkpoint is None:
        torch.manual_seed(train_config.seed)
    model = GRULM(model_config).to(device)
    optimizer = build_optimizer(model, train_config)
    schedule = Schedule(train_config.schedule_config(), train_config.lr)
    progress = None
    if checkpoint is not None:
        _refuse_differences(checkpoint, model_config, corpus, data_meta, train_config)
        model.load_state_dict(checkpoint.model.state_dict())
        progress = restore_training_state(checkpoint, optimizer, schedule, device)
        _check_budget_left(progress, train_config)
    train_ids, val_ids = splits.train.to(device), splits.val
    backend = model.backend().name
    print(f"grulm train: {settings['data']} ({len(train_ids):,} training, "
          f"{0 if val_ids is None else len(val_ids):,} validation {settings['token']} tokens, "
          f"vocab {len(corpus.vocab)}), {model_config.num_layers}×{model_config.hidden_size} "
          f"{model_config.variant} GRU, {model_config.input_kind} input, backend {backend}, "
          f"{train_config.optimizer} lr {train_config.lr:g} {train_config.schedule}, {device}"
          + (f"; resuming at epoch {progress.epoch + 1}, step {progress.step}"
             if progress is not None else ""), file=sys.stderr)

    def make_batches(rng: random.Random):
        return epoch_batches(train_ids, train_config.batch_size, train_config.num_steps, rng,
                             train_config.partition)

    if checkpoint is None and args.overwrite:
        run_directory.clear_previous_run()  # only now, when every check above has passed
    run_directory.sweep()
    run_settings = {k: settings[k] for k in RUN_KEYS}
    base_meta = {"data": data_meta, "train": train_config.to_dict(), "run": run_settings,
                 "preset": settings.get("preset", args.preset or "d2l")}
    hooks = RunHooks(out, model, corpus, optimizer, schedule, base_meta, settings,
                     train_config, device, backend, args,
                     steps_per_epoch=len(make_batches(random.Random(0))),
                     resume_step=None if progress is None else progress.step)
    progress = progress if progress is not None else Progress.start(train_config.seed)
    try:
        with _stop_on_signals(hooks):
            fit(model, make_batches, train_config, val_ids=val_ids, progress=progress,
                optimizer=optimizer, schedule=schedule, hooks=hooks)
        hooks.bar.close()
        return hooks.finish(progress, val_ids, time.perf_counter() - started)
    finally:
        hooks.close()


class RunHooks(Hooks):
    """The CLI's side of the loop: progress bar, metrics, samples, checkpoints, signals."""

    def __init__(self, out: Path, model: GRULM, corpus: Corpus, optimizer, schedule,
                 base_meta: dict, settings: dict, config: TrainConfig, device, backend: str,
                 args: argparse.Namespace, *, steps_per_epoch: int,
                 resume_step: int | None) -> None:  # fmt: skip
        self.out, self.model, self.corpus = out, model, corpus
        self.optimizer, self.schedule = optimizer, schedule
        self.base_meta, self.settings, self.config = base_meta, settings, config
        self.device, self.backend, self.args = device, backend, args
        self.signal: str | None = None
        self.log = MetricsLog(out / METRICS_FILE,
                              None if args.no_tensorboard else out / TENSORBOARD_DIR,
                              resume_step=resume_step)
        total = config.epochs * steps_per_epoch
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        self.bar = tqdm(total=total, initial=resume_step or 0, unit="step",
                        disable=args.no_progress or not sys.stderr.isatty(), file=sys.stderr,
                        dynamic_ncols=True)
        self.window_start, self.window_tokens = time.perf_counter(), 0
        self.saved_step: int | None = resume_step
        self.plot_path: Path | None = None
        self.plot_failed = False

    # -- fit's hooks ---------------------------------------------------------------------------

    def on_step(self, progress: Progress, stats: StepStats) -> None:
        self.bar.update(1)
        self.window_tokens += stats.tokens
        every = self.settings["log_every_steps"]
        if every and stats.step % every == 0:
            loss = stats.loss.item()  # waits for the device, only when logging
            check_finite(self.model, progress)
            now = time.perf_counter()
            self.log.write({
                "kind": "step", "step": stats.step, "epoch": progress.epoch + 1,
                "loss": loss, "perplexity": _exp(loss), "lr": stats.lr,
                "grad_norm": stats.grad_norm.item(),
                "tokens_per_s": self.window_tokens / max(now - self.window_start, 1e-9),
            })
            self.window_start, self.window_tokens = now, 0
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{stats.lr:.2g}")
        every = self.settings["checkpoint_every_steps"]
        if every and stats.step % every == 0:
            self.save(progress)

    def on_epoch(self, progress: Progress, stats: EpochStats) -> None:
        record = {"kind": "epoch", "step": progress.step, "epoch": stats.epoch,
                  "loss": stats.loss, "perplexity": stats.perplexity, "lr": stats.lr,
                  "tokens_per_s": stats.tokens_per_s, "seconds": stats.seconds}
        if stats.val_loss is not None:
            record.update(val_loss=stats.val_loss, val_perplexity=stats.val_perplexity)
        self.log.write(record)
        self.window_start, self.window_tokens = time.perf_counter(), 0
        postfix = {"epoch": stats.epoch, "ppl": f"{stats.perplexity:.2f}"}
        if stats.val_loss is not None:
            postfix["val_ppl"] = f"{stats.val_perplexity:.2f}"
        self.bar.set_postfix(postfix)
        sample_every = self.args.sample_every
        if sample_every and stats.epoch % sample_every == 0:
            val = "" if stats.val_loss is None else f", val ppl {stats.val_perplexity:.2f}"
            self.bar.write(f"epoch {stats.epoch} (train ppl {stats.perplexity:.2f}{val}): "
                           f"{self.sample(self.prefixes[0])}", file=sys.stderr)
        if progress.best_epoch == stats.epoch:
            self.save_best(progress)
        every = self.settings["checkpoint_every_epochs"]
        if every and stats.epoch % every == 0:
            self.save(progress)

    def should_stop(self) -> str | None:
        return self.signal

    # -- checkpoints, samples, the final report -------------------------------------------------

    @property
    def prefixes(self) -> list[str]:
        return self.settings["sample_prefixes"]

    def sample(self, prefix: str) -> str:
        was_training = self.model.training
        self.model.eval()
        text_format = TextFormat(token=self.settings["token"], cleaning=self.settings["cleaning"])
        text = predict(self.model, self.corpus.vocab, prefix, 50, text_format)
        self.model.train(was_training)
        return text

    def meta(self, progress: Progress) -> dict[str, Any]:
        history = progress.history
        tokens = sum(s.tokens for s in history) + progress.tokens
        seconds = sum(s.seconds for s in history) + progress.epoch_seconds
        last = history[-1] if history else None
        metrics = {
            "epochs": progress.epoch, "step": progress.step,
            "loss": last.loss if last else None,
            "perplexity": last.perplexity if last else None,
            "best_val_loss": _finite(progress.best_val_loss), "best_epoch": progress.best_epoch,
            "tokens_per_s": tokens / seconds if seconds else None,
            "train_seconds": progress.seconds, "device": str(self.device),
            "backend": self.backend,
            "perplexity_history": [s.perplexity for s in history],
            "val_perplexity_history": [s.val_perplexity for s in history],
        }
        return {**self.base_meta, "metrics": metrics}

    def save(self, progress: Progress) -> None:
        """The resumable checkpoint in the run directory, and the plot."""
        check_finite(self.model, progress)  # never overwrite a good checkpoint with NaNs
        state, tensors = training_state(self.model, self.optimizer, self.schedule, progress)
        save_checkpoint(self.out, self.model, self.corpus.vocab,
                        {**self.meta(progress), "training_state": state}, tensors)
        self.saved_step = progress.step
        self.plot_path = self.plot(progress) or self.plot_path

    def save_best(self, progress: Progress) -> None:
        check_finite(self.model, progress)
        save_checkpoint(self.out / BEST_DIR, self.model, self.corpus.vocab, self.meta(progress))

    def plot(self, progress: Progress) -> Path | None:
        history = progress.history
        if not history:
            return None
        curves = {"train": [s.perplexity for s in history]}
        if any(s.val_loss is not None for s in history):
            curves["validation"] = [math.nan if s.val_perplexity is None else s.val_perplexity
                                    for s in history]
        path = self.out / PLOT_FILE
        try:
            return save_perplexity_plot(path, curves,
                                        title=f"grulm train --data {self.settings['data']}")
        except (OSError, ValueError, RuntimeError) as error:  # PIL's disk full, a font…
            path.with_name(f".{path.name}.part").unlink(missing_ok=True)
            if not self.plot_failed:
                warnings.warn(AuxiliaryFileWarning(
                    f"cannot write the plot {path} ({getattr(error, 'strerror', None) or error});"
                    " checkpoints and metrics are still saved"), stacklevel=2)
            self.plot_failed = True
            return None

    def close(self) -> None:
        self.bar.close()
        self.log.close()

    def finish(self, progress: Progress, val_ids, wall_seconds: float) -> int:
        """Save, report, and return the exit status."""
        reason = progress.stop_reason
        if reason in EXIT_ON_SIGNAL:
            self.save(progress)
            print(f"grulm train: stopped by {reason} at epoch {progress.epoch + 1}, step "
                  f"{progress.step} (batch {progress.batch} of the epoch); checkpoint saved "
                  f"in {self.out}; continue with: grulm train --resume {self.out}",
                  file=sys.stderr)
            return EXIT_ON_SIGNAL[reason]
        last = progress.history[-1] if progress.history else None
        train_loss = progress.partial_loss() if progress.batch else last.loss
        val = None
        tokens_per_s = self.meta(progress)["metrics"]["tokens_per_s"] or math.nan
        if val_ids is not None:
            if progress.batch == 0 and last is not None and last.val_loss is not None:
                val = last.val_loss
            elif evaluation_fits(self.config, progress.seconds, len(val_ids), tokens_per_s):
                val = evaluate(self.model, val_ids, self.config.batch_size,
                               self.config.num_steps).loss
                if val < progress.best_val_loss:
                    progress.best_val_loss, progress.best_epoch = val, progress.epoch
                    self.save_best(progress)
            else:
                print(f"grulm train: validation skipped: evaluating {len(val_ids):,} tokens "
                      f"would take about {len(val_ids) / tokens_per_s:.0f} s, past --max-time "
                      f"{self.config.max_time:g}; evaluate later with: grulm eval {self.out}",
                      file=sys.stderr)
        self.save(progress)
        self.log.write({"kind": "final", "step": progress.step, "epoch": progress.epoch,
                        "loss": train_loss, "perplexity": _exp(train_loss), "val_loss": val,
                        "val_perplexity": None if val is None else _exp(val),
                        "stop_reason": reason, "seconds": progress.seconds})
        if reason != "epochs":
            if reason == "max_steps":
                why = f"--max-steps {self.config.max_steps} reached"
            elif reason == "max_time":
                why = f"--max-time {self.config.max_time:g} s used"
            else:
                why = (f"no better validation for {self.config.early_stop} evaluations "
                       "(early stopping)")
            epoch = progress.epoch + (progress.batch > 0)
            print(f"grulm train: stopped in epoch {epoch}, step {progress.step}: {why}",
                  file=sys.stderr)
        unit = "char" if self.settings["token"] == "char" else "word"
        train_ppl = _exp(train_loss)
        if val is not None:
            print(f"validation perplexity {_exp(val):.2f} ({val:.4f} nats/{unit}, "
                  f"{val / math.log(2):.4f} bits/{unit}); training perplexity {train_ppl:.2f}; "
                  f"best validation perplexity {_exp(progress.best_val_loss):.2f} (saved in "
                  f"{self.out / 'best'})")
            if train_ppl < MEMORISED_TRAIN_PPL and _exp(val) > MEMORISED_RATIO * train_ppl:
                print(f"memorisation: training perplexity {train_ppl:.2f} but validation "
                      f"perplexity {_exp(val):.2f}: the model recites its "
                      f"{self.base_meta['data']['ranges']['train'][1]:,} training tokens and "
                      "does not generalise to held-out text (train on more text, e.g. "
                      "--max-tokens 0, or see --preset shakespeare)")
        print(f"perplexity {train_ppl:.1f}, {tokens_per_s:,.0f} tokens/s on {self.device}")
        for prefix in self.prefixes:
            print(self.sample(prefix))
        metrics = self.log.path if self.log.active else None
        written = [("checkpoint", self.out), ("best", self.out / BEST_DIR),
                   ("plot", self.plot_path), ("metrics", metrics)]
        print("   ".join(f"{name}: {path}" for name, path in written
                         if path is not None and Path(path).exists())
              + f"   ({wall_seconds:.0f} s)", file=sys.stderr)
        return 0


def _exp(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _saved_settings(checkpoint) -> dict[str, Any] | None:
    """The settings a resumed run was trained with (its flags' values)."""
    if checkpoint is None:
        return None
    meta = checkpoint.meta  # open_run_directory checked that it holds training state
    data, train, run = meta.get("data"), meta.get("train"), meta.get("run", {})
    damaged = [name for name, value, ok in (
        ("data", data, lambda d: isinstance(d.get("source"), str)),
        ("train", train, lambda t: set(t) <= set(TRAIN_KEYS)),
        ("run", run, lambda r: set(r) <= set(RUN_KEYS)),
    ) if not isinstance(value, dict) or not ok(value)]
    if damaged:
        raise CheckpointError(
            f"{checkpoint.directory / 'checkpoint.json'}: the field(s) {', '.join(damaged)} "
            "are missing or damaged, so the run's settings are unknown and it cannot be "
            "resumed; start a new run (its model can still be used by eval and generate)"
        )
    return {
        "data": data["source"], **{k: data.get(k) for k in DATA_KEYS if k != "data"},
        **{k: v for k, v in checkpoint.model.config.to_dict().items() if k != "vocab_size"},
        **TrainConfig().to_dict(), **train, **RUN_DEFAULTS, **run,
        "preset": meta.get("preset"),
    }


def _refuse_differences(checkpoint, model_config: GRUConfig, corpus: Corpus, data_meta: dict,
                        train_config: TrainConfig) -> None:  # fmt: skip
    saved_train = checkpoint.meta["train"]
    problems = [
        *differences("model", checkpoint.model.config.to_dict(), model_config.to_dict(),
                     ignore=("backend",)),
        *vocab_differences(checkpoint.vocab, corpus.vocab),
        *differences("data", checkpoint.meta["data"], data_meta),
        *differences("train", saved_train, train_config.to_dict(), ignore=BUDGET_FIELDS),
    ]
    if problems:
        raise ConfigError(
            f"cannot resume {checkpoint.directory}: this run differs from the one saved there:\n  "
            + "\n  ".join(problems)
            + "\nresume with the run's own settings (only --epochs, --max-steps, --max-time, "
            "--early-stop, --eval-every, --backend and output flags may change), or start a "
            "new run with another --out"
        )


def _check_splits(splits: Splits, config: TrainConfig) -> None:
    """Training needs one batch whatever the offset; a held-out split needs one token per
    evaluation stream plus one (it is read in ``batch_size`` streams, state carried)."""
    check_batchable(splits.train, config.batch_size, config.num_steps, config.partition,
                    what="the train split")
    for name in ("val", "test"):
        split = getattr(splits, name)
        if split is not None and len(split) < config.batch_size + 1:
            raise DataError(
                f"the {name} split has {len(split)} tokens, too few to evaluate in "
                f"{config.batch_size} streams: it needs at least {config.batch_size + 1} "
                "(batch size + 1); give it a larger fraction, use more text, or a smaller "
                "--batch-size"
            )


def _check_budget_left(progress: Progress, config: TrainConfig) -> None:
    done = []
    if progress.epoch >= config.epochs:
        done.append(f"{progress.epoch} epochs, and --epochs is {config.epochs} (raise it above "
                    f"{progress.epoch})")
    if config.max_steps is not None and progress.step >= config.max_steps:
        done.append(f"{progress.step} steps, and --max-steps is {config.max_steps} (raise it)")
    if config.max_time is not None and progress.seconds >= config.max_time:
        done.append(f"{progress.seconds:.0f} s, and --max-time is {config.max_time:g} (raise "
                    "it)")
    if done:
        raise ConfigError(f"the run has nothing left to do: it has already trained "
                          f"{'; '.join(done)}")


class _stop_on_signals:
    """While active, SIGINT and SIGTERM ask the loop to stop after the current step; a
    second signal acts as usual (SIGINT: KeyboardInterrupt, SIGTERM: terminate)."""

    def __init__(self, hooks: RunHooks) -> None:
        self.hooks = hooks
        self.previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        self.hooks.signal = name
        signal.signal(signum, self.previous[signum])
        print(f"\ngrulm train: {name} received; saving a checkpoint after this step "
              "(send it again to abort without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
