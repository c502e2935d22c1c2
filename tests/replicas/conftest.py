"""One replica stack per test run, shared by every test that needs one, always brought down."""

from __future__ import annotations

import subprocess

import pytest

from replicas.config import from_env
from replicas.harness import Harness
from replicas.topology import load


def pytest_collection_modifyitems(items):
    # Tests marked `last` tear shared state down; everything else runs first.
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


@pytest.fixture(scope="session")
def harness():
    return Harness(from_env())


@pytest.fixture(scope="session")
def stack(harness):
    """The scaled topology, up for the whole session; down at the end even on failure."""
    try:
        report = harness.up("scaled")
        yield {"harness": harness, "topology": load("scaled"), "report": report}
    finally:
        harness.down()


@pytest.fixture
def on(stack):
    """on(host, command) -> CompletedProcess, over the harness's SSH."""

    def run(host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return stack["harness"].run_on(stack["topology"].host(host), command, timeout=timeout)

    return run
