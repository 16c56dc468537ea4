"""``python -m edgefm.emulate build-root`` (what CI runs before the emulation tests) and
``python -m edgefm.emulate BUNDLE [--target T] [--cpu CORE]`` (the same as ``edgefm verify --emulate arm64``)."""

from __future__ import annotations

import argparse
import json
import sys

from edgefm.errors import EdgefmError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgefm.emulate")
    p.add_argument("bundle", help="a bundle folder, or 'build-root' to build the arm64 root and stop")
    p.add_argument("--target", default=None)
    p.add_argument("--cpu", default=None)
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    say = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    try:
        if args.bundle == "build-root":
            from edgefm.emulate.arm64 import ensure_root

            print(ensure_root(say))
            return 0
        from edgefm.emulate import verify_emulated

        report = verify_emulated(args.bundle, args.target, cpu=args.cpu, max_samples=args.max_samples, progress=say)
    except EdgefmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
