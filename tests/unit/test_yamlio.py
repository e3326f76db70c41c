"""Safe YAML input: no aliases, size-capped, errors naming the line."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moorage import yamlio
from moorage.errors import ManifestError


def test_plain_document() -> None:
    assert yamlio.load_one("a: 1\nb: [x, y]\n") == {"a": 1, "b": ["x", "y"]}


@pytest.mark.parametrize(
    "text",
    [
        "a: &x 1\nb: *x\n",
        "base: &b {k: v}\nother:\n  <<: *b\n",
        "- &a [1, 2]\n- *a\n",
        # The classic "billion laughs" shape.
        'a: &a ["lol","lol"]\nb: &b [*a,*a]\nc: &c [*b,*b]\n',
    ],
)
def test_aliases_are_refused(text: str) -> None:
    with pytest.raises(ManifestError, match="aliases"):
        yamlio.load_one(text)


def test_alias_error_names_the_line() -> None:
    with pytest.raises(ManifestError, match=r"line 3"):
        yamlio.load_one("a: &x 1\nb: 2\nc: *x\n")


def test_oversize_is_refused() -> None:
    text = "a: " + "x" * 100 + "\n"
    assert yamlio.load_one(text, limit=len(text)) == {"a": "x" * 100}
    with pytest.raises(ManifestError, match="limit"):
        yamlio.load_one(text, limit=len(text) - 1)
    with pytest.raises(ManifestError, match="limit"):
        list(yamlio.load_all(text.encode(), limit=len(text) - 1))


def test_default_limit() -> None:
    with pytest.raises(ManifestError, match="limit"):
        yamlio.load_one("#" * (yamlio.MAX_YAML_BYTES + 1))


def test_load_all_multi_document() -> None:
    docs = list(yamlio.load_all("a: 1\n---\nb: 2\n---\n- 3\n"))
    assert docs == [{"a": 1}, {"b": 2}, [3]]


def test_load_one_wants_exactly_one_document() -> None:
    assert yamlio.load_one("---\na: 1\n---\n") == {"a": 1}  # empty documents do not count
    with pytest.raises(ManifestError, match="found 2"):
        yamlio.load_one("a: 1\n---\nb: 2\n")
    with pytest.raises(ManifestError, match="found 0"):
        yamlio.load_one("")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: 1\nb: [1, 2\n", 3),
        ("a: 1\nb: c: d\n", 2),
        ("a: 1\n\tb: 2\n", 2),
        ("ok: 1\nok2: 2\n  bad indent: 3\n", 3),
    ],
)
def test_invalid_yaml_names_the_line(text: str, line: int) -> None:
    with pytest.raises(ManifestError, match=rf"manifest\.yaml: invalid YAML at line {line}\b"):
        yamlio.load_one(text, source="manifest.yaml")


def test_python_tags_are_refused() -> None:
    with pytest.raises(ManifestError):
        yamlio.load_one("!!python/object/apply:os.system ['echo hi']\n")


def test_load_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kind: X\n")
    assert yamlio.load_file(path) == {"kind": "X"}
    path.write_text("kind: X\n" + "#" * 200)
    with pytest.raises(ManifestError, match="limit"):
        yamlio.load_file(path, limit=100)
    with pytest.raises(ManifestError, match="cannot read"):
        yamlio.load_file(tmp_path / "absent.yaml")


def test_dump_round_trip() -> None:
    data = {"z": 1, "a": {"list": [1, "two"]}}
    text = yamlio.dump(data)
    assert text.index("z") < text.index("a")  # keeps key order
    assert yamlio.load_one(text) == data


def test_invalid_date_is_a_manifest_error() -> None:
    # YAML's implicit timestamp: looks like a date, is not one.
    with pytest.raises(ManifestError):
        yamlio.load_one("created: 2024-02-30\n")


@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_manifest_error(text: str) -> None:
    with contextlib.suppress(ManifestError):
        list(yamlio.load_all(text))
