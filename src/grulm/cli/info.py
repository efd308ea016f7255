"""``grulm info``: what a checkpoint holds, without running it."""

from __future__ import annotations

import argparse
import json

from grulm.backends import cpu
from grulm.checkpoint import load_checkpoint


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="describe a checkpoint",
        description="Load and validate a checkpoint and describe it: model, vocabulary, data, "
        "training configuration and final metrics.",
    )
    parser.add_argument("checkpoint", help="the checkpoint directory (`grulm train --out`)")
    parser.add_argument("--json", action="store_true", help="print the metadata as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint)  # validated: the fields below have their types
    model, vocab, meta = checkpoint.model, checkpoint.vocab, checkpoint.meta
    if args.json:
        described = {"model_config": model.config.to_dict(), "vocab_size": len(vocab),
                     **meta.to_json()}
        print(json.dumps(described, indent=2))
        return 0
    config = model.config
    num_parameters = sum(p.numel() for p in model.parameters())
    version = "unknown" if meta.grulm_version is None else meta.grulm_version
    created = "an unknown date" if meta.created is None else meta.created
    tokens = " ".join(_short(repr(t)) for t in vocab.idx_to_token[:12])
    more = f" … (+{len(vocab) - 12})" if len(vocab) > 12 else ""
    lines = [
        f"checkpoint   {checkpoint.directory}",
        f"format       v{meta.format_version}, written by grulm "
        f"{_short(version)} on {_short(created)}",
        f"model        {config.num_layers}×{config.hidden_size} {config.cell_label}, "
        f"{config.input_kind} input, dropout {config.dropout}, init {config.init}, "
        f"backend {config.backend}, precision {config.precision}; "
        f"{num_parameters:,} parameters",
        f"vocab        {len(vocab)} tokens: {tokens}{more}",
        f"machine      cpu kernels {_cpu_kernels()}",
    ]
    data = meta.data.to_json() if meta.data is not None else None
    for label, fields in (("data", data), ("training", meta.train)):
        if fields:
            lines.append(f"{label:<13}" + ", ".join(f"{_short(k)} {_short(v)}"
                                                    for k, v in fields.items()))
    metrics = {k: v for k, v in meta.metrics.items() if not isinstance(v, list)}
    if metrics:
        lines.append("metrics      " + ", ".join(f"{_short(k)} {_short(v)}"
                                                  for k, v in metrics.items()))
    print("\n".join(lines))
    return 0


def _cpu_kernels() -> str:
    """The instruction set of grulm's cpu kernels in this process (``GRULM_CPU_ISA`` forces
    one), or why they cannot run here."""
    reason = cpu.unavailable()
    if reason is None:
        try:
            return cpu.isa()
        except ValueError as error:
            reason = str(error)
    return f"unavailable: {reason}"


def _short(value, limit: int = 80) -> str:
    """A value on one line: floats to 4 significant digits, anything long cut with an ellipsis."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    if isinstance(value, str) and text != " ".join(text.split()):
        text = repr(value)  # show a token or value with newlines or odd spaces as such
    return text if len(text) <= limit else text[: limit - 1] + "…"
