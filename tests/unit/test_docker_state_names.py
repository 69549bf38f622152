"""Which networks dockerd reports as this plugin's (pynet.plugin_api.docker_state): a managed
plugin is named by its reference with any tag (``pynet:0.2``), and a network missed there would be
deleted as no longer held on the plugin's next start (every ``docker plugin enable``, upgrade)."""
from __future__ import annotations

import pytest

from pynet.plugin_api import docker_state


@pytest.mark.parametrize("driver", ["pynet", "pynet:latest", "pynet:0.2", "org/pynet:0.2",
                                    "registry.example:5000/org/pynet:0.2", "pynet@sha256:ab12"])
def test_the_plugins_references_are_ours(driver):
    assert docker_state.is_plugin_ref(driver, "pynet")


@pytest.mark.parametrize("driver", ["", None, "bridge", "pynet2", "pynet2:latest", "xpynet",
                                    "pynet/other:1", "default"])
def test_other_drivers_are_not(driver):
    assert not docker_state.is_plugin_ref(driver, "pynet")


def test_holdings_count_a_tagged_managed_plugins_networks(monkeypatch):
    nets = [{"Id": "n1", "Driver": "pynet:0.2", "IPAM": {"Driver": "pynet:0.2"}},
            {"Id": "n2", "Driver": "bridge", "IPAM": {"Driver": "default"}}]
    detail = {"n1": {"Id": "n1", "Containers": {"c": {"EndpointID": "e1", "IPv4Address": "10.9.0.2/24"}},
                     "IPAM": {"Config": [{"Subnet": "10.9.0.0/24", "Gateway": "10.9.0.1"}]}}}

    def get(path, sock, timeout):
        return nets if path == "/networks" else detail[path.rsplit("/", 1)[-1]]

    monkeypatch.setattr(docker_state, "_get", get)
    held = docker_state.docker_holdings("pynet")
    assert held == {"networks": {"n1": {"e1"}}, "pools": [("10.9.0.0/24", "", {"10.9.0.2", "10.9.0.1"})]}
