"""The `mas-flower` console command: one subcommand per user-facing job.

Each subcommand only parses arguments and calls the library, so everything here is also usable
from Python.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _synth(args: argparse.Namespace) -> int:
    from mas_flower.synthetic import generate_dataset

    generate_dataset(Path(args.out), buildings=args.buildings, views=args.views, size=args.size,
                     seed=args.seed, workers=args.workers)
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from mas_flower.data.check import check_dataset

    report = check_dataset(Path(args.root), args.tasks, decode=not args.headers_only)
    print(report.format())
    return 0 if report.ok else 1


def _split(args: argparse.Namespace) -> int:
    from mas_flower.splitting import split_from_file

    result = split_from_file(Path(args.affinity), splits=args.splits, method=args.method)
    print(json.dumps(result))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from mas_flower.bench import run_suite

    return run_suite(Path(args.suite), dry_run=args.dry_run)


def _report(args: argparse.Namespace) -> int:
    from mas_flower.report import make_report

    written = make_report([Path(p) for p in args.runs], Path(args.out) if args.out else None)
    for path in written:
        print(path)
    return 0


def _deploy_local(args: argparse.Namespace) -> int:
    from mas_flower.deploy import deploy_local

    return deploy_local(nodes=args.nodes, run_config=args.run_config, data_root=args.data_root,
                        base_port=args.base_port, timeout=args.timeout)


def build_parser() -> argparse.ArgumentParser:
    from mas_flower import __version__

    parser = argparse.ArgumentParser(prog="mas-flower", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mas-flower {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic dataset in Taskonomy's layout and encodings")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--buildings", type=int, default=8)
    p.add_argument("--views", type=int, default=48, help="views per building")
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes rendering buildings in parallel")
    p.set_defaults(func=_synth)

    p = sub.add_parser("check-data", help="verify a Taskonomy-layout dataset before training on it")
    p.add_argument("root")
    p.add_argument("--tasks", default=None, help="task letters to require (default: domains present)")
    p.add_argument("--headers-only", action="store_true",
                   help="check PNG headers (bit depth, channels, size) without decoding: fast, misses truncation")
    p.set_defaults(func=_check_data)

    p = sub.add_parser("split", help="choose task groups from an affinity matrix")
    p.add_argument("affinity", help='JSON file {"tasks": "sdnkt", "matrix": [[...]]}')
    p.add_argument("--splits", type=int, required=True, help="number of groups x")
    p.add_argument("--method", choices=("mas", "tag"), default="mas")
    p.set_defaults(func=_split)

    p = sub.add_parser("bench", help="run a suite of methods x task sets x seeds and tabulate it")
    p.add_argument("suite", help="suite YAML (see conf/)")
    p.add_argument("--dry-run", action="store_true", help="validate the suite and list its runs, run nothing")
    p.set_defaults(func=_bench)

    p = sub.add_parser("report", help="PNG figures from run folders or suite folders")
    p.add_argument("runs", nargs="+", help="run folders (with results.json) or suite output folders")
    p.add_argument("--out", default=None, help="folder for the figures (default: beside the first input)")
    p.set_defaults(func=_report)

    p = sub.add_parser("deploy-local", help="SuperLink + N SuperNodes on loopback, run the app, stop them")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--run-config", default="", help='run-config overrides, e.g. "num-rounds=4 splits=2"')
    p.add_argument("--data-root", default="", help="dataset for the nodes (default: the synthetic federation)")
    p.add_argument("--base-port", type=int, default=0, help="first port to use (default: free ports)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before the run is stopped")
    p.set_defaults(func=_deploy_local)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"mas-flower {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
