"""Test-wide settings: no telemetry, no network, deterministic CPU threads."""

import os

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ["DGNET_OFFLINE"] = "1"  # tests never download ImageNet weights (tests/test_models.py mocks it)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the slow tier (tests marked `slow`); on by default under CI=true")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tier runs in CI (CI=true, as `.ci/run` is run) or with --slow; a plain `pytest` skips it."""
    if config.getoption("--slow") or os.environ.get("CI", "").lower() == "true" or config.getoption("-m"):
        return
    skip = pytest.mark.skip(reason="slow tier: runs with --slow or CI=true")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
