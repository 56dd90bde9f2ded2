"""A feedback call's labels, parsed and checked (serve/ground_truth/labels.py)."""

from __future__ import annotations

import pytest

from serve.errors import InvalidInput
from serve.ground_truth.labels import Label, check_labels, class_index, parse_feedback
from serve.ground_truth.targets import Target

BINARY = Target("probabilities", "classification", 2, ("0", "1"))
PETS = Target("probabilities", "classification", 2, ("cat", "dog"))
LOGITS = Target("logits", "classification", 3, ())
PRICE = Target("price", "regression", 0, ())


def test_a_json_array_of_labels_is_parsed_in_order_with_defaults() -> None:
    body = b'[{"id": "a", "label": 1}, {"id": "b", "row": 2, "label": "dog", "time": 1700000000.5}]'
    assert parse_feedback(body) == [Label("a", 0, 1, None, None), Label("b", 2, "dog", None, 1700000000.5)]


def test_json_lines_are_parsed_and_blank_lines_skipped() -> None:
    body = b'{"id": "a", "value": 2.5}\n\n  \n{"id": "b", "value": -1}\n'
    assert parse_feedback(body) == [Label("a", value=2.5), Label("b", value=-1.0)]


def test_an_rfc3339_time_becomes_unix_seconds() -> None:
    (label,) = parse_feedback(b'[{"id": "a", "label": 0, "time": "2023-11-14T22:13:20Z"}]')
    assert label.time == 1700000000.0


def test_a_boolean_label_is_class_0_or_1() -> None:
    labels = parse_feedback(b'[{"id": "a", "label": true}, {"id": "b", "label": false}]')
    assert [x.label for x in labels] == [1, 0]


@pytest.mark.parametrize("body", [b"", b"  \n ", b"[]"])
def test_a_call_without_labels_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidInput, match="no labels"):
        parse_feedback(body)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ('{"id": "a", "row": -1, "label": 0}', "feedback item 3: 'row' must be a non-negative integer, got -1"),
        ('{"id": "a", "row": 1.5, "label": 0}', "feedback item 3: 'row' must be a non-negative integer, got 1.5"),
        ('{"id": "a", "row": true, "label": 0}', "feedback item 3: 'row' must be a non-negative integer, got true"),
        ('{"row": 0, "label": 0}', "feedback item 3: 'id' is missing"),
        ('{"id": 7, "label": 0}', "feedback item 3: 'id' must be a string, got a number"),
        ('{"id": "", "label": 0}', "feedback item 3: 'id' must be 1 to 256 printable ASCII"),
        ('{"id": "caf\\u00e9", "label": 0}', "feedback item 3: 'id' must be 1 to 256 printable ASCII"),
        ('{"id": "a", "label": 0, "value": 1}', "feedback item 3: give exactly one of 'label'"),
        ('{"id": "a"}', "feedback item 3: give exactly one of 'label'"),
        ('{"id": "a", "label": 0.5}', "feedback item 3: 'label' must be a class"),
        ('{"id": "a", "label": null}', "feedback item 3: 'label' must be a class"),
        ('{"id": "a", "value": "3"}', "feedback item 3: 'value' must be a finite number"),
        ('{"id": "a", "value": true}', "feedback item 3: 'value' must be a finite number"),
        ('{"id": "a", "label": 0, "time": "yesterday"}', "feedback item 3: 'time' must be unix seconds or an RFC"),
        ('{"id": "a", "label": 0, "time": "2023-11-14T22:13:20"}', "feedback item 3: 'time' must be unix"),
        ('{"id": "a", "label": 0, "extra": 1}', "feedback item 3: unknown key 'extra'"),
        ('["a", 0]', "feedback item 3: must be a JSON object, got an array"),
    ],
)
def test_a_bad_item_is_refused_naming_its_index_and_field(item: str, message: str) -> None:
    good = '{"id": "x", "label": 0}'
    with pytest.raises(InvalidInput) as raised:
        parse_feedback(f"[{good}, {good}, {good}, {item}]".encode())
    assert raised.value.message.startswith(message)


def test_a_json_line_that_does_not_parse_is_refused_naming_its_item() -> None:
    with pytest.raises(InvalidInput, match="feedback item 1: not a valid JSON line"):
        parse_feedback(b'{"id": "a", "label": 0}\n{"id": "b", "label": \n')


def test_an_array_that_does_not_parse_is_refused() -> None:
    with pytest.raises(InvalidInput, match="not valid JSON"):
        parse_feedback(b'[{"id": "a", "label": 0}')


@pytest.mark.parametrize("separator", [b",", b"\n"])
def test_more_labels_than_the_limit_are_refused_with_advice_to_split(separator: bytes) -> None:
    items = [b'{"id": "a", "label": 0}'] * 11
    body = b"[" + b",".join(items) + b"]" if separator == b"," else b"\n".join(items)
    with pytest.raises(InvalidInput, match="11 labels; at most 10 per call: split it"):
        parse_feedback(body, max_labels=10)


def test_a_label_names_a_class_by_its_string_form_first() -> None:
    assert class_index(1, BINARY) == 1
    assert class_index("1", BINARY) == 1
    assert class_index("dog", PETS) == 1


def test_an_integer_label_is_a_class_index_when_it_is_no_class_label() -> None:
    assert class_index(1, PETS) == 1
    assert class_index(2, LOGITS) == 2


@pytest.mark.parametrize(("label", "target"), [("bird", PETS), (3, LOGITS), (-1, LOGITS), ("1", LOGITS)])
def test_a_label_that_names_no_class_is_refused_listing_the_classes(label: int | str, target: Target) -> None:
    with pytest.raises(InvalidInput, match=f"label {label!r} is not a class of output"):
        class_index(label, target)


def test_the_refusal_lists_at_most_20_classes() -> None:
    many = Target("p", "classification", 30, tuple(f"c{i}" for i in range(30)))
    with pytest.raises(InvalidInput) as raised:
        class_index("nope", many)
    assert "'c19' and 10 more" in raised.value.message and "'c20'" not in raised.value.message


def test_check_labels_refuses_a_value_for_a_classifier_naming_the_item() -> None:
    with pytest.raises(InvalidInput, match="feedback item 1: the model classifies .* give 'label'"):
        check_labels([Label("a", label=0), Label("b", value=1.0)], BINARY)


def test_check_labels_refuses_a_label_for_a_regression_naming_the_item() -> None:
    with pytest.raises(InvalidInput, match="feedback item 0: the model is a regression .* give 'value'"):
        check_labels([Label("a", label=0)], PRICE)


def test_check_labels_refuses_an_unknown_class_naming_the_item() -> None:
    with pytest.raises(InvalidInput, match="feedback item 2: label 'bird' is not a class"):
        check_labels([Label("a", label="cat"), Label("b", label="dog"), Label("c", label="bird")], PETS)


def test_check_labels_accepts_labels_that_fit() -> None:
    check_labels([Label("a", label="cat"), Label("b", label=1)], PETS)
    check_labels([Label("a", value=3.5)], PRICE)
