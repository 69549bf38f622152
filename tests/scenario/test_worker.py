"""The runner <-> worker pipe protocol (``pynet.scenario.worker``), with a
worker that enters no namespace (no root needed)."""
from __future__ import annotations

import os

import pytest

from pynet.scenario.worker import WorkerHandle


@pytest.fixture
def worker(tmp_path, monkeypatch):
    here = os.path.dirname(__file__)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    w = WorkerHandle("echo", "", "worker_service:Echo", log_path=str(tmp_path / "w.log"))
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop(10)


def test_answer_of_an_interrupted_call_is_not_taken_by_the_next_one(worker):
    """SIGINT mid-probe raises KeyboardInterrupt while the runner waits for an
    answer; teardown then calls the same worker.  The interrupted call's answer
    (a ping's dict) must not become the next call's answer: handed to
    ``sorted(packets, key=p[0])`` it compared a float with a str
    (test_sigint_mid_run_leaves_nothing's TypeError)."""
    real_poll = worker._r.poll
    state = {"interrupt": True}

    def poll(timeout):
        if state.pop("interrupt", False):
            raise KeyboardInterrupt("SIGINT")     # as runner._raise_interrupt / Ctrl-C
        return real_poll(timeout)

    worker._r.poll = poll
    with pytest.raises(KeyboardInterrupt):
        worker.call("echo", value={"ok": True, "seen": "ping answered"}, delay=0.2)
    packets = worker.call("packets")
    assert packets == [[1.5, "10.0.0.1", "[ns:eth0] x"]]
    assert sorted(packets, key=lambda p: p[0]) == packets
    assert worker.call("echo", value=7) == 7
