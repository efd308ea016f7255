"""Prime files (generation prompts): regular files only, at most 1 MiB, never read whole
before the limit is checked, and one clear line for each way they can be wrong."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from grulm.data.sources import PRIME_FILE_MAX_BYTES, read_prime_text
from grulm.errors import DataError


def message(path) -> str:
    with pytest.raises(DataError) as error:
        read_prime_text(path)
    return str(error.value)


def test_the_text_comes_back_as_it_is(tmp_path):
    path = tmp_path / "prime.txt"
    path.write_bytes("\ufeffTime Traveller\r\n日本語".encode())
    assert read_prime_text(path) == "\ufeffTime Traveller\r\n日本語"  # cleaning comes later


def test_a_fifo_is_refused_without_being_opened(fifo):
    assert message(fifo) == (
        f"prime file '{fifo}' is a named pipe (FIFO), not a regular file; pass a text file"
    )


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_device_is_refused(device):
    if not os.path.exists(device):
        pytest.skip(f"{device} is absent")
    assert message(Path(device)) == (
        f"prime file '{device}' is a character device, not a regular file; pass a text file"
    )


def test_a_file_over_the_limit_is_refused(tmp_path):
    assert PRIME_FILE_MAX_BYTES == 1 << 20
    path = tmp_path / "prime.txt"
    path.write_bytes(b"a" * PRIME_FILE_MAX_BYTES)
    assert len(read_prime_text(path)) == PRIME_FILE_MAX_BYTES  # exactly the limit is fine
    path.write_bytes(b"a" * (PRIME_FILE_MAX_BYTES + 1))
    assert message(path) == (
        f"prime file '{path}' is larger than 1,048,576 bytes, the most a prompt may be; pass "
        "a shorter excerpt, e.g. its last lines: tail -n 1000 FILE > prompt.txt"
    )


def test_a_huge_file_is_refused_after_reading_only_the_limit(tmp_path):
    path = tmp_path / "huge.txt"
    with open(path, "wb") as file:
        file.truncate(256 << 20)  # sparse: 256 MiB that take no disk
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="larger than 1,048,576 bytes"):
            read_prime_text(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * PRIME_FILE_MAX_BYTES


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "prime file '{path}' does not exist; check the path"),
        ("dir", "prime file '{path}' is a directory; pass the path of a text file inside it"),
        (b"ab\0c", "prime file '{path}' is binary (it has NUL bytes); pass a text file"),
        (
            b"caf\xe9",
            "prime file '{path}' is not UTF-8 text: byte 0xe9 at offset 3; convert it to "
            "UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ),
    ],
)
def test_bad_prime_files(tmp_path, content, expected):
    path = tmp_path / "prime.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    assert message(path) == expected.format(path=path)


def test_an_unreadable_file_is_a_clear_error(tmp_path):
    path = tmp_path / "prime.txt"
    path.write_text("hello")
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as root: permissions do not apply")
    assert message(path) == (
        f"cannot read prime file '{path}' (Permission denied); check the path and its "
        "permissions"
    )
