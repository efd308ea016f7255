"""Where corpus files come from: the built-in registry, local paths, the cache, downloads.

``resolve_source(data)`` turns what the user typed after ``--data`` into a verified local file:

- a built-in name (``timemachine``, ``tinyshakespeare``) is looked up, in order, in the
  directories of ``GRULM_DATA_PATH`` (colon-separated), then in the cache
  (``$GRULM_CACHE``, default ``~/.cache/grulm``), then downloaded into the cache. Every copy
  is checked against the registry's checksum; a download streams to a temporary file in the
  cache directory and is renamed into place only once it verifies, so an interrupted or
  corrupt download never leaves a file under the final name.
- anything else is a path to a local text file.

Only regular files are read, as corpora and as prime files (:func:`read_prime_text`): a FIFO,
a device such as ``/dev/zero`` or a socket is refused from its ``stat`` alone, before any
``open`` (opening a FIFO with no writer blocks forever, and a device never ends).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import stat
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from grulm.errors import DataError

DATA_PATH_ENV = "GRULM_DATA_PATH"
CACHE_ENV = "GRULM_CACHE"
DOWNLOAD_TIMEOUT_S = 30.0
PRIME_FILE_MAX_BYTES = 1 << 20  # a prompt, not a corpus: 1 MiB is ~200 pages of text
_CHUNK = 1 << 20
_SPECIAL_FILES = (
    (stat.S_ISFIFO, "named pipe (FIFO)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class Source:
    """A built-in corpus: where to get it and how to recognise the right bytes.

    Attributes:
        name: what ``--data`` accepts.
        url: where to download it.
        filename: its name in ``GRULM_DATA_PATH`` directories and in the cache.
        algorithm: ``hashlib`` name of the checksum (``sha1``, ``sha256``).
        checksum: hex digest of the exact file.
    """

    name: str
    url: str
    filename: str
    algorithm: str
    checksum: str


BUILTIN_SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source(
            "timemachine",
            "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
            "timemachine.txt",
            "sha1",
            "090b5e7e70c295757f55df93cb0a180b9691891a",
        ),
        Source(
            "tinyshakespeare",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
            "tinyshakespeare/input.txt",
            "tinyshakespeare.txt",
            "sha256",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        ),
    )
}


@dataclass(frozen=True)
class ResolvedSource:
    """A corpus file on disk, ready to read.

    Attributes:
        path: the file.
        name: the built-in name, or the path as given for a local file.
        builtin: whether it came from the registry (and so was checksum-verified).
    """

    path: Path
    name: str
    builtin: bool


def data_path_dirs() -> list[Path]:
    """The directories listed in ``GRULM_DATA_PATH``, in order (empty entries ignored)."""
    value = os.environ.get(DATA_PATH_ENV, "")
    return [Path(entry).expanduser() for entry in value.split(os.pathsep) if entry]


def cache_dir() -> Path:
    """``$GRULM_CACHE``, else ``~/.cache/grulm`` (not created here)."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "grulm"


def resolve_source(data: str, *, progress: bool = False) -> ResolvedSource:
    """The local file for ``data``: a built-in corpus name or a path to a text file.

    Args:
        data: ``timemachine``, ``tinyshakespeare`` or a path.
        progress: show a tqdm bar on stderr while downloading.

    Raises:
        DataError: a missing, unreadable or empty path, a directory or a special file (FIFO,
            device, socket); a built-in copy whose
            checksum is wrong; no local copy and no network.
    """
    source = BUILTIN_SOURCES.get(data)
    if source is not None:
        return ResolvedSource(_locate_builtin(source, progress), source.name, True)
    path = Path(data).expanduser()
    check_text_file(path, data)
    return ResolvedSource(path, data, False)


def check_text_file(path: Path, shown: str | None = None) -> None:
    """Raise ``DataError`` unless ``path`` is an existing, readable, non-empty regular file.

    A special file (FIFO, device, socket) is refused without being opened.
    """
    shown = repr(shown if shown is not None else str(path))
    names = ", ".join(BUILTIN_SOURCES)
    try:
        size = _regular_file_size(path, shown)
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise DataError(
            f"no such file: {shown}; check the path, or use a built-in corpus ({names})"
        ) from None
    except OSError as error:
        raise DataError(_unreadable(shown, error)) from None
    if size == 0:
        raise DataError(f"{shown} is empty (0 bytes); pass a file that contains text")


