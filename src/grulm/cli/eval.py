"""``grulm eval``: perplexity, nats and bits per token of a checkpoint on held-out text, and
recall accuracy on ``recall:K`` data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from grulm import memory
from grulm.backends.precision import PRECISIONS, check_precision
from grulm.checkpoint import DataInfo, load_checkpoint
from grulm.data.batches import eval_batches
from grulm.data.corpus import load_corpus
from grulm.data.recall import recall_task
from grulm.data.sources import resolve_source
from grulm.data.splits import SPLIT_NAMES
from grulm.data.text import text_to_tokens
from grulm.devices import resolve_device
from grulm.errors import ConfigError, DataError
from grulm.evaluate import evaluate, evaluate_recall
from grulm.train import training_splits

SPLITS = (*SPLIT_NAMES, "all")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on held-out text",
        description="Score every next-token prediction of a split with the hidden state "
        "carried through it; print perplexity, loss in nats per token and bits per token (and "
        "on recall:K data the recall accuracy). By "
        "default the split is the validation split of the text the model was trained on, cut "
        "exactly as training cut it.",
    )
    parser.add_argument("checkpoint", type=Path,
                        help="a checkpoint directory (a run directory or its best/)")
    parser.add_argument("--data", help="another corpus or text file, tokenized with the "
                        "checkpoint's vocabulary and cleaning [the training data]")
    parser.add_argument("--split", choices=SPLITS, default=None,
                        help="which part: val, test, train, or all of the text [val; all with "
                        "--data]")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="parallel streams the text is cut into")
    parser.add_argument("--num-steps", type=int, default=35,
                        help="the shortest window a forward call reads (the state is carried "
                        "between them; longer ones are read while the widest activation "
                        "stays within 2^23 elements) [35]")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto [cpu]")
    parser.add_argument("--precision", metavar="|".join(PRECISIONS),
                        help="of the recurrent layers' matrix products (the weights are float32 "
                        "either way) [the checkpoint's]")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for flag, value in (("--batch-size", args.batch_size), ("--num-steps", args.num_steps)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if args.precision is not None:
        check_precision(args.precision)
    device = resolve_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint, map_location=device)
    model = checkpoint.model
    if args.precision is not None:
        model.set_precision(args.precision)
    model.backend()  # a backend for its precision and dtype, before any data is read
    data = checkpoint.meta.data or DataInfo()
    if args.data is None:
        ids, what = _training_split(checkpoint, data, args.split or "val")
    else:
        ids, what = _other_text(checkpoint, data, args.data, args.split or "all")
    _check_memory(checkpoint.model.config, ids, args.batch_size, args.num_steps, device)
    result = evaluate(model, ids, args.batch_size, args.num_steps)
    recall = evaluate_recall(model, checkpoint.vocab, args.data or data.source, ids,
                             args.batch_size, args.num_steps)
    unit = data.token
    if args.json:
        print(json.dumps({"checkpoint": str(checkpoint.directory), "data": what,
                          "precision": model.config.precision, **result.to_dict(),
                          **(recall.to_dict() if recall else {})}))
        return 0
    products = "" if model.config.precision == "float32" else \
        f" ({model.config.precision} products)"
    print(f"{what}: {result.tokens:,} predictions{products}")
    print(f"perplexity {result.perplexity:.4f}, {result.loss:.4f} nats/{unit}, "
          f"{result.bits_per_token:.4f} bits/{unit}")
    if recall is not None:
        print(f"recall accuracy {recall.accuracy:.4f} ({recall.correct:,} of {recall.total:,} "
              "letters after a cue; chance ≈ 0.04)")
    return 0


def _training_split(checkpoint, data: DataInfo, split: str):
    """The split of the training corpus, cut exactly as `grulm train` cut it."""
    if data.source is None:
        raise DataError(f"{checkpoint.directory} does not say what data it was trained on; "
                        "pass --data")
    corpus = load_corpus(data.source, cleaning=data.cleaning, token=data.token,
                         min_freq=data.min_freq)
    if corpus.sha256 != data.sha256:
        print(f"grulm eval: warning: {data.source} is not the file the model was trained "
              "on (its SHA-256 differs)", file=sys.stderr)
    if corpus.vocab.idx_to_token != checkpoint.vocab.idx_to_token:
        raise DataError(f"{data.source} now gives a different vocabulary than the "
                        "checkpoint's; evaluate it with --data and --split all")
    if split == "all":
        return corpus.ids, f"{data.source} (all)"
    splits = training_splits(corpus.ids, data.max_tokens or 0, data.split_fractions)
    start, stop = splits.ranges.get(split, (0, 0))
    return splits.get(split), f"{data.source} {split} split (tokens {start:,}–{stop:,})"


def _other_text(checkpoint, data: DataInfo, source: str, split: str):
    """Another text, cleaned and tokenized as the training data, ids from the checkpoint."""
    if split != "all":
        raise ConfigError("with --data the whole text is evaluated; drop --split or use "
                          "--split all")
    task = recall_task(source)
    if task is not None:
        text = task.text().decode("ascii")
    else:
        text = _read_text(resolve_source(source).path, raw=data.cleaning != "d2l")
    tokens = text_to_tokens(text, data.cleaning, data.token)
    ids = torch.tensor(checkpoint.vocab[tokens], dtype=torch.int64)
    unknown = int((ids == 0).sum())
    if unknown:
        print(f"grulm eval: warning: {unknown:,} of {len(ids):,} tokens are not in the "
              "model's vocabulary and count as <unk>", file=sys.stderr)
    return ids, f"{source} (all)"


def _read_text(path: Path, raw: bool) -> str:
    try:  # d2l cleaning keeps ASCII letters only, so any other byte may be replaced
        return path.read_bytes().decode("utf-8", errors="strict" if raw else "replace")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 (byte offset {error.start}); the model was "
                        "trained on raw UTF-8 text") from None


def _check_memory(config, ids, batch_size: int, num_steps: int, device) -> None:
    """Refuse a batch the text cannot fill or the memory cannot hold, before evaluating
    allocates its state."""
    next(eval_batches(ids, batch_size, num_steps), None)  # its size checks, nothing allocated
    window = min(num_steps, (len(ids) - 1) // batch_size)
    loaded = memory.parameter_bytes(config)  # the model is in memory already
    memory.check_fits(
        memory.inference_bytes(config, batch_size, window) - loaded,
        f"evaluating {memory.describe(config, batch_size, window)}",
        "use a smaller --batch-size or --num-steps",
        device=device,
    )
