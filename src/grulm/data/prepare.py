"""Text file → compact token ids + vocabulary, prepared once and cached.

:func:`prepare` reads a file in chunks of whole lines (16 MiB, each ending just after a ``\\n``,
so a ``\\r\\n`` is never split and a multi-byte character never cut), cleans and tokenizes each
chunk with the whole-text functions of :mod:`grulm.data.text` (the ``raw`` cleaning drops a
byte-order mark only at the start of the first chunk), counts tokens in first-appearance
order, builds the :class:`~grulm.data.vocab.Vocab`, and maps tokens to ids without a Python
loop per character (``bytes.translate`` when every token is one ASCII byte). Time and memory
grow linearly with the file size. A vocabulary that ``min_freq`` leaves with no token besides
``<unk>`` is refused: a model of it could only ever predict ``<unk>``.

:func:`load_prepared` caches the result under ``<cache>/prepared/<key>/`` where the key hashes
the file's sha256 and every option that changes the ids (cleaning, token, min_freq, reserved
tokens, format version). A cache entry is two files, no pickle:

- ``ids.bin``: the ids in the machine's byte order (recorded), ``uint8`` (vocab ≤ 256),
  ``uint16`` (≤ 65,536) or ``uint32``;
- ``meta.json``: format, options, the file's sha256, dtype, token count and the vocabulary.

Entries are written into a temporary directory and renamed into place, so a reader never
sees a half-written one; an entry that does not check out is rebuilt.

The ids come back memory-mapped from ``ids.bin`` (read-only, copy-on-write): a process reads
the pages it touches through the page cache, and processes on one machine (the ranks of a
data-parallel run) share one copy of them instead of holding one each. So an entry is never
rewritten in place (a mapped file cut short under a reader would crash it): a damaged one is
removed, and its replacement renamed into place.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from grulm.data.sources import cache_dir
from grulm.data.text import (
    check_text_options,
    clean_d2l,
    clean_raw,
    d2l_words,
    decode_raw,
    raw_words,
)
from grulm.data.vocab import UNK, Vocab
from grulm.errors import ConfigError, DataError

FORMAT = "grulm.prepared/2"  # 2: raw cleaning drops the BOM and reads universal newlines
CHUNK_BYTES = 16 << 20
_UTF32 = "utf-32-le" if sys.byteorder == "little" else "utf-32-be"  # native, like array("I")
_DISK_DTYPES = {"uint8": (torch.uint8, "B", 1), "uint16": (torch.uint16, "H", 2),
                "uint32": (torch.uint32, "I", 4)}  # fmt: skip


@dataclass(frozen=True)
class Prepared:
    """Token ids of a whole file with their vocabulary.

    Attributes:
        ids: (N,) token ids, ``torch.uint8`` when the vocabulary has ≤ 256 tokens,
            ``torch.uint16`` (≤ 65,536, from the cache) or ``torch.int32``; memory-mapped when
            they come from the cache (batch iterators turn windows into int64).
        vocab: the vocabulary the ids index.
        sha256: hex sha256 of the file's bytes (identifies the data in checkpoints).
        cached: whether the ids were loaded from the cache rather than computed.
    """

    ids: torch.Tensor
    vocab: Vocab
    sha256: str
    cached: bool = False


def storage_dtype(vocab_size: int) -> str:
    """The narrowest unsigned type that holds every id: ``uint8``, ``uint16`` or ``uint32``."""
    return "uint8" if vocab_size <= 1 << 8 else "uint16" if vocab_size <= 1 << 16 else "uint32"


def load_prepared(
    path: Path,
    *,
    cleaning: str = "d2l",
    token: str = "char",
    min_freq: int = 0,
    reserved_tokens: Sequence[str] = (),
    use_cache: bool = True,
    progress: bool = False,
    name: str | None = None,
) -> Prepared:
    """The ids and vocabulary of ``path``, from the cache when prepared before.

    Args:
        path: a readable, non-empty text file (see :func:`grulm.data.sources.resolve_source`).
        cleaning, token, min_freq, reserved_tokens: see :mod:`grulm.data.text` and
            :meth:`Vocab.from_counts`.
        use_cache: read and write ``<cache>/prepared``; ``False`` always recomputes and
            writes nothing.
        progress: show tqdm bars on stderr while preparing.
        name: how messages refer to the file (default: its path).
    """
    check_text_options(cleaning, token)
    if not isinstance(min_freq, int) or min_freq < 0:
        raise ConfigError(f"min_freq must be an integer ≥ 0, got {min_freq!r}")
    sha256 = _sha256(path)
    options = {
        "cleaning": cleaning,
        "token": token,
        "min_freq": min_freq,
        "reserved_tokens": list(reserved_tokens),
    }
    if not use_cache:
        return prepare(path, **options, progress=progress, name=name, sha256=sha256)
    key = hashlib.sha256(
        json.dumps({"format": FORMAT, "sha256": sha256, **options}, sort_keys=True).encode()
    ).hexdigest()[:32]
    entry = cache_dir() / "prepared" / key
    found = _read_entry(entry, sha256, options)
    if found is not None:
        return found
    prepared = prepare(path, **options, progress=progress, name=name, sha256=sha256)
    _write_entry(entry, prepared, options)
    mapped = _read_entry(entry, sha256, options)  # the shared pages, not a private copy
    return prepared if mapped is None else Prepared(mapped.ids, prepared.vocab, sha256)


def prepare(
    path: Path,
    *,
    cleaning: str = "d2l",
    token: str = "char",
    min_freq: int = 0,
    reserved_tokens: Sequence[str] = (),
    progress: bool = False,
    name: str | None = None,
    sha256: str | None = None,
) -> Prepared:
    """Clean, tokenize, count and map a whole file (no cache). See :func:`load_prepared`."""
    check_text_options(cleaning, token)
    name = name if name is not None else str(path)
    size = path.stat().st_size
    bar = _bar(progress, size, f"preparing {Path(name).name}")
    try:
        if token == "char":
            ids, vocab = _prepare_chars(path, cleaning, min_freq, reserved_tokens, name, bar)
        else:
            ids, vocab = _prepare_words(path, cleaning, min_freq, reserved_tokens, name, bar)
    finally:
        if bar is not None:
            bar.close()
    if ids.numel() == 0 and cleaning == "d2l":
        raise DataError(
            f"{name}: nothing is left after d2l cleaning (it keeps only the letters A-Z, a-z); "
            "use --cleaning raw to keep all UTF-8 text"
        )
    if ids.numel() == 0:
        raise DataError(
            f"{name}: no text is left after {cleaning} cleaning (the file is empty or holds "
            "only a byte-order mark); pass a file that contains text"
        )
    return Prepared(ids, vocab, sha256 if sha256 is not None else _sha256(path))


# --------------------------------------------------------------------------------- chunks
def _chunks(path: Path) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) pieces of the file, each ending at a ``\\n`` except the last."""
    offset = 0
    tail = b""
    with open(path, "rb") as file:
        while block := file.read(CHUNK_BYTES):
            block = tail + block
            cut = block.rfind(b"\n") + 1
            if cut == 0:  # no line end yet: keep reading
                tail = block
                continue
            yield offset, block[:cut]
            offset += cut
            tail = block[cut:]
    if tail:
        yield offset, tail