def read_prime_text(path: Path, limit: int = PRIME_FILE_MAX_BYTES) -> str:
    """The UTF-8 text of a prime file (a generation prompt), as it is: cleaning comes later.

    At most ``limit + 1`` bytes are read, so a huge file costs no memory before it is refused.

    Raises:
        DataError: a missing file, a directory or special file, an unreadable file, one larger
            than ``limit`` bytes, one with NUL bytes, or one that is not UTF-8.
    """
    shown = f"prime file {str(path)!r}"
    try:
        _regular_file_size(path, shown)
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except FileNotFoundError:
        raise DataError(f"{shown} does not exist; check the path") from None
    except OSError as error:
        raise DataError(_unreadable(shown, error)) from None
    if len(data) > limit:
        raise DataError(
            f"{shown} is larger than {limit:,} bytes, the most a prompt may be; pass a shorter "
            "excerpt, e.g. its last lines: tail -n 1000 FILE > prompt.txt"
        )
    if b"\0" in data:
        raise DataError(f"{shown} is binary (it has NUL bytes); pass a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{shown} is not UTF-8 text: byte 0x{data[error.start]:02x} at offset "
            f"{error.start}; convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _regular_file_size(path: Path, shown: str) -> int:
    """The size of ``path`` from its ``stat`` (nothing is opened), or ``DataError`` unless it
    is a regular file; ``shown`` is how the message names it. Raises ``FileNotFoundError``
    for a missing path and ``OSError`` when it cannot be examined."""
    info = path.stat()
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        raise DataError(f"{shown} is a directory; pass the path of a text file inside it")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "special file")
        raise DataError(f"{shown} is a {kind}, not a regular file; pass a text file")
    return info.st_size


def _unreadable(shown: str, error: OSError) -> str:
    return f"cannot read {shown} ({error.strerror}); check the path and its permissions"


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _locate_builtin(source: Source, progress: bool) -> Path:
    for directory in data_path_dirs():
        candidate = directory / source.filename
        if candidate.is_file():
            found = file_digest(candidate, source.algorithm)
            if found != source.checksum:
                raise DataError(
                    f"{candidate} is not the {source.name} corpus: its {source.algorithm} is "
                    f"{found}, expected {source.checksum}; remove or replace it (it was found "
                    f"through {DATA_PATH_ENV}), or pass it as a local file with --data PATH"
                )
            return candidate
    cached = cache_dir() / source.filename
    if cached.is_file():
        if file_digest(cached, source.algorithm) == source.checksum:
            return cached
        cached.unlink()  # a damaged cache copy is ours to replace
    return download(source, cache_dir(), progress=progress)


def download(source: Source, directory: Path, *, progress: bool = False) -> Path:
    """Download ``source`` into ``directory`` under its file name, verified and atomic.

    The bytes stream into a temporary file in ``directory`` while being hashed; only a file
    whose checksum matches is renamed to its final name. On any failure the temporary file is
    removed.

    Raises:
        DataError: the network cannot be reached (naming the three ways to supply the file),
            the directory cannot be written, or the checksum does not match.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=directory, prefix=f".{source.filename}.", suffix=".part"
        )
    except OSError as error:
        raise DataError(
            f"cannot write the download cache {directory} ({error.strerror}); set "
            f"{CACHE_ENV} to a writable directory, or pass the file with --data PATH"
        ) from None
    part = Path(temporary)
    try:
        with os.fdopen(handle, "wb") as file:
            digest = _stream(source, file, progress)
        found = digest.hexdigest()
        if found != source.checksum:
            raise DataError(
                f"the download of {source.name} from {source.url} has {source.algorithm} "
                f"{found}, expected {source.checksum}; the partial file was removed. Try again "
                f"later, or download it yourself and pass it with --data PATH"
            )
        final = directory / source.filename
        os.replace(part, final)
        return final
    except OSError as error:
        raise DataError(
            f"cannot write the download of {source.name} into {directory} ({error.strerror}); "
            f"free some space or set {CACHE_ENV} to another directory, or pass the file with "
            "--data PATH"
        ) from None
    finally:
        part.unlink(missing_ok=True)


def _stream(source: Source, file, progress: bool):
    digest = hashlib.new(source.algorithm)
    bar = None
    try:
        with urllib.request.urlopen(source.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            if progress:
                from tqdm.auto import tqdm

                total = response.headers.get("Content-Length")
                bar = tqdm(
                    total=int(total) if total else None,
                    unit="B",
                    unit_scale=True,
                    desc=f"downloading {source.name}",
                )
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                file.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    except _NETWORK_ERRORS as error:
        if isinstance(error, urllib.error.HTTPError):
            reason = f"HTTP {error.code} {error.reason}"
        else:
            reason = getattr(error, "reason", None) or error
        raise DataError(
            f"cannot download the {source.name} corpus from {source.url} ({reason}) and there "
            f"is no local copy. Supply it one of three ways: put {source.filename} in a "
            f"directory listed in {DATA_PATH_ENV} (colon-separated), put it in the cache "
            f"{cache_dir()}, or pass the file with --data PATH"
        ) from None
    finally:
        if bar is not None:
            bar.close()
    return digest
