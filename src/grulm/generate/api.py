"""The public entry points: ``predict`` (the seed's), ``generate`` and ``stream``, and the
check of their options."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from grulm.errors import ConfigError
from grulm.generate.beam import beam_search
from grulm.generate.decoders import (
    model_device,
    warm_up,
)
from grulm.generate.sampling import make_selector
from grulm.generate.text_format import (
    GenerationWarning,
    StopWatch,
    TextFormat,
    prefix_ids,
    token_pieces,
)

STRATEGIES = ("greedy", "sample", "beam")
DEFAULT_BEAM_WIDTH = 4


def check_options(
    vocab_size: int,
    *,
    strategy: str = "greedy",
    max_new: int = 50,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    beam_width: int | None = None,
    length_penalty: float | None = None,
    num_samples: int = 1,
    allow_unk: bool | None = None,
) -> int | None:
    """Check :func:`generate`'s options (same names) against the module docstring's rules.

    Returns:
        ``top_k``, clamped to ``vocab_size`` with a :class:`GenerationWarning` if larger.

    Raises:
        ConfigError: an option out of range, or one that does not belong to ``strategy``.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if allow_unk not in (None, True, False):
        raise ConfigError(f"allow_unk must be None, True or False, got {allow_unk!r}")
    if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 0:
        raise ConfigError(f"the number of tokens to generate must be ≥ 0, got {max_new!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
        raise ConfigError(f"temperature must be a finite number ≥ 0, got {temperature!r}")
    if temperature < 0:
        raise ConfigError(f"temperature must be ≥ 0 (0 means greedy), got {temperature!r}")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
        if top_k > vocab_size:
            warnings.warn(
                f"top_k={top_k} is larger than the vocabulary; using all {vocab_size} tokens",
                GenerationWarning,
                stacklevel=3,
            )
            top_k = vocab_size
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0):
        raise ConfigError(f"top_p must lie in (0, 1], got {top_p!r}")
    if beam_width is not None and (
        isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1
    ):
        raise ConfigError(f"beam_width must be a positive integer, got {beam_width!r}")
    if length_penalty is not None and (
        not isinstance(length_penalty, (int, float)) or not math.isfinite(length_penalty)
    ):
        raise ConfigError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if strategy != "sample":
        for name, value, default in (
            ("temperature", temperature, 1.0),
            ("top_k", top_k, None),
            ("top_p", top_p, None),
        ):
            if value != default:
                raise ConfigError(f"{name} applies only to strategy 'sample', not {strategy!r}")
    if strategy != "beam":
        for name, value in (("beam_width", beam_width), ("length_penalty", length_penalty)):
            if value is not None:
                raise ConfigError(f"{name} applies only to strategy 'beam', not {strategy!r}")
    elif num_samples > (beam_width or DEFAULT_BEAM_WIDTH):
        raise ConfigError(
            f"beam search returns at most beam_width={beam_width or DEFAULT_BEAM_WIDTH} "
            f"sequences; num_samples={num_samples} asks for more"
        )
    return top_k


