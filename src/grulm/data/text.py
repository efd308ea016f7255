"""Text cleaning and tokenization: bytes of a file → a stream of tokens.

Cleaning (``cleaning=``):

- ``d2l`` (the seed): every line becomes ``re.sub('[^A-Za-z]+', ' ', line).strip().lower()``
  (:func:`clean_line_d2l`); lines are read as Python's text mode does, so ``\\n``, ``\\r\\n``
  and ``\\r`` all end a line. Bytes that are not ASCII letters are separators, so the file
  need not be valid UTF-8.
- ``raw`` (the default for a text file): the file is decoded as UTF-8 and read as Python's
  text mode reads it with ``encoding="utf-8-sig"`` (:func:`clean_raw`): one byte-order mark
  (U+FEFF) at the start of the file is dropped, and line ends are universal newlines
  (``\\r\\n`` and a lone ``\\r`` each become ``\\n``). Everything else is kept as it is, so a
  BOM + CRLF copy of a text gives exactly the tokens of its LF original. An undecodable byte
  is an error that names its offset.
- ``none``: the file is decoded as UTF-8 and kept exactly as it is, BOM and ``\\r`` included.

Tokens (``token=``):

- ``char`` (the seed): the corpus is the characters of all cleaned lines concatenated with no
  separator between lines, exactly d2l's ``load_corpus_time_machine`` (so the last word of a
  line runs into the first word of the next).
- ``word``: with ``d2l`` cleaning, each cleaned line split on spaces (d2l's
  ``tokenize(lines, 'word')``); detokenize by joining with one space. With ``raw`` or ``none``
  cleaning, the text is cut into runs of word characters (``\\w+``), single punctuation or symbol
  characters, single newlines and runs of other whitespace, so that concatenating the tokens
  gives the text back exactly (:func:`raw_words`); detokenize by joining with ``""``.

The whole-text functions here run at C speed (``bytes.translate``/``replace``/``split``, one
regular expression for raw words): no Python loop per character or per line, so cleaning
100 MB takes seconds. They work on any run of whole lines, which is how
:mod:`grulm.data.prepare` processes large files chunk by chunk.
"""

from __future__ import annotations

import re

from grulm.errors import ConfigError, DataError

CLEANINGS = ("d2l", "raw", "none")
BOM = "\ufeff"
TOKENS = ("char", "word")


def _d2l_byte(byte: int) -> int:
    """Letters lower-cased, CR and LF → LF, every other byte → space (a separator)."""
    char = chr(byte)
    if char.isascii() and char.isalpha():
        return ord(char.lower())
    return ord("\n") if char in "\r\n" else ord(" ")


_D2L_TABLE = bytes(_d2l_byte(byte) for byte in range(256))
_RAW_WORD = re.compile(r"\w+|[^\w\s]|\n|[^\S\n]+")


def check_text_options(cleaning: str, token: str) -> None:
    """Raise ``ConfigError`` unless ``cleaning`` and ``token`` are known names."""
    if cleaning not in CLEANINGS:
        raise ConfigError(f"cleaning must be one of {', '.join(CLEANINGS)}, got {cleaning!r}")
    if token not in TOKENS:
        raise ConfigError(f"token must be one of {', '.join(TOKENS)}, got {token!r}")


def clean_line_d2l(line: str) -> str:
    """The seed's per-line cleaning, verbatim (the readable definition of ``d2l``)."""
    return re.sub("[^A-Za-z]+", " ", line).strip().lower()


def clean_d2l(data: bytes) -> bytes:
    """d2l-cleaned characters of whole lines of text, concatenated (ASCII ``a-z`` and space).

    Equals ``"".join(clean_line_d2l(line) for line in lines)`` for the lines of ``data``.
    A run of separators becomes one space inside a line and vanishes where it touches a line
    end (``strip`` per line, lines joined with no separator).
    """
    text = data.translate(_D2L_TABLE)  # only a-z, " ", "\n" remain
    while b"  " in text:
        text = text.replace(b"  ", b" ")
    text = text.replace(b" \n", b"\n").replace(b"\n ", b"\n")
    return text.replace(b"\n", b"").strip(b" ")


def d2l_words(data: bytes) -> list[bytes]:
    """d2l word tokens of whole lines: every cleaned line split on spaces, concatenated."""
    return data.translate(_D2L_TABLE).split()


def decode_raw(data: bytes, *, offset: int = 0, name: str = "the text") -> str:
    """``data`` decoded as UTF-8, or ``DataError`` naming the first bad byte's offset.

    Args:
        offset: where ``data`` starts in its file, added to the reported position.
        name: what to call the file in the message.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        position = offset + error.start
        bad = data[error.start : error.start + 1].hex()
        raise DataError(
            f"{name}: byte 0x{bad} at offset {position} is not valid UTF-8 ({error.reason}); "
            "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8), or use "
            "--cleaning d2l, which keeps only the letters A-Z"
        ) from None


def clean_raw(text: str, *, at_start: bool = True) -> str:
    """The ``raw`` cleaning of decoded text: the leading BOM dropped, universal newlines.

    Args:
        at_start: whether ``text`` begins the file; only there is a U+FEFF a byte-order mark
            (elsewhere it is a zero-width no-break space, and kept).
    """
    if at_start and text.startswith(BOM):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def raw_words(text: str) -> list[str]:
    """Round-tripping word tokens: ``"".join(raw_words(t)) == t`` for every string ``t``.

    Tokens are runs of word characters (``\\w+``: letters, digits, underscore, any script),
    single characters that are neither word nor space (punctuation, symbols), single ``\\n``,
    and runs of other whitespace (spaces, tabs, ``\\r``).
    """
    return _RAW_WORD.findall(text)


def text_to_tokens(text: str, cleaning: str = "d2l", token: str = "char") -> list[str]:
    """Clean and tokenize a string the way a corpus is (for prompts and small texts).

    Shapes: ``str`` → ``list[str]``; ids come from ``vocab[tokens]``. ``text`` is read as the
    start of a file, so with ``raw`` a leading BOM is dropped.
    """
    check_text_options(cleaning, token)
    if cleaning == "d2l":
        data = text.encode("utf-8", "surrogatepass")  # a lone surrogate is a separator too
        if token == "char":
            return list(clean_d2l(data).decode("ascii"))
        return [word.decode("ascii") for word in d2l_words(data)]
    if cleaning == "raw":
        text = clean_raw(text)
    return list(text) if token == "char" else raw_words(text)


def join_tokens(tokens: list[str], cleaning: str = "d2l", token: str = "char") -> str:
    """Text of a token sequence: the inverse of tokenization (words of d2l text get spaces)."""
    check_text_options(cleaning, token)
    separator = " " if (token == "word" and cleaning == "d2l") else ""
    return separator.join(tokens)
