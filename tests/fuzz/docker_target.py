"""The Docker front end under one mutated request.

A case replays a round of ``docker-remote-requests.jsonl`` (what dockerd 20.10
sent) through the Flask app over the contract fakes, exactly as
tests/contract/test_contract_replay.py does, up to a chosen request; that
request is mutated (``engine.mutate``) and sent.  Properties:

* never a 500, and always Docker's content type and a JSON object;
* a refusal (non-200) is ``{"Err": "<one line>"}`` and nothing else;
* after a refusal the store and the fake kernel (links, published ports) are
  exactly as before.
"""
from __future__ import annotations

import json
import re
from typing import Optional

from tests.contract.test_contract_replay import Replayer, _prime, rounds
from tests.fuzz.engine import Chooser, Failure, Finding, mutate, store_state
from tests.support.contract import ACCEPT, CONTENT_TYPE, Plugin, make_ipam
from tests.support.fakes import FakeDriver, FakeFirewall


HEX64 = re.compile(r"[0-9a-f]{64}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
IFNAME_OPTS = ("com.docker.network.bridge.name", "parent")


def accepted_hostile(before: list, after: list) -> Optional[tuple[str, str]]:
    """(kind, detail) if a record the request added or changed holds a value
    no valid request can carry: a Docker ID that is not 64 hex digits (a "/"
    in one aliases store keys), a control character or lone surrogate, an
    IPv6 zone, an interface name with an iptables wildcard or a leading "-"."""
    old = dict(before)
    for key, value in after:
        if old.get(key) == value:
            continue
        parts = key.split("/")
        if parts[0] in ("networks", "endpoints"):
            for seg in parts[1:]:
                if not HEX64.fullmatch(seg):
                    return "accepted:non-hex-id", f"key {key!a}"
        stack = [("", value)]
        while stack:
            where, v = stack.pop()
            if isinstance(v, dict):
                stack += [(f"{where}.{k}", x) for k, x in v.items()]
                stack += [(f"{where}<key>", k) for k in v if isinstance(k, str)]
            elif isinstance(v, list):
                stack += [(f"{where}[{i}]", x) for i, x in enumerate(v)]
            elif isinstance(v, str):
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    return "accepted:surrogate", f"{key}{where} = {v[:60]!a}"
                if CONTROL.search(v):
                    return "accepted:control-char", f"{key}{where} = {v[:60]!a}"
                if "%" in v and ":" in v and not key.startswith("ipam/"):
                    return "accepted:ipv6-zone", f"{key}{where} = {v[:60]!a}"
                if where.rsplit(".", 1)[-1] in IFNAME_OPTS + ("bridge",) and \
                        (any(c in v for c in "+*!") or v.startswith("-") or len(v.encode()) > 15):
                    return "accepted:bad-ifname", f"{key}{where} = {v[:60]!a}"
    return None


class DockerTarget:
    name = "docker"

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.rounds = rounds()
        self.names = sorted(self.rounds)

    def _world(self):
        from pynet.cnm.controller import Controller
        from pynet.plugin_api.app import create_app
        from pynet.store.memory import MemoryStore

        store, driver, fw = MemoryStore(), FakeDriver(), FakeFirewall()
        c = Controller(store, make_ipam(store), {"bridge": driver}, firewall=fw, port_allocator=None)
        app = create_app(c)
        app.testing = False
        return store, driver, fw, c, app.test_client()

    def case(self, ch: Chooser) -> str:
        """One case; returns its description, raises Failure on a broken property."""
        name = ch.choice(self.names, "round")
        recs = self.rounds[name]
        # a request the probe answered without error: its refusal is the mutation's
        ok = [i for i, r in enumerate(recs) if "Err" not in (r["response_sent_by_probe"] or {})]
        k = ch.choice(ok, "request")
        store, driver, fw, c, client = self._world()
        r = Replayer(Plugin(client), c, fw)
        _prime(r, recs)
        for rec in recs[:k]:
            r.send(rec)
        rec = recs[k]
        method = rec["method"]
        req = r.rewrite(method, rec["request"])
        req = {} if req is None else req
        mutated, body, how = mutate(req, ch)
        where = f"{name} #{rec['seq']} {method}: {how}"
        before = (store_state(store), sorted(driver.links), list(fw.published))
        resp = client.post(f"/{method}", data=body, headers={"Accept": ACCEPT}, content_type=None)
        status = resp.status_code
        if status >= 500:
            raise Failure("500", f"{where} -> {status} {resp.get_data()[:300]!r}")
        if resp.headers.get("Content-Type") != CONTENT_TYPE:
            raise Failure("content-type", f"{where} -> {resp.headers.get('Content-Type')}")
        try:
            answer = json.loads(resp.get_data())
        except ValueError:
            raise Failure("not-json", f"{where} -> {resp.get_data()[:200]!r}") from None
        if not isinstance(answer, dict):
            raise Failure("not-object", f"{where} -> {answer!r}")
        if status != 200:
            if set(answer) != {"Err"} or not isinstance(answer["Err"], str) or not answer["Err"] \
                    or "\n" in answer["Err"]:
                raise Failure("err-shape", f"{where} -> {status} {answer!r}")
            after = (store_state(store), sorted(driver.links), list(fw.published))
            if after[0] != before[0]:
                raise Failure("store-changed", f"{where} -> {status} {answer['Err']!r}")
            if after[1:] != before[1:]:
                raise Failure("kernel-changed", f"{where} -> {status} {answer['Err']!r}")
        elif self.strict:
            found = accepted_hostile(before[0], store_state(store))
            if found:
                raise Finding(found[0], f"{where} -> {status}: {found[1]}")
        return f"{where} -> {status}"