def _decode(raw: bytes, offset: int, cleaning: str, name: str) -> str:
    """A chunk's text under ``raw`` or ``none`` cleaning (``offset``: where it starts)."""
    text = decode_raw(raw, offset=offset, name=name)
    return clean_raw(text, at_start=offset == 0) if cleaning == "raw" else text


def _vocab(counts: Mapping[str, int], min_freq: int, reserved: Sequence[str], name: str) -> Vocab:
    """The vocabulary of ``counts``, refused when ``min_freq`` keeps none of their tokens."""
    if counts:
        token, count = max(counts.items(), key=lambda item: item[1])
        if count < min_freq:
            raise ConfigError(
                f"min_freq {min_freq} leaves only {UNK} in the vocabulary of {name}: its most "
                f"frequent token, {token!r}, occurs {count} times; lower --min-freq to "
                f"{count} or less"
            )
    return Vocab.from_counts(counts, min_freq, reserved)


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=2 * total, unit="B", unit_scale=True, desc=desc)


def _advance(bar, amount: int) -> None:
    if bar is not None:
        bar.update(amount)


# --------------------------------------------------------------------------------- chars
def _prepare_chars(path, cleaning, min_freq, reserved, name, bar):
    pieces: list[tuple[int, bytes | str]] = []  # (input size, cleaned text; bytes if ASCII)
    counts: Counter = Counter()  # insertion order = first appearance in the file
    for offset, raw in _chunks(path):
        if cleaning == "d2l":
            text: bytes | str = clean_d2l(raw)
        else:
            text = _decode(raw, offset, cleaning, name)
            if text.isascii():
                text = text.encode("ascii")  # bytes take the fast path below
        counts.update(_count_chars(text))
        pieces.append((len(raw), text))
        _advance(bar, len(raw))
    vocab = _vocab(counts, min_freq, reserved, name)
    char_ids = {ch: vocab[ch] for ch in counts}  # dropped (rare) characters → 0, <unk>
    if len(vocab) <= 256 and all(isinstance(text, bytes) for _, text in pieces):
        table = bytearray(256)
        for ch, index in char_ids.items():
            table[ord(ch)] = index
        out = bytearray()
        for size, text in pieces:
            out += text.translate(table)
            _advance(bar, size)
        return torch.frombuffer(out, dtype=torch.uint8) if out else _empty(), vocab
    # General case: map each character to the character whose code point is its id, then
    # read the code points back as uint32 (UTF-32).
    table32 = {ord(ch): index for ch, index in char_ids.items()}
    out32 = array.array("I")
    for size, text in pieces:
        if isinstance(text, bytes):
            text = text.decode("ascii")
        out32.frombytes(text.translate(table32).encode(_UTF32, "surrogatepass"))
        _advance(bar, size)
    return _narrow(out32, len(vocab)), vocab


