"""The entry point every pynet CNI binary runs (``pynet cni install`` writes
the launchers)::

    pynet-bridge / pynet-macvlan / pynet-ipam  ->  main("bridge" | "macvlan" | "ipam")

1. read the CNI_* environment and stdin; VERSION is answered here, at once;
2. the settings (``pynet.cni.settings``): a bad ``pynet`` section or PYNET_*
   variable is answered here (code 7 / 4), before anything else runs;
3. hand the request to the running daemon (``pynet.cni.shim.via_daemon``);
4. when no daemon will (``Declined``), do the work in this process
   (``pynet.cni.dispatch.run``, imported only then: the daemon's answer costs
   the binary no more than the shim, the CNI spec and the settings' checks).
"""
from __future__ import annotations

import json
import sys

from pynet.cni import shim, spec
from pynet.cni.settings import pynet_settings


def handle(plugin: str, env: dict, stdin: bytes) -> tuple[str, int]:
    """One CNI invocation -> (stdout, exit code): by the daemon, else in-process."""
    try:
        command = env.get("CNI_COMMAND", "")
        if command == "VERSION":
            return spec.dumps(spec.version_result(stdin)), 0
        try:
            conf = json.loads(stdin or b"{}")
        except (ValueError, RecursionError):
            conf = {}   # run() answers it in CNI terms (code 6)
        try:
            settings = pynet_settings(conf, env)
        except spec.CniError as e:
            version = conf.get("cniVersion") if isinstance(conf, dict) else None
            return spec.dumps(spec.error_result(e.code, e.msg, version if isinstance(version, str) else None)), 1
        try:
            return shim.via_daemon(plugin, env, stdin, settings)
        except shim.Declined:
            pass
        except (OSError, ConnectionError) as e:
            # the daemon died mid-request or answered nonsense: the request may
            # be half done there, so do not repeat it here -- the runtime retries
            version = conf.get("cniVersion") if isinstance(conf, dict) else None
            return spec.dumps(spec.error_result(spec.TRY_AGAIN_LATER, f"pynet daemon: {e}",
                                                version if isinstance(version, str) else None)), 1
    except Exception as e:  # noqa: BLE001 -- the shim must always answer in CNI terms
        return spec.dumps(spec.error_result(spec.INTERNAL, f"pynet shim: {type(e).__name__}: {e}")), 1
    from pynet.cni.dispatch import run

    return run(plugin, env, stdin)


def main(plugin: str) -> None:
    stdin = b""
    try:
        if not sys.stdin.isatty():
            stdin = sys.stdin.buffer.read()
    except (OSError, ValueError):
        pass
    out, code = handle(plugin, shim.cni_env(), stdin)
    if out:
        sys.stdout.write(out)
        sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":  # python -m pynet.cni.main <plugin>
    main(sys.argv[1] if len(sys.argv) > 1 else "bridge")
