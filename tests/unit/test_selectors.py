"""Label and field selectors, and JSON merge patch (RFC 7386)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moorage.errors import ManifestError
from moorage.patch import merge_patch
from moorage.selectors import field_selector, label_selector


def labelled(**labels: str) -> dict[str, Any]:
    return {"metadata": {"name": "x", "labels": labels}}


WEB = labelled(app="web", tier="front", env="prod")
DB = labelled(app="db", tier="back", env="dev", legacy="yes")
BARE = {"metadata": {"name": "bare"}}
OBJECTS = {"web": WEB, "db": DB, "bare": BARE}


@pytest.mark.parametrize(("selector", "matching"), [
    ("app=web", {"web"}),
    ("app==web", {"web"}),
    ("app = web", {"web"}),
    ("app!=web", {"db", "bare"}),  # no label at all also differs
    ("legacy", {"db"}),
    ("!legacy", {"web", "bare"}),
    ("env in (prod,staging)", {"web"}),
    ("env in ( dev , qa )", {"db"}),
    ("env notin (prod)", {"db", "bare"}),
    ("app=web,tier=front", {"web"}),
    ("app=web,tier=back", set()),
    ("env in (prod,dev),!legacy", {"web"}),
    ("tier,env notin (dev,qa),app!=db", {"web"}),
    ("", {"web", "db", "bare"}),
])
def test_label_selector(selector: str, matching: set[str]) -> None:
    predicate = label_selector(selector)
    assert {name for name, obj in OBJECTS.items() if predicate(obj)} == matching


def test_label_selector_none_matches_everything() -> None:
    assert label_selector(None)(BARE)


def test_label_selector_with_null_labels() -> None:
    obj = {"metadata": {"labels": None}}
    assert not label_selector("app")(obj)
    assert label_selector("!app")(obj)


@pytest.mark.parametrize("bad", ["app in prod", "a b", "env in (x", "@@@"])
def test_label_selector_rejects_garbage(bad: str) -> None:
    with pytest.raises(ManifestError, match="unable to parse"):
        label_selector(bad)


@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["1", "2", "3"])),
       st.sampled_from(["a", "b", "c"]), st.sets(st.sampled_from(["1", "2", "3"]), min_size=1))
def test_label_in_and_notin_are_complements(labels: dict[str, str], key: str,
                                            values: set[str]) -> None:
    obj = labelled(**labels)
    joined = ",".join(sorted(values))
    assert label_selector(f"{key} in ({joined})")(obj) == (labels.get(key) in values)
    assert label_selector(f"{key} notin ({joined})")(obj) != label_selector(
        f"{key} in ({joined})")(obj)
    assert label_selector(key)(obj) != label_selector(f"!{key}")(obj)


POD = {"metadata": {"name": "web", "namespace": "prod"},
       "spec": {"nodeName": "edge-a"}, "status": {"phase": "Running"}}
PENDING = {"metadata": {"name": "job", "namespace": "default"}, "spec": {}}


@pytest.mark.parametrize(("selector", "pod", "pending"), [
    ("metadata.name=web", True, False),
    ("metadata.name==job", False, True),
    ("metadata.namespace=prod", True, False),
    ("metadata.namespace!=prod", False, True),
    ("spec.nodeName=edge-a", True, False),
    ("spec.nodeName=", False, True),  # unscheduled
    ("spec.nodeName!=", True, False),
    ("status.phase=Running", True, False),
    ("status.phase!=Running", False, True),
    ("spec.nodeName=edge-a,status.phase=Running", True, False),
    ("metadata.namespace=prod,metadata.name=job", False, False),
    (None, True, True),
])
def test_field_selector(selector: str | None, pod: bool, pending: bool) -> None:
    predicate = field_selector(selector)
    assert (predicate(POD), predicate(PENDING)) == (pod, pending)


def test_field_selector_unsupported_field_is_named() -> None:
    with pytest.raises(ManifestError, match=r'field label not supported: "spec\.hostNetwork"'):
        field_selector("metadata.name=x,spec.hostNetwork=true")


def test_field_selector_needs_an_operator() -> None:
    with pytest.raises(ManifestError, match="FIELD=VALUE"):
        field_selector("metadata.name")


# RFC 7386, Appendix A: (original, patch, result).
RFC_7386_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("original", "patch", "result"), RFC_7386_EXAMPLES)
def test_merge_patch_rfc_7386_examples(original: Any, patch: Any, result: Any) -> None:
    before = copy.deepcopy(original)
    assert merge_patch(original, patch) == result
    assert original == before  # the target is not modified


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from("abcd"), children, max_size=3),
    max_leaves=12,
)


@given(json_values, json_values)
def test_merge_patch_is_idempotent_and_pure(target: Any, patch: Any) -> None:
    snapshot = json.dumps([target, patch], sort_keys=True)
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once
    assert json.dumps([target, patch], sort_keys=True) == snapshot


@given(st.dictionaries(st.sampled_from("abcd"), json_values, max_size=4),
       st.dictionaries(st.sampled_from("abcd"), json_values, max_size=4))
def test_merge_patch_keys(target: dict[str, Any], patch: dict[str, Any]) -> None:
    result = merge_patch(target, patch)
    deleted = {k for k, v in patch.items() if v is None}
    assert set(result) == (set(target) | set(patch)) - deleted
    for key in set(target) - set(patch):
        assert result[key] == target[key]
