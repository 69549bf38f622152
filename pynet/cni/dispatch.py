"""One CNI invocation -> the plugin's verb: ``run(plugin, env, stdin,
controller=None, netlink=None, instance="") -> (stdout, exit code)``.

Called in-process by the entry (``pynet.cni.main``) when no daemon serves
the request, and by the daemon's ``POST /Pynet.CNI`` route
(``pynet.cni.route``) with its own controller.  It checks the environment
and the configuration, picks the plugin's verbs -- ``pynet.cni.plugin`` for
the interface plugins, ``pynet.cni.ipam_plugin`` for pynet-ipam -- and answers
every error in CNI terms.  Only this module knows both plugins, so neither
imports the other's verbs (ipam_plugin uses plugin's config parsing, one way).
"""
from __future__ import annotations

import logging

from pynet import errors, jsonsafe
from pynet.cni import spec
from pynet.cni.plugin import DRIVER_OF, Ctx
from pynet.cni.plugin import VERBS as INTERFACE_VERBS
from pynet.cni.settings import pynet_settings
from pynet.cni.spec import CniError

log = logging.getLogger("pynet.cni")


def _check_env(env: dict) -> None:
    """Every value a string of valid Unicode (the daemon's route hands on JSON,
    and a lone surrogate -- a non-UTF-8 byte of the environment -- fails the
    first ``.encode()``, deep in the store or netlink): code 4 otherwise."""
    for k, v in env.items():
        if not isinstance(v, str):
            raise CniError(spec.INVALID_ENVIRONMENT, f"{k!a} must be a string")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise CniError(spec.INVALID_ENVIRONMENT, f"{k}={v!a} is not valid UTF-8") from None


def _tell(on_error, err: BaseException) -> None:
    if on_error is not None:
        try:
            on_error(err)
        except Exception:  # noqa: BLE001 -- an observer never changes the answer
            pass


def run(plugin: str, env: dict, stdin: bytes, controller=None, netlink=None,
        instance: str = "", on_error=None) -> tuple[str, int]:
    """One CNI invocation -> (stdout, exit code).  ``on_error(err)``: told of the typed error
    behind a failure (the daemon's route counts it by class; the answer is the same)."""
    version = None
    try:
        _check_env(env)
        command = spec.parse_command(env)
        if command == "VERSION":
            return spec.dumps(spec.version_result(stdin)), 0
        try:
            conf = spec.parse_conf(stdin)
            jsonsafe.check(conf)
        except (RecursionError, jsonsafe.Malformed) as e:
            why = f"nested deeper than {jsonsafe.MAX_DEPTH} levels" if isinstance(e, RecursionError) else e
            raise CniError(spec.DECODE_FAILURE, f"cannot decode the network configuration: {why}") from None
        version = spec.check_version(conf.get("cniVersion"))
        args = spec.Args(env, command)
        ctx = Ctx(pynet_settings(conf, env), controller=controller, netlink=netlink, instance=instance)
        if plugin == "ipam":
            from pynet.cni import ipam_plugin
            ctx.ipam_only = True
            result = ipam_plugin.VERBS[command](ctx, conf, args)
        elif plugin in DRIVER_OF:
            result = INTERFACE_VERBS[command](ctx, plugin, conf, args)
        else:
            raise CniError(spec.INTERNAL, f"unknown pynet plugin {plugin!r}")
        if result is None:
            return "", 0
        return spec.dumps(spec.to_version(result, version)), 0
    except CniError as e:
        _tell(on_error, e)
        return spec.dumps(spec.error_result(e.code, e.msg, version, e.details)), 1
    except errors.PynetError as e:
        _tell(on_error, e)
        return spec.dumps(spec.error_result(getattr(e, "cni_code", spec.INTERNAL), str(e), version)), 1
    except Exception as e:  # noqa: BLE001 -- always answer in CNI terms
        _tell(on_error, e)
        log.exception("CNI %s failed", plugin)
        return spec.dumps(spec.error_result(spec.INTERNAL, f"internal error: {type(e).__name__}: {e}",
                                            version)), 1
