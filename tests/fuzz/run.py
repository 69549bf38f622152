"""The long fuzz run: N cases per target, then cases run and failures by kind.

    .venv/bin/python -m tests.fuzz.run                    # 10,000 cases each, docker and cni
    .venv/bin/python -m tests.fuzz.run --cases 500 --target cni --seed 7 -v

Each case is reproducible from (seed, target, case number): it is driven by
``random.Random(f"{seed}:{target}:{n}")``.  Exit status 1 when any case failed.
Runs against the fakes only (no root, nothing touches the host).
"""
from __future__ import annotations

import argparse
import collections
import logging
import random
import sys
import time

from tests.fuzz.engine import RandomChooser


def targets() -> dict:
    from tests.fuzz.cni_target import CniTarget
    from tests.fuzz.docker_target import DockerTarget
    return {"docker": lambda: DockerTarget(strict=True), "cni": CniTarget}


def run_target(target, cases: int, seed: str, verbose: bool, examples: int) -> dict:
    from tests.fuzz.engine import Failure, Finding

    kinds: collections.Counter = collections.Counter()
    findings: collections.Counter = collections.Counter()
    first: dict = {}
    statuses: collections.Counter = collections.Counter()
    t0 = time.monotonic()
    for n in range(cases):
        ch = RandomChooser(random.Random(f"{seed}:{target.name}:{n}"))
        try:
            desc = target.case(ch)
            statuses[desc.rsplit("-> ", 1)[-1]] += 1
        except Finding as f:
            findings[f.kind] += 1
            first.setdefault(f.kind, []).append(f"case {n}: {f.detail}")
        except Failure as f:
            kinds[f.kind] += 1
            first.setdefault(f.kind, []).append(f"case {n}: {f.detail}")
            if verbose:
                print(f"  FAIL {target.name} case {n}: {f.kind}: {f.detail}")
        except Exception as e:  # noqa: BLE001 -- a harness crash is a failure too
            kinds["harness:" + type(e).__name__] += 1
            first.setdefault("harness:" + type(e).__name__, []).append(f"case {n}: {e!r}"[:300])
    return {"cases": cases, "failures": kinds, "findings": findings, "examples": {k: v[:examples] for k, v in first.items()},
            "answers": statuses, "seconds": time.monotonic() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_000, help="cases per target (default 10000)")
    p.add_argument("--target", choices=["docker", "cni", "all"], default="all")
    p.add_argument("--seed", default="pynet")
    p.add_argument("--examples", type=int, default=3, help="examples printed per failure kind")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.disable(logging.CRITICAL)   # the app logs every refusal
    failed = False
    avail = targets()
    for name in (list(avail) if args.target == "all" else [args.target]):
        res = run_target(avail[name](), args.cases, args.seed, args.verbose, args.examples)
        total = sum(res["failures"].values())
        failed = failed or total > 0
        print(f"{name}: {res['cases']} cases, {total} failed, {res['seconds']:.1f}s "
              f"(seed {args.seed!r})")
        print("  answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(res["answers"].items())))
        for kind, n in res["failures"].most_common():
            print(f"  {kind}: {n}")
            for ex in res["examples"].get(kind, []):
                print(f"    {ex}")
        if res["findings"]:
            print(f"  accepted input that validation should refuse ({sum(res['findings'].values())} cases, "
                  "not counted as failures):")
        for kind, n in res["findings"].most_common():
            print(f"  {kind}: {n}")
            for ex in res["examples"].get(kind, []):
                print(f"    {ex}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
