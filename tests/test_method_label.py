"""One parser of method labels (`fedavg`, `mas-3`, `mas-3@fedadam`): strict for what users write,
lenient for labels of finished runs, and `label` its exact inverse."""

from __future__ import annotations

import re

import pytest

from mas_flower.methods.label import MethodLabel


@pytest.mark.parametrize(("text", "expected"), [
    ("fedavg", MethodLabel("fedavg", None, None)),
    ("mas-3", MethodLabel("mas", 3, None)),
    ("mas-3@fedadam", MethodLabel("mas", 3, "fedadam")),
    ("one-by-one@fedyogi", MethodLabel("one-by-one", None, "fedyogi")),
    ("tag-2", MethodLabel("tag", 2, None)),
])
def test_parse_reads_method_groups_and_strategy_and_label_writes_them_back(text: str, expected: MethodLabel) -> None:
    assert MethodLabel.parse(text) == expected
    assert expected.label == text
    assert MethodLabel.read(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("mas", "needs a number of groups x"),
    ("fedavg-2", "takes no number of groups"),
    ("mas-0", "at least 1"),
    ("mass-2", "unknown method 'mass-2'"),
    ("mas-2@fedadamm", "server-strategy='fedadamm' (after '@' in 'mas-2@fedadamm') is not one of fedavg"),
    ("mas-2@", "server-strategy='' (after '@' in 'mas-2@') is not one of"),
])
def test_parse_refuses_what_cannot_run_and_says_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        MethodLabel.parse(text)


def test_read_keeps_labels_of_methods_this_checkout_lacks() -> None:
    assert MethodLabel.read("mystery-2@fedadam") == MethodLabel("mystery-2", None, "fedadam")
    assert MethodLabel.read("fedavg-2") == MethodLabel("fedavg-2", None, None)  # not a split method: whole
    assert MethodLabel.read("hoa-4") == MethodLabel("hoa", 4, None)
