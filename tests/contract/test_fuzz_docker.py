"""Property test of the Docker front end (bounded, in CI): the reference
replay with ONE request mutated -- never a 500, ``{"Err"}`` on refusal, store
and fake kernel unchanged after a refusal.  tests/fuzz/docker_target.py has
the case; ``python -m tests.fuzz.run`` runs many more."""
from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.contract import REFERENCE

import pytest  # noqa: E402

if not (REFERENCE / "docker-remote-requests.jsonl").exists():
    pytest.skip("reference capture not available", allow_module_level=True)

from tests.fuzz.docker_target import DockerTarget
from tests.fuzz.engine import DataChooser

TARGET = DockerTarget()


@settings(max_examples=int(os.environ.get("PYNET_FUZZ_EXAMPLES", "300")), deadline=None,
          derandomize=True, database=None,   # the same cases on every CI run, no example files
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_one_mutated_request_never_500_and_refusals_change_nothing(data):
    TARGET.case(DataChooser(data))
