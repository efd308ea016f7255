"""Finding corpora: GRULM_DATA_PATH, the cache, verified downloads (a real HTTP server on
loopback), local paths, and one clear error for each way it can go wrong."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading

import pytest

from grulm.data import sources
from grulm.data.sources import Source, cache_dir, resolve_source
from grulm.errors import DataError

BOOK = b"The Time Traveller (for so it will be convenient to speak of him)\n" * 50


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """An http.server in a thread serving tmp_path/www; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def register(monkeypatch, url, content=BOOK, algorithm="sha1"):
    checksum = hashlib.new(algorithm, content).hexdigest()
    source = Source("book", url, "book.txt", algorithm, checksum)
    monkeypatch.setitem(sources.BUILTIN_SOURCES, "book", source)
    return source


def closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/book.txt"  # nothing listens there now


def test_builtins_are_registered_with_their_checksums():
    assert sources.BUILTIN_SOURCES["timemachine"].checksum == (
        "090b5e7e70c295757f55df93cb0a180b9691891a"
    )
    assert sources.BUILTIN_SOURCES["tinyshakespeare"].algorithm == "sha256"


def test_found_and_verified_in_the_data_path(shared_data):
    for name in ("timemachine", "tinyshakespeare"):
        resolved = resolve_source(name)
        assert resolved.path == shared_data / f"{name}.txt" and resolved.builtin
    assert not cache_dir().exists()  # nothing downloaded, nothing cached


def test_data_path_dirs_are_searched_in_order(tmp_path, monkeypatch):
    register(monkeypatch, closed_port_url())
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (second / "book.txt").write_bytes(BOOK)
    monkeypatch.setenv("GRULM_DATA_PATH", f"{first}::{second}")
    assert resolve_source("book").path == second / "book.txt"


def test_a_wrong_file_in_the_data_path_is_refused(tmp_path, monkeypatch):
    register(monkeypatch, closed_port_url())
    (tmp_path / "book.txt").write_bytes(BOOK + b"edited")
    monkeypatch.setenv("GRULM_DATA_PATH", str(tmp_path))
    with pytest.raises(DataError, match="is not the book corpus: its sha1 is .*--data PATH"):
        resolve_source("book")


def test_download_is_verified_cached_and_reused(server, monkeypatch):
    base, root = server
    (root / "book.txt").write_bytes(BOOK)
    register(monkeypatch, f"{base}/book.txt", algorithm="sha256")
    resolved = resolve_source("book", progress=True)
    assert resolved.path == cache_dir() / "book.txt" and resolved.path.read_bytes() == BOOK
    assert sorted(p.name for p in cache_dir().iterdir()) == ["book.txt"]  # no .part left
    (root / "book.txt").unlink()  # the server no longer has it: the cache copy is used
    assert resolve_source("book").path == cache_dir() / "book.txt"


def test_a_damaged_cache_copy_is_downloaded_again(server, monkeypatch):
    base, root = server
    (root / "book.txt").write_bytes(BOOK)
    register(monkeypatch, f"{base}/book.txt")
    cache_dir().mkdir(parents=True)
    (cache_dir() / "book.txt").write_bytes(b"truncated")
    assert resolve_source("book").path.read_bytes() == BOOK


def test_checksum_mismatch_refuses_and_removes_the_partial_file(server, monkeypatch):
    base, root = server
    (root / "book.txt").write_bytes(BOOK + b"tampered")
    register(monkeypatch, f"{base}/book.txt")
    with pytest.raises(DataError, match="has sha1 .*expected .*partial file was removed"):
        resolve_source("book")
    assert list(cache_dir().iterdir()) == []


def test_http_error_is_the_offline_error(server, monkeypatch):
    base, _ = server
    register(monkeypatch, f"{base}/missing.txt")
    with pytest.raises(DataError, match="HTTP 404 File not found.*no local copy"):
        resolve_source("book")
    assert list(cache_dir().iterdir()) == []


def test_offline_with_no_copy_names_the_three_ways(monkeypatch):
    register(monkeypatch, closed_port_url())
    with pytest.raises(DataError) as error:
        resolve_source("book")
    message = str(error.value)
    assert "GRULM_DATA_PATH" in message and str(cache_dir()) in message
    assert "--data PATH" in message and "no local copy" in message
    assert not any(cache_dir().glob("*.part")) and not any(cache_dir().glob(".*.part"))


def test_an_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch):
    register(monkeypatch, closed_port_url())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("GRULM_CACHE", str(blocker / "cache"))  # under a regular file
    with pytest.raises(DataError, match="cannot write the download cache .*GRULM_CACHE"):
        resolve_source("book")


def test_local_files(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("hello")
    resolved = resolve_source(str(path))
    assert resolved.path == path and not resolved.builtin and resolved.name == str(path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file: .*built-in corpus \\(timemachine, tinyshakespeare\\)"),
        (lambda p: p.mkdir(), "is a directory; pass the path of a text file"),
        (lambda p: p.write_bytes(b""), "is empty \\(0 bytes\\)"),
    ],
)
def test_bad_local_paths(tmp_path, make, message):
    path = tmp_path / "corpus"
    make(path)
    with pytest.raises(DataError, match=message):
        resolve_source(str(path))


# Special files are refused from their stat alone: opening a FIFO with no writer blocks forever
# and a device never ends.
def test_a_fifo_is_refused_without_being_opened(fifo):
    with pytest.raises(DataError) as error:
        resolve_source(str(fifo))
    assert str(error.value) == (
        f"'{fifo}' is a named pipe (FIFO), not a regular file; pass a text file"
    )


def test_a_socket_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a short relative name: socket paths are limited to ~100 bytes
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("corpus.sock")
    with pytest.raises(DataError, match="^'corpus.sock' is a socket, not a regular file"):
        resolve_source("corpus.sock")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_a_device_is_refused(device):
    if not os.path.exists(device):
        pytest.skip(f"{device} is absent")
    with pytest.raises(DataError) as error:
        resolve_source(device)
    assert str(error.value) == (
        f"'{device}' is a character device, not a regular file; pass a text file"
    )


def test_a_symlink_to_a_regular_file_is_read_and_one_to_a_device_is_not(tmp_path):
    (tmp_path / "real.txt").write_text("hello")
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    assert resolve_source(str(tmp_path / "link.txt")).path == tmp_path / "link.txt"
    (tmp_path / "zero").symlink_to("/dev/zero")
    with pytest.raises(DataError, match="is a character device"):
        resolve_source(str(tmp_path / "zero"))


def test_a_path_through_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot read .*Not a directory.*check the path"):
        resolve_source(str(tmp_path / "file" / "corpus.txt"))
