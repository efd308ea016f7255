"""``grulm train``: train a GRU language model; with no flags, the seed experiment of d2l §9.1."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from grulm import backends
from grulm.checkpoint import save_checkpoint
from grulm.data.batches import check_batchable, epoch_batches
from grulm.data.prepare import load_prepared
from grulm.data.sources import resolve_source
from grulm.data.text import CLEANINGS, TOKENS
from grulm.errors import ConfigError
from grulm.generate import predict
from grulm.model import GRULM, INITS, INPUT_KINDS, VARIANTS, GRUConfig
from grulm.plot import save_perplexity_plot
from grulm.train import PARTITIONS, EpochStats, TrainConfig, fit

SEED_MAX_TOKENS = 10_000
SAMPLE_PREFIXES = ("time traveller", "traveller")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model (no flags: the seed experiment)",
        description="Train a GRU language model and save a checkpoint. With no flags this is "
        "the seed experiment of d2l §9.1: The Time Machine (first 10,000 characters, letters "
        "only), 1 layer of 256, reset-before GRU, SGD lr 1, clipping 1, batch 32 × 35 steps, "
        "500 epochs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    group = parser.add_argument_group("data")
    group.add_argument("--data", default="timemachine",
                       help="built-in corpus name (timemachine, tinyshakespeare) or a text file")
    group.add_argument("--cleaning", choices=CLEANINGS, default=None,
                       help="d2l: letters only, lower-cased (the seed); raw: UTF-8 as is "
                       "[default: d2l for timemachine, raw otherwise]")
    group.add_argument("--token", choices=TOKENS, default="char", help="token unit")
    group.add_argument("--min-freq", type=int, default=0,
                       help="tokens seen fewer times map to <unk>")
    group.add_argument("--max-tokens", type=int, default=None,
                       help="train on the first N tokens only; 0 = all "
                       f"[default: {SEED_MAX_TOKENS} for timemachine, all otherwise]")

    group = parser.add_argument_group("model")
    group.add_argument("--hidden-size", type=int, default=256)
    group.add_argument("--num-layers", type=int, default=1)
    group.add_argument("--variant", choices=VARIANTS, default="reset_before",
                       help="reset_before: the textbook GRU; reset_after: cuDNN's / nn.GRU's")
    group.add_argument("--input", dest="input_kind", choices=INPUT_KINDS, default="onehot")
    group.add_argument("--embedding-size", type=int, default=None,
                       help="embedding width for --input embedding [default: hidden size]")
    group.add_argument("--dropout", type=float, default=0.0, help="dropout between layers")
    group.add_argument("--init", choices=INITS, default="d2l",
                       help="d2l: randn*0.01 weights, zero biases; torch: nn.GRU's uniform")
    group.add_argument("--backend", choices=backends.backend_names(), default="auto",
                       help="recurrence implementation; auto picks the fastest that fits")

    group = parser.add_argument_group("optimisation")
    group.add_argument("--epochs", type=int, default=500)
    group.add_argument("--batch-size", type=int, default=32)
    group.add_argument("--num-steps", type=int, default=35, help="time steps per sequence")
    group.add_argument("--lr", type=float, default=1.0, help="learning rate")
    group.add_argument("--clip", type=float, default=1.0, help="max global gradient norm")
    group.add_argument("--partition", choices=PARTITIONS, default="sequential",
                       help="sequential carries the state across batches; random resets it")
    group.add_argument("--seed", type=int, default=0, help="seeds weights and data order")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")

    group = parser.add_argument_group("output")
    group.add_argument("--out", type=Path, default=Path("runs/seed"),
                       help="run directory: checkpoint, perplexity.png")
    group.add_argument("--sample-every", type=int, default=10,
                       help="print a greedy sample every N epochs; 0 = never")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    builtin_seed = args.data == "timemachine"
    cleaning = args.cleaning or ("d2l" if builtin_seed else "raw")
    max_tokens = args.max_tokens
    if max_tokens is None:
        max_tokens = SEED_MAX_TOKENS if builtin_seed else 0
    if max_tokens < 0:
        raise ConfigError(f"--max-tokens must be ≥ 0 (0 = all), got {max_tokens}")
    if args.sample_every < 0:
        raise ConfigError(f"--sample-every must be ≥ 0, got {args.sample_every}")
    train_config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, num_steps=args.num_steps, lr=args.lr,
        clip=args.clip, partition=args.partition, seed=args.seed,
    )
    device = _device(args.device)
    _check_writable(args.out)

    source = resolve_source(args.data, progress=not args.no_progress)
    corpus = load_prepared(source.path, cleaning=cleaning, token=args.token,
                           min_freq=args.min_freq, progress=not args.no_progress,
                           name=source.name)
    # As the seed: the vocabulary comes from the whole text, training from its first tokens.
    train_ids = corpus.ids[:max_tokens] if max_tokens else corpus.ids
    check_batchable(train_ids, train_config.batch_size, train_config.num_steps,
                    train_config.partition, what=f"the training text of {args.data}")
    train_ids = train_ids.to(device)
    model_config = GRUConfig(
        vocab_size=len(corpus.vocab), hidden_size=args.hidden_size, num_layers=args.num_layers,
        variant=args.variant, input_kind=args.input_kind, embedding_size=args.embedding_size,
        dropout=args.dropout, init=args.init, backend=args.backend,
    )
    torch.manual_seed(args.seed)
    model = GRULM(model_config).to(device)
    backend = model.backend().name
    print(f"grulm train: {args.data} ({len(train_ids):,} {args.token} tokens, "
          f"vocab {len(corpus.vocab)}), {model_config.num_layers}×{model_config.hidden_size} "
          f"{model_config.variant} GRU, backend {backend}, {device}", file=sys.stderr)

    def make_batches(rng):
        return epoch_batches(train_ids, train_config.batch_size, train_config.num_steps, rng,
                             train_config.partition)

    def sample(prefix: str) -> str:
        return predict(model, corpus.vocab, prefix, 50)

    bar = tqdm(total=train_config.epochs, unit="epoch", disable=args.no_progress,
               file=sys.stderr, dynamic_ncols=True)

    def on_epoch(stats: EpochStats) -> None:
        bar.update(1)
        bar.set_postfix(ppl=f"{stats.perplexity:.2f}", tok_s=f"{stats.tokens_per_s:,.0f}")
        if args.sample_every and stats.epoch % args.sample_every == 0:
            bar.write(f"epoch {stats.epoch}: {sample(SAMPLE_PREFIXES[0])}", file=sys.stderr)

    started = time.perf_counter()
    with bar:
        history = fit(model, make_batches, train_config, on_epoch=on_epoch)
    total_tokens = sum(s.tokens for s in history)
    train_seconds = sum(s.seconds for s in history)
    tokens_per_s = total_tokens / train_seconds
    final = history[-1]
    metrics = {
        "epochs": final.epoch,
        "loss": final.loss,
        "perplexity": final.perplexity,
        "tokens_per_s": tokens_per_s,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "device": str(device),
        "backend": backend,
        "perplexity_history": [s.perplexity for s in history],
    }
    meta = {
        "data": {"source": source.name, "sha256": corpus.sha256, "cleaning": cleaning,
                 "token": args.token, "min_freq": args.min_freq, "max_tokens": max_tokens},
        "train": train_config.to_dict(),
        "metrics": metrics,
    }
    checkpoint_dir = save_checkpoint(args.out, model.cpu(), corpus.vocab, meta)
    model.to(device)
    plot = save_perplexity_plot(args.out / "perplexity.png",
                                {"train": metrics["perplexity_history"]},
                                title=f"grulm train --data {args.data}")
    print(f"perplexity {final.perplexity:.1f}, {tokens_per_s:,.0f} tokens/s on {device}")
    for prefix in SAMPLE_PREFIXES:
        print(sample(prefix))
    print(f"checkpoint: {checkpoint_dir}   plot: {plot}", file=sys.stderr)
    return 0


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"--device {name!r} is not a device ({error}); use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return device


def _check_writable(directory: Path) -> None:
    """Refuse before training, not after, when the run directory cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create the output directory {directory}: {error}") from error
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        raise ConfigError(f"the output directory {directory} is not writable; choose another "
                          "with --out")
