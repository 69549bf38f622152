"""``pynet scenario run FILE… [--junit PATH] [--out-dir DIR]`` and
``pynet scenario graph FILE -o OUT.svg|png``.

Wire into ``pynet/cli.py`` with ``add_parser(subparsers)``: it adds the
``scenario`` command and sets ``func`` (call ``args.func(args)`` -> exit code).
Standalone: ``python -m pynet.scenario run FILE``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional


def _configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="scenario_cmd", metavar="{run,graph,check}")
    sub.required = True
    r = sub.add_parser("run", help="build the topology, prove the expectations, tear down")
    r.add_argument("files", nargs="+", metavar="FILE")
    r.add_argument("--junit", default="", metavar="PATH", help="write JUnit XML here")
    r.add_argument("--out-dir", default="", metavar="DIR",
                   help="where failure pcaps go (default ./scenario-results)")
    r.set_defaults(func=_run)
    g = sub.add_parser("graph", help="draw the topology (SVG or PNG)")
    g.add_argument("file", metavar="FILE")
    g.add_argument("-o", "--output", required=True, metavar="OUT.svg|OUT.png|OUT.dot")
    g.set_defaults(func=_graph)
    c = sub.add_parser("check", help="validate scenario files without running them")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.set_defaults(func=_check)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("scenario", help="network test scenarios (packet-level proofs)",
                              description=__doc__.split("\n\n")[0])
    _configure(p)
    return p


def _run(args) -> int:
    from pynet.scenario.runner import main_run
    return main_run(args)


def _graph(args) -> int:
    from pynet.scenario.graph import render
    from pynet.scenario.model import ScenarioError, load
    try:
        scn = load(args.file)
        how = render(scn, args.output)
    except (ScenarioError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({how})")
    return 0


def _check(args) -> int:
    from pynet.scenario.model import ScenarioError, load
    rc = 0
    for f in args.files:
        try:
            s = load(f)
            print(f"{f}: ok ({len(s.hosts)} host(s), {len(s.expectations)} expectation(s))")
        except ScenarioError as e:
            print(f"error: {e}", file=sys.stderr)
            rc = 2
    return rc


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="pynet scenario", description=__doc__.split("\n\n")[0])
    _configure(p)
    args = p.parse_args(argv)
    return int(args.func(args) or 0)