def _count_chars(text: bytes | str) -> Counter:
    """Character counts of a piece, keys in first-appearance order."""
    if isinstance(text, str):
        return Counter(text)
    if not text:
        return Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only buffer; we only read it
        histogram = torch.bincount(torch.frombuffer(text, dtype=torch.uint8), minlength=256)
    present = histogram.nonzero().flatten().tolist()
    first = sorted(present, key=lambda byte: text.find(bytes((byte,))))
    return Counter({chr(byte): int(histogram[byte]) for byte in first})


# --------------------------------------------------------------------------------- words
def _words(raw: bytes, offset: int, cleaning: str, name: str) -> list:
    if cleaning == "d2l":
        return d2l_words(raw)  # bytes tokens (ASCII)
    return raw_words(_decode(raw, offset, cleaning, name))


def _prepare_words(path, cleaning, min_freq, reserved, name, bar):
    # One pass: each distinct word gets a provisional id in order of first appearance (a
    # defaultdict whose default is its own length, so the lookup runs at C speed); counts
    # are a bincount of the provisional ids; the final ids are a gather through the vocab.
    first_seen: defaultdict = defaultdict()
    first_seen.default_factory = first_seen.__len__
    provisional = array.array("I")
    for offset, raw in _chunks(path):
        provisional.extend(map(first_seen.__getitem__, _words(raw, offset, cleaning, name)))
        _advance(bar, 2 * len(raw))
    if not provisional:
        return _empty(), Vocab.from_counts({}, min_freq, reserved)
    order = torch.frombuffer(provisional, dtype=torch.uint32).to(torch.int64)  # (N,)
    counts = torch.bincount(order, minlength=len(first_seen)).tolist()
    words = [w.decode("ascii") for w in first_seen] if cleaning == "d2l" else list(first_seen)
    vocab = _vocab(dict(zip(words, counts, strict=True)), min_freq, reserved, name)
    remap = torch.tensor(vocab[words], dtype=torch.int32)  # provisional id → vocab id
    ids = remap[order]
    return (ids.to(torch.uint8) if len(vocab) <= 256 else ids), vocab


