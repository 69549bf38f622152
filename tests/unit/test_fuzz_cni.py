"""Property test of the CNI entry (bounded, in CI): ``pynet.cni.dispatch.run``
over the fake kernel with ONE mutation of the config or the environment --
never code 999, one-line messages, store and fake kernel unchanged after an
error.  tests/fuzz/cni_target.py has the case; ``python -m tests.fuzz.run``
runs many more."""
from __future__ import annotations

import logging
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.cni_target import CniTarget
from tests.fuzz.engine import DataChooser

TARGET = CniTarget()


@settings(max_examples=int(os.environ.get("PYNET_FUZZ_EXAMPLES", "300")), deadline=None,
          derandomize=True, database=None,   # the same cases on every CI run, no example files
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_one_mutated_invocation_never_999_and_errors_change_nothing(data):
    logging.disable(logging.CRITICAL)   # run() logs each internal error with its traceback
    try:
        TARGET.case(DataChooser(data))
    finally:
        logging.disable(logging.NOTSET)
