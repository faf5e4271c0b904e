#!/usr/bin/env python3
"""Measure 1, python-tuf side: the same refresh as `rampart-bench refresh`, with ngclient.

Reads the repositories `rampart-bench refresh-gen DIR` wrote, through a fetcher that reads
files from disk (no HTTP on either side), and times, per iteration, from empty local storage:
both Updaters built from the provisioned root, the director refreshed and its targets looked
up, the image repository refreshed, and each ECU's target looked up through its delegations.
Prints one JSON object (median and min seconds).

Usage: refresh_ngclient.py DIR [--iterations N]
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import tuf
from tuf.api import exceptions
from tuf.ngclient import FetcherInterface, Updater

BASE = "http://bench.invalid/"


class LocalFetcher(FetcherInterface):
    """Serves `http://bench.invalid/REPO/metadata/FILE` from `DIR/REPO/metadata/FILE`."""

    def __init__(self, root):
        self.root = root

    def _fetch(self, url):
        if not url.startswith(BASE):
            raise exceptions.DownloadHTTPError(f"unexpected URL {url}", 404)
        path = os.path.join(self.root, url[len(BASE):])
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise exceptions.DownloadHTTPError(f"{url} not found", 404) from None
        return iter([data])


def one_refresh(repo_dir, work, vehicle, fetcher):
    roots = {}
    for repo in ("director", "image"):
        with open(os.path.join(repo_dir, repo, "metadata", "1.root.json"), "rb") as f:
            roots[repo] = f.read()
    found = 0
    updaters = {}
    for repo in ("director", "image"):
        local = os.path.join(work, repo)
        os.makedirs(local, exist_ok=True)
        updaters[repo] = Updater(
            metadata_dir=local,
            metadata_base_url=f"{BASE}{repo}/metadata/",
            fetcher=fetcher,
            bootstrap=roots[repo],
        )
        updaters[repo].refresh()
        for target in vehicle["assigned"].values():
            if updaters[repo].get_targetinfo(target) is None:
                raise RuntimeError(f"{target} not found in {repo}")
            found += 1
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    with open(os.path.join(args.dir, "vehicle.json")) as f:
        vehicle = json.load(f)
    fetcher = LocalFetcher(args.dir)
    times = []
    base = tempfile.mkdtemp(prefix="ngclient-", dir=args.dir)
    try:
        # One warm-up run (imports, page cache), not counted.
        for i in range(args.iterations + 1):
            work = os.path.join(base, f"run-{i}")
            start = time.perf_counter()
            found = one_refresh(args.dir, work, vehicle, fetcher)
            elapsed = time.perf_counter() - start
            if found != 2 * len(vehicle["assigned"]):
                raise RuntimeError("lookups failed")
            if i > 0:
                times.append(elapsed)
            shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    json.dump(
        {
            "iterations": args.iterations,
            "times_s": times,
            "refresh_median_s": statistics.median(times),
            "refresh_min_s": min(times),
            "python": sys.version.split()[0],
            "tuf": tuf.__version__,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
