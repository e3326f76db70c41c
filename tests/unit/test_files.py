"""Owner-only, atomic file writes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs import files


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A permissive umask, so the modes checked come from the code, not from the umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_write_private_creates_0600_file_in_0700_dirs(tmp_path: Path, loose_umask: None) -> None:
    target = tmp_path / "a" / "b" / "secret.key"
    result = files.write_private(target, b"secret")
    assert result == target
    assert target.read_bytes() == b"secret"
    assert mode(target) == 0o600
    assert mode(target.parent) == 0o700


def test_write_private_tightens_an_existing_directory(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)  # noqa: S103 - the loose mode under test
    files.write_private(directory / "k", b"x")
    assert mode(directory) == 0o700


def test_write_private_tightens_an_existing_loose_file(tmp_path: Path) -> None:
    target = tmp_path / "k"
    target.write_bytes(b"old")
    os.chmod(target, 0o666)  # noqa: S103 - the loose mode under test
    files.write_private(target, b"new")
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600


def test_write_public_is_0644_even_under_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        target = files.write_public(tmp_path / "ca.crt", b"cert")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"cert"
    assert mode(target) == 0o644


def test_explicit_mode(tmp_path: Path, loose_umask: None) -> None:
    target = files.write_private(tmp_path / "f", b"x", mode=0o640)
    assert mode(target) == 0o640


def test_replace_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "secret.key"
    files.write_private(target, b"old content")
    seen: list[tuple[bytes, bytes, int]] = []
    real_replace = os.replace

    def spying_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        # Right before the swap, readers still see the whole old file, and the new
        # content is complete and already private in the temporary file.
        seen.append((Path(dst).read_bytes(), Path(src).read_bytes(), mode(Path(src))))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", spying_replace)
    files.write_private(target, b"new content")
    assert seen == [(b"old content", b"new content", 0o600)]
    assert target.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.key"]


def test_failed_replace_keeps_old_content_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "secret.key"
    files.write_private(target, b"old content")

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        files.write_private(target, b"new content")
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.key"]


def test_repeated_writes_leave_only_the_target(tmp_path: Path) -> None:
    target = tmp_path / "cfg.yaml"
    for i in range(3):
        files.write_public(target, f"v{i}".encode())
    assert target.read_bytes() == b"v2"
    assert [p.name for p in tmp_path.iterdir()] == ["cfg.yaml"]


def test_ensure_private_dir(tmp_path: Path, loose_umask: None) -> None:
    directory = files.ensure_private_dir(tmp_path / "x" / "y")
    assert directory.is_dir()
    assert mode(directory) == 0o700
