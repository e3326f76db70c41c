"""Twin merging at the edge, and the per-property table of `describe device`."""

from __future__ import annotations

import pytest

from edgecore.devicetwin import MAX_VALUE_CHARS, TwinError, merge_twins
from moorage.tables import device_properties

PROPS = {"temperature", "door"}


def test_reported_twins_merge_by_property_and_keep_the_rest_of_the_status() -> None:
    status = {"state": "online", "twins": [
        {"propertyName": "temperature", "reported": {"value": "20"},
         "observedDesired": {"value": "25"}},
        {"propertyName": "gone", "reported": {"value": "1"}}]}
    merged = merge_twins(status, [{"propertyName": "temperature",
                                   "reported": {"value": "21", "metadata": {"timestamp": "5"}}},
                                  {"propertyName": "door", "reported": {"value": "true"}}],
                         PROPS)
    assert merged["state"] == "online"
    twins = {t["propertyName"]: t for t in merged["twins"]}
    assert set(twins) == PROPS  # a property removed from the spec is dropped
    assert twins["temperature"]["reported"]["value"] == "21"
    assert twins["temperature"]["observedDesired"]["value"] == "25"  # untouched


def test_unknown_properties_and_oversized_values_are_refused_by_name() -> None:
    with pytest.raises(TwinError, match="no property 'pressure'; known: door, temperature"):
        merge_twins({}, [{"propertyName": "pressure", "reported": {"value": "1"}}], PROPS)
    with pytest.raises(TwinError, match=f"the limit is {MAX_VALUE_CHARS}"):
        merge_twins({}, [{"propertyName": "door",
                          "reported": {"value": "x" * (MAX_VALUE_CHARS + 1)}}], PROPS)


def test_describe_rows_show_desired_observed_reported_and_errors() -> None:
    device = {"spec": {"properties": [{"name": "temperature", "desired": {"value": "25"}},
                                      {"name": "door"}, {"name": "never"}]},
              "status": {"twins": [
                  {"propertyName": "temperature",
                   "reported": {"value": "24.9", "metadata": {"timestamp": "1764100800000"}},
                   "observedDesired": {"value": "25"}},
                  {"propertyName": "door", "reported": {"value": "", "metadata": {
                      "timestamp": "x", "error": "illegal data address"}}}]}}
    header, temperature, door, never = device_properties(device)
    assert header[:4] == ["PROPERTY", "DESIRED", "OBSERVED", "REPORTED"]
    assert temperature == ["temperature", "25", "25", "24.9", "2025-11-25T20:00:00.000Z", ""]
    assert door[0] == "door" and door[-1] == "illegal data address"
    assert never == ["never", "<none>", "-", "-", "-", ""]