def _narrow(ids32: array.array, vocab_size: int) -> torch.Tensor:
    """In-memory ids: uint8 for small vocabularies, else int32."""
    if not ids32:
        return _empty()
    if vocab_size <= 256:
        return torch.frombuffer(array.array("B", ids32), dtype=torch.uint8)
    return torch.frombuffer(ids32, dtype=torch.uint32).to(torch.int32)


def _max_id(ids: torch.Tensor) -> int:
    """The largest id, read in chunks (uint16 has no ``max``; a chunk bounds the copy)."""
    step = CHUNK_BYTES
    return max(int(ids[i : i + step].to(torch.int32).max()) for i in range(0, len(ids), step))


def _empty() -> torch.Tensor:
    return torch.zeros(0, dtype=torch.uint8)


# --------------------------------------------------------------------------------- cache
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _to_disk_bytes(ids: torch.Tensor, dtype: str) -> bytearray:
    """The ids as ``dtype`` in the machine's byte order (recorded in ``meta.json``)."""
    torch_dtype, _, itemsize = _DISK_DTYPES[dtype]
    out = bytearray(ids.numel() * itemsize)
    if out:
        torch.frombuffer(out, dtype=torch_dtype).copy_(ids.to(torch_dtype))
    return out


def _write_entry(entry: Path, prepared: Prepared, options: dict) -> None:
    dtype = storage_dtype(len(prepared.vocab))
    meta = {
        "format": FORMAT,
        "sha256": prepared.sha256,
        **options,
        "dtype": dtype,
        "byteorder": sys.byteorder,
        "num_tokens": prepared.ids.numel(),
        "vocab": prepared.vocab.to_dict(),
    }
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}."))
    except OSError:
        return  # an unwritable cache only costs time: the caller has its ids
    try:
        (staging / "ids.bin").write_bytes(_to_disk_bytes(prepared.ids, dtype))
        (staging / "meta.json").write_text(json.dumps(meta, ensure_ascii=False))
        os.replace(staging, entry)
    except OSError:
        pass  # full disk, or another process renamed its copy first: both fine
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_entry(entry: Path, sha256: str, options: dict) -> Prepared | None:
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("format") != FORMAT or meta.get("sha256") != sha256:
            raise ValueError("stale entry")
        if meta.get("byteorder") != sys.byteorder:
            raise ValueError("stale entry")
        if any(meta.get(key) != value for key, value in options.items()):
            raise ValueError("different options")
        vocab = Vocab.from_dict(meta["vocab"])
        dtype, num_tokens = meta["dtype"], meta["num_tokens"]
        torch_dtype, _, itemsize = _DISK_DTYPES[dtype]
        size = (entry / "ids.bin").stat().st_size
        if size != num_tokens * itemsize or dtype != storage_dtype(len(vocab)):
            raise ValueError("truncated entry")
        ids = _empty() if not size else torch.from_file(
            str(entry / "ids.bin"), shared=False, size=num_tokens, dtype=torch_dtype)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, DataError):
        shutil.rmtree(entry, ignore_errors=True)  # damaged: rebuild it
        return None
    if dtype == "uint32":
        ids = ids.view(torch.int32)  # ids < 2³¹: the same bits, no copy
    if ids.numel() and _max_id(ids) >= len(vocab):
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return Prepared(ids, vocab, sha256, cached=True)
