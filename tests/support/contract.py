"""What the Docker front-end contract tests share (tests/contract, tests/fuzz): Docker's reference
captures, dockerd's side of the plugin conversation, the real IPAM over a store, store snapshots.
The fixtures built from these live in tests/contract/conftest.py."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REFERENCE = Path(os.environ.get("PYNET_REFERENCE", "/work/shared/reference"))
ACCEPT = "application/vnd.docker.plugins.v1.2+json"
CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"


def load_jsonl(name: str) -> list[dict]:
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"reference capture {path} not available")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Plugin:
    """dockerd's side of the conversation."""

    def __init__(self, client):
        self.client = client

    def call(self, method: str, body=None, raw: bytes | None = None):
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        resp = self.client.post(f"/{method}", data=data, headers={"Accept": ACCEPT},
                                content_type=None)
        assert resp.headers["Content-Type"] == CONTENT_TYPE, (method, resp.headers)
        answer = json.loads(resp.get_data())
        assert isinstance(answer, dict)
        if resp.status_code != 200:
            assert set(answer) == {"Err"}, answer
            assert isinstance(answer["Err"], str) and answer["Err"]
            assert "\n" not in answer["Err"]
        return resp.status_code, answer


def make_ipam(store):
    from pynet.ipam import Ipam
    from pynet.config import Config

    return Ipam(store, default_pools=Config().default_pools, host_routes=lambda: [])


def snapshot(store) -> list[tuple[str, object]]:
    return [(r.key, r.value) for r in store.list("")]