def _check_stop(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if not all(isinstance(s, str) and s for s in stops):
        raise ConfigError(f"stop strings must be non-empty strings, got {stop!r}")
    return stops


def predict(
    model: nn.Module, vocab, prefix: str, num_preds: int, text_format: TextFormat = TextFormat()
) -> str:
    """Greedy generation after a warm-up: the seed's ``predict_ch8``.

    Returns the prefix followed by ``num_preds`` tokens, identical to the seed's output for a
    character prefix within the vocabulary (unknown prefix characters are warned about, read
    as ``<unk>``, and echoed as given rather than as ``'<unk>'``). By default the prefix is
    not cleaned, as in the seed; pass ``TextFormat.from_meta(...)`` (or the corpus's cleaning
    and token kind) for word-level or d2l-cleaned prompts.

    Args:
        model: a GRULM (or any module with its call signature), in eval mode.
        vocab: the vocabulary (``vocab[token]``, ``vocab.idx_to_token``).
        prefix: at least one token.
        num_preds: tokens to generate, ≥ 0.
        text_format: how to tokenise the prefix and join tokens (default: characters, raw).
    """
    return generate(model, vocab, prefix, max_new=num_preds, text_format=text_format)[0]


def generate(
    model: nn.Module,
    vocab,
    prefix: str,
    *,
    max_new: int = 50,
    strategy: str = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    beam_width: int | None = None,
    length_penalty: float | None = None,
    num_samples: int = 1,
    stop: str | Sequence[str] | None = None,
    generator: torch.Generator | None = None,
    text_format: TextFormat = TextFormat(),
    fast: bool = True,
    allow_unk: bool | None = None,
) -> list[str]:
    """Generate ``num_samples`` continuations of ``prefix``, as one batch.

    Args:
        model: a GRULM (or a module with its call signature), in eval mode.
        vocab: the model's vocabulary.
        prefix: the prompt; see :class:`TextFormat` for cleaning and tokenisation.
        max_new: tokens to generate after the prefix (the seed's ``num_preds``), ≥ 0.
        strategy: ``greedy`` (argmax, the seed), ``sample`` or ``beam``.
        temperature: ``sample`` only; logits are divided by it; 0 means greedy.
        top_k: ``sample`` only; sample among the k most likely tokens.
        top_p: ``sample`` only; sample within the nucleus of probability ``top_p``.
        beam_width: ``beam`` only; hypotheses kept per step (default 4).
        length_penalty: ``beam`` only; finished hypotheses are ranked by
            ``log p / length ** length_penalty`` (default 1.0, the mean log-probability per
            token). Without stop strings every hypothesis has ``max_new`` tokens, so it does not
            change the ranking. Beam search ends after ``max_new`` steps or once ``beam_width``
            hypotheses have finished.
        num_samples: sequences to return. Greedy ones are identical; beam search returns the
            ``num_samples`` best hypotheses, best first (at most ``beam_width``).
        stop: a string or strings; a sequence ends after the first one it generates.
        generator: the only source of randomness (``sample``); None draws a fresh seed from the
            operating system. Must live on the model's device.
        text_format: how the prefix is cleaned and tokenised and tokens are joined.
        fast: step a GRULM through :class:`GRUStepDecoder`; False steps it through ``forward``.
        allow_unk: whether ``<unk>`` may be generated. None (the default): by ``greedy``, the
            seed's argmax over every token, but never by ``sample`` or ``beam``; False: by no
            strategy (greedy takes the most likely other token); True: by every strategy.

    Returns:
        ``num_samples`` strings, each the (cleaned) prefix followed by its continuation.

    Raises:
        ConfigError: an empty prefix or an option out of range (see the module docstring).
    """
    top_k = check_options(
        len(vocab),
        strategy=strategy,
        max_new=max_new,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        beam_width=beam_width,
        length_penalty=length_penalty,
        num_samples=num_samples,
        allow_unk=allow_unk,
    )
    allow_unk = _unk_allowed(allow_unk, strategy, len(vocab))
    stops = _check_stop(stop)
    tokens, ids = prefix_ids(vocab, prefix, text_format)
    text_prefix = text_format.joiner.join(tokens)
    if max_new == 0:
        return [text_prefix] * num_samples
    pieces = token_pieces(vocab, text_format)
    decoder, logits = warm_up(model, ids, fast=fast)
    if strategy == "beam":
        continuations = beam_search(
            decoder,
            logits,
            pieces,
            max_new=max_new,
            beam_width=beam_width or DEFAULT_BEAM_WIDTH,
            length_penalty=1.0 if length_penalty is None else length_penalty,
            num_return=num_samples,
            stops=stops,
            allow_unk=allow_unk,
        )
        return [text_prefix + text for text in continuations]
    generator = _check_generator(generator, model_device(model), strategy, temperature)
    select = make_selector(
        strategy, temperature, top_k, top_p, generator, max_new, allow_unk=allow_unk
    )
    index = decoder.array([0] * num_samples)
    decoder.reorder(index)  # one row of state per sample
    logits = logits[index]  # (N, V)
    if not stops and allow_unk and (strategy == "greedy" or temperature == 0):
        first = logits.argmax(-1)  # (N,)
        rows = [
            [i, *rest]
            for i, rest in zip(
                first.tolist(), decoder.greedy(first, max_new - 1).tolist(), strict=True
            )
        ]
        return [text_prefix + "".join(pieces[i] for i in row) for row in rows]
    if not stops:
        steps = []
        for t in range(max_new):
            token = select(logits)  # (N,)
            steps.append(token)
            if t + 1 < max_new:
                logits = decoder.step(token)
        rows = decoder.xp.stack(steps, 1).tolist()  # (N, max_new)
        return [text_prefix + "".join(pieces[i] for i in row) for row in rows]
    texts = [[] for _ in range(num_samples)]
    watches = [StopWatch(stops) for _ in range(num_samples)]
    running = set(range(num_samples))
    for t in range(max_new):
        token = select(logits)
        for i, token_id in enumerate(token.tolist()):
            if i in running:
                piece = pieces[token_id]
                end = watches[i].feed(piece)
                if end is not None:
                    piece = piece[:end]
                    running.discard(i)
                texts[i].append(piece)
        if not running:
            break
        if t + 1 < max_new:
            logits = decoder.step(token)
    return [text_prefix + "".join(text) for text in texts]


def stream(
    model: nn.Module,
    vocab,
    prefix: str,
    *,
    max_new: int = 50,
    strategy: str = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: str | Sequence[str] | None = None,
    generator: torch.Generator | None = None,
    text_format: TextFormat = TextFormat(),
    fast: bool = True,
    allow_unk: bool | None = None,
) -> Iterator[str]:
    """Generate one continuation of ``prefix``, yielding its text piece by piece.

    The options are those of :func:`generate` (greedy or sample; beam search cannot stream,
    since its best hypothesis is known only at the end). The options are checked and the
    prefix warmed up when this is called, before the first piece. Memory stays constant however
    large ``max_new`` is: nothing of the growing text is kept but the tail stop strings need.

    Yields:
        The continuation only (not the prefix), one token at a time: a character, or for word
        tokens ``' ' + word``, so that ``prefix + ''.join(pieces)`` is :func:`generate`'s text.
    """
    if strategy == "beam":
        raise ConfigError("beam search cannot stream; use strategy 'greedy' or 'sample'")
    top_k = check_options(
        len(vocab),
        strategy=strategy,
        max_new=max_new,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        allow_unk=allow_unk,
    )
    allow_unk = _unk_allowed(allow_unk, strategy, len(vocab))
    stops = _check_stop(stop)
    _, ids = prefix_ids(vocab, prefix, text_format)
    if max_new == 0:
        return iter(())
    pieces = token_pieces(vocab, text_format)
    decoder, logits = warm_up(model, ids, fast=fast)
    generator = _check_generator(generator, model_device(model), strategy, temperature)
    select = make_selector(
        strategy, temperature, top_k, top_p, generator, max_new, allow_unk=allow_unk
    )
    return _stream_pieces(decoder, logits, select, pieces, max_new, StopWatch(stops))


def _stream_pieces(decoder, logits, select, pieces, max_new, watch) -> Iterator[str]:
    for t in range(max_new):
        token = select(logits)
        piece = pieces[token.tolist()[0]]
        end = watch.feed(piece) if watch.stops else None
        if end is not None:
            yield piece[:end]
            return
        yield piece
        if t + 1 < max_new:
            logits = decoder.step(token)


def _unk_allowed(allow_unk: bool | None, strategy: str, vocab_size: int) -> bool:
    """Whether ``<unk>`` stays a candidate: see :func:`generate`'s ``allow_unk``.

    Greedy keeps it by default because the seed's ``predict_ch8`` takes the argmax over the
    whole vocabulary, and ``predict`` must equal it token for token (an untrained or briefly
    trained model may well rank ``<unk>`` first). A vocabulary of ``<unk>`` alone keeps it:
    there is nothing else to generate.
    """
    if vocab_size < 2:
        return True
    return strategy == "greedy" if allow_unk is None else allow_unk


def _check_generator(
    generator: torch.Generator | None, device: torch.device, strategy: str, temperature: float
) -> torch.Generator | None:
    if strategy != "sample" or temperature == 0:
        return generator
    if generator is None:
        generator = torch.Generator(device=device)
        generator.seed()
    elif torch.device(generator.device).type != device.type:
        raise ConfigError(
            f"the generator lives on {generator.device} but the model on {device}; "
            "create it with torch.Generator(device=...) on the model's device"
        )
    return generator
