"""``grulm inspect``: one self-contained HTML page of what a trained model does on a text.

The text is tokenised as ``grulm generate`` tokenises a prefix (cleaned as the training text
was; unknown characters read as ``<unk>`` with a warning). A text longer than ``--max-chars``
tokens is cut to its first ``--max-chars`` with a warning that the page repeats: connectivity
costs one backward pass per position, and the page holds a row per position. The page (and the
``--png`` figure) is written under a temporary name and renamed, so a failed run leaves nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import warnings
from pathlib import Path

import torch

from grulm.checkpoint import load_checkpoint
from grulm.data.sources import read_prime_text
from grulm.errors import ConfigError, DataError
from grulm.generate import TextFormat
from grulm.generate.text_format import prefix_ids
from grulm.inspect import trace
from grulm.inspect.page import page_data, render_page
from grulm.plot import save_heatmap

DEFAULT_MAX_CHARS = 500


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="write an interactive page of a model's gates on a text",
        description="Run a checkpoint over a text once and write one self-contained HTML page "
        "(nothing loaded from the network): the text coloured by the mean update gate, the "
        "reset gate, the candidate or one hidden unit; the top-5 predictions and the loss on "
        "hover; how far back each prediction reaches (connectivity) on click; and how often "
        "each gate saturates.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint directory")
    text = parser.add_argument_group("text").add_mutually_exclusive_group(required=True)
    text.add_argument("--prefix", metavar="TEXT", help="the text to run the model over")
    text.add_argument("--text-file", metavar="FILE", type=Path,
                      help="read the text from this UTF-8 file (at most 1 MiB)")
    view = parser.add_argument_group("view")
    view.add_argument("--layer", metavar="K", type=int,
                      help="the layer whose units the page shows (default the last)")
    view.add_argument("--max-chars", metavar="N", type=int, default=DEFAULT_MAX_CHARS,
                      help="inspect at most the first N tokens; a longer text is cut, with a "
                      f"warning and a note in the page (default {DEFAULT_MAX_CHARS})")
    output = parser.add_argument_group("output")
    output.add_argument("--out", metavar="PAGE", type=Path, required=True,
                        help="the HTML file to write")
    output.add_argument("--png", metavar="FILE", type=Path,
                        help="also write a heat-map of the first gate (units × characters)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.max_chars < 1:
        raise ConfigError(f"--max-chars must be at least 1; got {args.max_chars}")
    for path in (args.out, args.png):
        if path is not None:
            _check_writable(path)
    text = read_prime_text(args.text_file) if args.text_file else args.prefix
    checkpoint = load_checkpoint(args.checkpoint)
    model, vocab = checkpoint.model.eval(), checkpoint.vocab
    text_format = TextFormat.from_meta(checkpoint.meta)
    if args.layer is not None and not 0 <= args.layer < model.config.num_layers:
        raise ConfigError(f"--layer must be from 0 to {model.config.num_layers - 1}; "
                          f"got {args.layer}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokens, ids = prefix_ids(vocab, text, text_format)
    notes = [str(w.message) for w in caught]
    for note in notes:
        warnings.warn(note, stacklevel=1)
    if len(tokens) > args.max_chars:
        note = (f"the text has {len(tokens):,} tokens; only the first {args.max_chars:,} are "
                "inspected (raise --max-chars for more)")
        warnings.warn(note, stacklevel=1)
        notes.append(note)
        tokens, ids = tokens[: args.max_chars], ids[: args.max_chars]
    data = page_data(model, torch.tensor(ids), tokens, vocab.idx_to_token,
                     describe(checkpoint), layer=args.layer, joiner=text_format.joiner,
                     notes=notes)
    page = render_page(data, title=f"grulm inspect {Path(args.checkpoint).name}")
    _write(args.out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    if args.png is not None:
        name, values = _heatmap(model, torch.tensor(ids), args.layer)
        _write(args.png, lambda tmp: save_heatmap(
            tmp, values, tokens, title=f"{name}, layer {data['layer']} of a {data['cell']}"))
    return 0


def describe(checkpoint) -> dict[str, str]:
    """The page header: cell, variant, sizes, data and validation perplexity."""
    config, meta = checkpoint.model.config, checkpoint.meta
    parameters = sum(p.numel() for p in checkpoint.model.parameters())
    described = {
        "checkpoint": str(checkpoint.directory),
        "model": f"{config.num_layers}×{config.hidden_size} {config.cell_label}, "
                 f"{config.input_kind} input; {parameters:,} parameters",
        "vocabulary": f"{len(checkpoint.vocab)} tokens",
    }
    if meta.data is not None:
        fields = meta.data.to_json()
        described["data"] = ", ".join(f"{k} {fields[k]}" for k in
                                      ("source", "token", "cleaning", "num_tokens")
                                      if fields.get(k) is not None)
    val_loss = meta.metrics.get("best_val_loss")
    if isinstance(val_loss, (int, float)) and math.isfinite(val_loss):
        epoch = meta.metrics.get("best_epoch")
        at = f" (epoch {epoch})" if epoch is not None else ""
        described["validation perplexity"] = f"{math.exp(val_loss):.3f}{at}"
    if meta.train:
        described["training"] = ", ".join(f"{k} {meta.train[k]}" for k in
                                          ("epochs", "lr", "optimizer", "seed")
                                          if k in meta.train)
    return described


def _heatmap(model, ids, layer: int | None) -> tuple[str, object]:
    """The first learned gate of ``layer`` (T, H), or H for a model without gates."""
    traces = trace(model, ids)
    name = (traces.learned_gates or ("H",))[0]
    return name, traces[name][:, -1 if layer is None else layer]


def _check_writable(path: Path) -> None:
    """Refuse, before any work, an output whose directory is missing or not writable."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise DataError(f"cannot write {str(path)!r}: it is a directory")
    if not parent.is_dir():
        raise DataError(f"cannot write {str(path)!r}: the directory {str(parent)!r} does not "
                        "exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"cannot write {str(path)!r}: the directory {str(parent)!r} is not "
                        "writable")


def _write(path: Path, write) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0o600
        os.replace(tmp, path)
    except OSError as error:
        raise DataError(f"cannot write {str(path)!r}: {error.strerror or error}") from None
    finally:
        tmp.unlink(missing_ok=True)
