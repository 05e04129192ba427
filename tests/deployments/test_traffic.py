"""An endpoint's traffic and mirror splits: what `check_split` accepts, and the error (with
the `param` the wire carries) for each way a split can be wrong."""

from __future__ import annotations

import pytest

from lmfoundry.deployments.endpoints import check_split
from lmfoundry.errors import InvalidRequest

NAMES = {"blue", "green"}


def test_a_full_split_keeps_only_deployments_with_traffic() -> None:
    assert check_split("traffic", {"blue": 100, "green": 0}, NAMES) == {"blue": 100}
    assert check_split("traffic", {"blue": 70, "green": 30}, NAMES) == {"blue": 70, "green": 30}
    assert check_split("traffic", {}, NAMES) == {}  # 0 in all: traffic stopped


def test_a_mirror_goes_to_one_deployment_at_up_to_half() -> None:
    assert check_split("mirror_traffic", {"green": 50}, NAMES) == {"green": 50}


@pytest.mark.parametrize(
    ("kind", "split", "param", "words"),
    [
        ("traffic", {"blue": 60, "green": 30}, "traffic", "add up to 90"),
        ("traffic", {"blue": 101}, "traffic.blue", "whole percentage"),
        ("traffic", {"blue": 50.5, "green": 49.5}, "traffic.blue", "whole percentage"),
        ("traffic", {"blue": True}, "traffic.blue", "whole percentage"),
        ("traffic", {"red": 100}, "traffic.red", "deployments: blue, green"),
        ("mirror_traffic", {"blue": 10, "green": 10}, "mirror_traffic", "one deployment"),
        ("mirror_traffic", {"green": 60}, "mirror_traffic", "at most 50%"),
    ],
)
def test_bad_splits_name_the_field_and_the_fix(
    kind: str, split: dict[str, int], param: str, words: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_split(kind, split, NAMES)
    assert refused.value.param == param
    assert words in refused.value.message


def test_an_endpoint_without_deployments_says_so() -> None:
    with pytest.raises(InvalidRequest, match="none yet"):
        check_split("traffic", {"blue": 100}, set())
