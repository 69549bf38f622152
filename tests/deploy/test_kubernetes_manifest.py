"""deploy/kubernetes/pynet.yaml against the Kubernetes API schemas, offline (no cluster runs
here): PyPI's kubernetes-validate bundles the OpenAPI schemas of each release; strict mode
rejects unknown fields, so a misspelt key fails (negative controls below prove it does).
Then what the node install needs, checked on the parsed objects: a DaemonSet on the host's
network, an init container that runs ``pynet cni install`` into the node's CNI dirs, the daemon
container, and the node paths mounted where the commands expect them."""
from __future__ import annotations

from pathlib import Path

import kubernetes_validate as kv  # the test extra (pyproject) installs it
import pytest
import yaml

from pynet.cni import install

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "pynet.yaml"
# the oldest release still common on nodes, and the newest the package knows
VERSIONS = ["1.28.0", kv.latest_version()]


def docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def daemonset() -> dict:
    (ds,) = [d for d in docs() if d["kind"] == "DaemonSet"]
    return ds


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_passes_the_api_schema_strictly(version):
    objs = docs()
    assert {d["kind"] for d in objs} >= {"DaemonSet"}
    for d in objs:
        kv.validate(d, version, strict=True)


def test_negative_controls_a_misspelt_field_and_a_wrong_type_fail():
    bad = daemonset()
    bad["spec"]["template"]["spec"]["hostNetwok"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, VERSIONS[-1], strict=True)
    bad = daemonset()
    bad["spec"]["template"]["spec"]["hostNetwork"] = "yes"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, VERSIONS[-1], strict=True)


def _mounts(container: dict, volumes: dict) -> dict[str, str]:
    """container mount path -> node path."""
    return {m["mountPath"]: volumes[m["name"]]["hostPath"]["path"] for m in container["volumeMounts"]}


def test_node_install_shape():
    ds = daemonset()
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert any(t.get("operator") == "Exists" and "key" not in t for t in spec["tolerations"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert all("hostPath" in v for v in volumes.values())

    (init,) = spec["initContainers"]
    script = " ".join(init.get("command", []) + init.get("args", []))
    assert "pynet cni install" in script
    mounts = _mounts(init, volumes)
    assert mounts["/host/opt/cni/bin"] == "/opt/cni/bin" and "--bin-dir /host/opt/cni/bin" in script
    assert mounts["/host/etc/cni/net.d"] == "/etc/cni/net.d" and "--conf-dir /host/etc/cni/net.d" in script
    # the binaries refer to /opt/pynet: the install copies it to the same path on the node
    assert mounts["/host/opt/pynet"] == "/opt/pynet" and "/host/opt/pynet/" in script
    env = {e["name"]: e.get("value") for e in init.get("env", [])}
    assert env["PYNET_SUBNET"] == install.DEFAULT_SUBNET

    (daemon,) = spec["containers"]
    assert daemon["command"][-1] == "daemon" and daemon["command"][0].endswith("/bin/pynet")
    assert daemon["securityContext"]["privileged"] is True
    mounts = _mounts(daemon, volumes)
    env = {e["name"]: e.get("value") for e in daemon["env"]}
    assert mounts[env["PYNET_STATE_DIR"]] == "/var/lib/pynet"
    assert mounts["/run/docker/plugins"] == "/run/docker/plugins"
    assert env["PYNET_SOCKET"].startswith("/run/docker/plugins/")
    assert mounts["/run/netns"] == "/var/run/netns"
    netns = [m for m in daemon["volumeMounts"] if m["mountPath"] == "/run/netns"][0]
    assert netns["mountPropagation"] == "Bidirectional"

