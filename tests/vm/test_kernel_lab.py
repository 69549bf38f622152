"""Host side of the kernel lab: one test per ``kernel_lab`` node id, run inside the VM.

The node ids are those marked ``kernel_lab`` anywhere under tests/ (see conftest.py); the guest
runs them all in one boot, and each test here passes only if its node id passed in the guest.
"""
import pytest

from tests.vm.vmlab import HOST_TEST_TIMEOUT, guest_nodeids

pytestmark = [pytest.mark.timeout(HOST_TEST_TIMEOUT)]

_IDS, _LIST_ERROR = guest_nodeids()


def _tail(text: str, n: int = 60) -> str:
    return "\n".join(text.splitlines()[-n:])


@pytest.mark.parametrize("nodeid", list(_IDS) or ["(none)"])
def test_in_vm(nodeid, request):
    if _LIST_ERROR:
        pytest.fail(f"kernel lab: {_LIST_ERROR}", pytrace=False)
    kernel_lab_run = request.getfixturevalue("kernel_lab_run")
    case = kernel_lab_run.cases.get(nodeid)
    if case is None:
        pytest.fail(f"kernel lab: {nodeid} has no result from the guest (guest pytest exit "
                    f"{kernel_lab_run.rc}); end of its log:\n{_tail(kernel_lab_run.pytest_log)}",
                    pytrace=False)
    if case.outcome != "passed":
        # a skip is a failure too: the guest's kernel has what these tests need
        pytest.fail(f"{nodeid} {case.outcome.upper()} in the kernel lab VM:\n{case.message}\n"
                    f"--- guest output ---\n{_tail(case.output, 120)}", pytrace=False)
