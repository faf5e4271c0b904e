#!/usr/bin/env python3
"""The `rampart tuf-client` command line, implemented with python-tuf's ngclient.

    python_tuf_client.py --metadata-dir D init TRUSTED_ROOT
    python_tuf_client.py --metadata-url U --metadata-dir D refresh
    python_tuf_client.py --metadata-url U --metadata-dir D --target-name N [--target-name N2 ...]
                         --target-dir T --target-base-url B download

Options come before the subcommand, in any order; `-v` gives more logging. Exit status 0 on
success, 1 on any failure (the error goes to stderr as `error: ...`).

It exists so that tests/tuf-client/run.py can drive python-tuf (the reference implementation)
exactly like Rampart and compare their verdicts. Everything TUF is done by
`tuf.ngclient.Updater` with a default `UpdaterConfig`; this file only maps the command line:

* init copies the trusted root to D/root.json (no network, no checks: python-tuf verifies it
  when an Updater is created);
* refresh is `Updater.refresh()`, starting from D/root.json (`bootstrap=None`);
* download refreshes, then for each target in order: `get_targetinfo`, `find_cached_target`
  (a file already in T with the signed length and hashes is not downloaded again) and
  `download_target`, stopping at the first failure. Targets go to T/quote(path, "").

python-tuf keeps its own layout in D: timestamp.json, snapshot.json, targets.json and
quote(role, "").json hold the accepted bytes; root.json is a symlink to
root_history/N.root.json (python-tuf's local root cache). run.py reads through the symlink and
ignores root_history/.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

from tuf.ngclient import Updater, UpdaterConfig


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python_tuf_client.py", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--metadata-dir", required=True)
    parser.add_argument("--metadata-url")
    parser.add_argument("--target-name", action="append", default=[], dest="target_names")
    parser.add_argument("--target-dir")
    parser.add_argument("--target-base-url")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="copy a trusted root into the metadata directory")
    init.add_argument("trusted_root")
    sub.add_parser("refresh", help="run the TUF client workflow")
    sub.add_parser("download", help="refresh, then download each --target-name")
    return parser.parse_args(argv)


def updater(args: argparse.Namespace) -> Updater:
    if not args.metadata_url:
        raise ValueError("--metadata-url is required")
    return Updater(
        metadata_dir=args.metadata_dir,
        metadata_base_url=args.metadata_url,
        target_dir=args.target_dir,
        target_base_url=args.target_base_url,
        config=UpdaterConfig(),
        bootstrap=None,  # trust D/root.json, written by `init` or by an earlier refresh
    )


def run(args: argparse.Namespace) -> None:
    if args.command == "init":
        os.makedirs(args.metadata_dir, exist_ok=True)
        shutil.copyfile(args.trusted_root, os.path.join(args.metadata_dir, "root.json"))
        return
    if args.command == "download":
        if not args.target_dir or not args.target_base_url:
            raise ValueError("download needs --target-dir and --target-base-url")
        if not args.target_names:
            raise ValueError("download needs at least one --target-name")
    client = updater(args)
    client.refresh()
    logging.info("refresh complete")
    if args.command == "refresh":
        return
    for name in args.target_names:
        info = client.get_targetinfo(name)
        if info is None:
            raise LookupError(f"target {name} not found")
        cached = client.find_cached_target(info)
        if cached is not None:
            logging.info("target %s already present at %s", name, cached)
            continue
        path = client.download_target(info)
        logging.info("target %s downloaded to %s", name, path)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except Exception as e:  # noqa: BLE001 - any failure is exit status 1
        logging.debug("failure", exc_info=True)
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
