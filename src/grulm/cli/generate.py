"""``grulm generate``: continue a prefix with a trained model (greedy, sampling or beam search).

With no options it is the seed's prediction: 50 greedy characters after "time traveller".
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from grulm import memory
from grulm.backends.precision import PRECISIONS, check_precision
from grulm.cells import NAMES
from grulm.checkpoint import load_checkpoint
from grulm.cli import warnings_as_lines
from grulm.data.sources import read_prime_text
from grulm.devices import resolve_device
from grulm.errors import ConfigError, GrulmError
from grulm.generate import STRATEGIES, TextFormat, check_options, generate, stream
from grulm.generate.api import DEFAULT_BEAM_WIDTH

DEFAULT_PREFIX = "time traveller"
# The most continuations, and beam hypotheses, generated at once: one batch of rows that each
# hold a state and a step's logits, and for beam search a Python string per hypothesis.
MAX_NUM_SAMPLES = 10_000
MAX_BEAM_WIDTH = 10_000


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate text from a checkpoint",
        description="Continue a prefix with a trained model. Defaults reproduce the seed: "
        f"50 greedy characters after {DEFAULT_PREFIX!r}. The prefix is cleaned as the "
        "training text was (d2l: letters only, lower case); prefix characters outside the "
        "vocabulary are read as <unk> with a warning.",
        epilog="Each continuation is printed with its prefix; several are separated by a "
        "blank line. Without --stream the whole text is held in memory until printed; with "
        "--stream memory stays constant however large --num-preds is. In --interactive mode "
        "a bad prefix prints an error and the loop goes on.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint directory")
    prompt = parser.add_argument_group("prompt")
    source = prompt.add_mutually_exclusive_group()
    source.add_argument(
        "--prefix", metavar="TEXT", help=f"text to continue (default {DEFAULT_PREFIX!r})"
    )
    source.add_argument(
        "--prime-file", metavar="PATH", type=Path,
        help="continue the UTF-8 text of this file (a regular file of at most 1 MiB)",
    )
    source.add_argument(
        "--interactive",
        action="store_true",
        help="read prefixes from stdin, one per line, until end of input (Ctrl-D)",
    )
    decoding = parser.add_argument_group("decoding")
    decoding.add_argument(
        "--num-preds",
        metavar="N",
        type=int,
        default=50,
        help="tokens to generate after the prefix (default 50)",
    )
    decoding.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="greedy",
        help="greedy: argmax, the seed (default); sample: draw from the softmax; "
        "beam: beam search for the most probable continuation",
    )
    decoding.add_argument(
        "--temperature",
        type=float,
        metavar="T",
        help="sample: divide the logits by T (default 1; 0 means greedy)",
    )
    decoding.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help="sample: only the K most likely tokens (clamped to the vocabulary size)",
    )
    decoding.add_argument(
        "--top-p",
        type=float,
        metavar="P",
        help="sample: only the smallest set of likely tokens with probability ≥ P, in (0, 1]",
    )
    decoding.add_argument(
        "--beam-width", type=int, metavar="W", help="beam: hypotheses kept per step (default 4)"
    )
    decoding.add_argument(
        "--length-penalty",
        type=float,
        metavar="A",
        help="beam: rank finished hypotheses by log p / length**A (default 1)",
    )
    decoding.add_argument(
        "--num-samples",
        type=int,
        default=1,
        metavar="N",
        help="continuations per prefix, generated as one batch (beam: the N best)",
    )
    decoding.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="end a continuation after this string (repeatable; kept in the output)",
    )
    decoding.add_argument(
        "--seed", type=int, help="seed for sampling (default: a fresh one each run)"
    )
    decoding.add_argument(
        "--allow-unk",
        action="store_true",
        help="let sample and beam generate <unk>, which stands for every token the "
        "vocabulary lacks (greedy, the seed's argmax, always may)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--stream",
        action="store_true",
        help="print characters as they are produced (greedy or sample, one sample)",
    )
    output.add_argument(
        "--device", default="cpu", help="where to run the model: cpu, cuda, cuda:N or auto "
        "(default cpu)"
    )
    output.add_argument(
        "--precision", metavar="|".join(PRECISIONS),
        help="of the recurrent layers' matrix products (default: the checkpoint's); bf16 "
        "decodes through the model's layers, float32 through the fast single-step decoder",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = {
        "strategy": args.strategy,
        "max_new": args.num_preds,
        "num_samples": args.num_samples,
        **{
            name: value
            for name, value in (
                ("temperature", args.temperature),
                ("top_k", args.top_k),
                ("top_p", args.top_p),
                ("beam_width", args.beam_width),
                ("length_penalty", args.length_penalty),
            )
            if value is not None
        },
    }
    if args.stream and args.strategy == "beam":
        raise ConfigError("--stream works with --strategy greedy or sample, not beam")
    if args.stream and args.num_samples != 1:
        raise ConfigError("--stream prints one continuation; drop --num-samples")
    if args.allow_unk:
        options["allow_unk"] = True
    _check_batch(args)
    if args.precision is not None:
        check_precision(args.precision)
    device = resolve_device(args.device)
    prefix = read_prime_text(args.prime_file) if args.prime_file else args.prefix
    with warnings_as_lines("grulm generate"):
        checkpoint = load_checkpoint(args.checkpoint, map_location=device)
        top_k = check_options(len(checkpoint.vocab), **options)
    model = checkpoint.model
    if args.precision is not None:
        model.set_precision(args.precision)
    model.backend()  # a backend for its precision and dtype, before anything is generated
    # The single-step decoders compute in float32: bf16 steps through the model's layers.
    options["fast"] = model.config.precision == "float32"
    _check_memory(checkpoint.model.config, args, device)
    if top_k is not None:
        options["top_k"] = top_k  # clamped once, with one warning
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)

    def complete(text: str) -> None:
        with warnings_as_lines("grulm generate"):
            _complete(checkpoint, text, options, args.stop, generator, args.stream)

    try:
        if args.interactive:
            _interact(complete)
        else:
            complete(DEFAULT_PREFIX if prefix is None else prefix)
    except BrokenPipeError:  # the reader left (`grulm generate … | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _check_batch(args: argparse.Namespace) -> None:
    """Refuse more rows than one batch should hold, before anything is loaded."""
    if args.num_samples > MAX_NUM_SAMPLES:
        raise ConfigError(
            f"--num-samples {args.num_samples:,} is more than the {MAX_NUM_SAMPLES:,} "
            "continuations grulm generates at once; ask for fewer and run again with another "
            "--seed for more"
        )
    if args.beam_width is not None and args.beam_width > MAX_BEAM_WIDTH:
        raise ConfigError(
            f"--beam-width {args.beam_width:,} is more than the {MAX_BEAM_WIDTH:,} hypotheses "
            "grulm keeps; use a smaller --beam-width"
        )


def _check_memory(config, args: argparse.Namespace, device: torch.device) -> None:
    """Refuse a generation whose rows or kept text would not fit, before decoding starts."""
    beam = args.strategy == "beam"
    rows = (args.beam_width or DEFAULT_BEAM_WIDTH) if beam else args.num_samples
    needed = memory.generation_bytes(config, rows, args.num_preds, keep_text=not args.stream)
    noun = "beam hypothes" + ("es" if rows > 1 else "is") if beam else \
        "continuation" + ("s" if rows > 1 else "")
    flags = ["--num-preds", "--beam-width" if beam else "--num-samples"][: 1 + (rows > 1)]
    hint = f"use a smaller {' or '.join(flags)}"
    if not (beam or args.stream or rows > 1):
        hint += ", or --stream, which keeps no text"
    memory.check_fits(
        needed - memory.parameter_bytes(config),  # the model is in memory already
        f"generating {rows:,} {noun} of {args.num_preds:,} tokens with a "
        f"{config.num_layers}×{config.hidden_size} {NAMES[config.cell]}",
        hint,
        device=device,
    )


def _interact(complete) -> None:
    """Complete each line of stdin until end of input; a bad prefix does not end the loop."""
    prompt = sys.stdin.isatty()
    while True:
        if prompt:
            print("prefix> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        try:
            complete(line.rstrip("\r\n"))
        except GrulmError as error:
            print(f"grulm generate: error: {error}", file=sys.stderr, flush=True)
    if prompt:
        print(file=sys.stderr)


def _complete(checkpoint, prefix, options, stop, generator, streaming) -> None:
    """Print the continuations of one prefix."""
    text_format = TextFormat.from_meta(checkpoint.meta)
    model, vocab = checkpoint.model, checkpoint.vocab
    if streaming:
        stream_options = {k: v for k, v in options.items() if k != "num_samples"}
        pieces = stream(
            model,
            vocab,
            prefix,
            stop=stop,
            generator=generator,
            text_format=text_format,
            **stream_options,
        )
        print(text_format.joiner.join(text_format.tokenize(prefix)), end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
        print(flush=True)
        return
    texts = generate(
        model, vocab, prefix, stop=stop, generator=generator, text_format=text_format, **options
    )
    print("\n\n".join(texts), flush=True)
