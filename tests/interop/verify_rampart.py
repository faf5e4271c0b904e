#!/usr/bin/env python3
"""Verifies a repository signed by rampart-core with python-tuf.

Usage: verify_rampart.py DIR

DIR is what the Rust test `rampart_signed_repository_for_python_tuf` writes
(target/interop/rampart-repo): DIR/metadata, DIR/targets and DIR/expect.json, which names the
trusted root to start from, the final root version and every target (path, role, length,
sha256, custom).

Checks, with python-tuf only:
1. Metadata API: every document loads with Metadata.from_bytes, and each role verifies with
   verify_delegate against its delegator (root chain 1 -> N, then timestamp, snapshot, targets
   and every delegated role, walking the delegations); lengths and hashes listed by timestamp
   and snapshot match the files.
2. ngclient: Updater.refresh() from the trusted root, get_targetinfo for every target (same
   length, hashes and custom as expect.json), download_target and compare the bytes.
3. Negative control: the same repository with one target file altered must make
   download_target fail, so the checks above cannot pass vacuously.

Prints a one-line summary; exits non-zero on any failure.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from tuf.api import exceptions
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

BASE_URL = "https://rampart.invalid/"


class DirFetcher(FetcherInterface):
    """Serves BASE_URL + path from a directory, paths taken verbatim (no unquoting)."""

    def __init__(self, base: Path):
        self.base = base

    def _fetch(self, url: str) -> Iterator[bytes]:
        rel = url[len(BASE_URL) :] if url.startswith(BASE_URL) else None
        path = self.base / rel if rel is not None else None
        if (
            path is None
            or not path.is_file()
            or not path.resolve().is_relative_to(self.base.resolve())
        ):
            raise exceptions.DownloadHTTPError(f"{url} not found", 404)
        return iter([path.read_bytes()])


def check_meta(meta: MetaFile, data: bytes) -> None:
    if meta.length is not None or meta.hashes is not None:
        meta.verify_length_and_hashes(data)


def verify_with_metadata_api(md_dir: Path, expect: dict) -> tuple[int, list[str]]:
    """Step 1; returns the final root version and the roles verified."""
    verified: list[str] = []
    trusted = Metadata[Root].from_bytes((md_dir / expect["trusted_root"]).read_bytes())
    trusted.signed.verify_delegate("root", trusted.signed_bytes, trusted.signatures)
    while True:
        nxt = md_dir / f"{trusted.signed.version + 1}.root.json"
        if not nxt.is_file():
            break
        new = Metadata[Root].from_bytes(nxt.read_bytes())
        trusted.signed.verify_delegate("root", new.signed_bytes, new.signatures)
        new.signed.verify_delegate("root", new.signed_bytes, new.signatures)
        if new.signed.version != trusted.signed.version + 1:
            raise ValueError(f"{nxt.name} has version {new.signed.version}")
        trusted = new
    root = trusted.signed
    verified.append(f"root v{root.version}")

    ts_md = Metadata[Timestamp].from_bytes((md_dir / "timestamp.json").read_bytes())
    root.verify_delegate("timestamp", ts_md.signed_bytes, ts_md.signatures)
    verified.append("timestamp")

    snap_meta = ts_md.signed.snapshot_meta
    snap_bytes = (md_dir / f"{snap_meta.version}.snapshot.json").read_bytes()
    check_meta(snap_meta, snap_bytes)
    snap_md = Metadata[Snapshot].from_bytes(snap_bytes)
    root.verify_delegate("snapshot", snap_md.signed_bytes, snap_md.signatures)
    if snap_md.signed.version != snap_meta.version:
        raise ValueError("snapshot version differs from the one timestamp lists")
    verified.append("snapshot")

    # Targets roles, top-level first, each verified by its delegator.
    queue: list[tuple[str, Root | Targets]] = [("targets", root)]
    while queue:
        role, delegator = queue.pop(0)
        meta = snap_md.signed.meta[f"{role}.json"]
        data = (md_dir / f"{meta.version}.{quote(role, '')}.json").read_bytes()
        check_meta(meta, data)
        md = Metadata[Targets].from_bytes(data)
        delegator.verify_delegate(role, md.signed_bytes, md.signatures)
        if md.signed.version != meta.version:
            raise ValueError(f"{role} version differs from the one snapshot lists")
        verified.append(role)
        delegations = md.signed.delegations
        if delegations is not None and delegations.roles is not None:
            queue.extend((child, md.signed) for child in delegations.roles)
    return root.version, verified


def run_updater(repo: Path, expect: dict, work: Path) -> Updater:
    md_dir = work / "metadata"
    tgt_dir = work / "targets"
    md_dir.mkdir(parents=True)
    tgt_dir.mkdir(parents=True)
    updater = Updater(
        metadata_dir=str(md_dir),
        metadata_base_url=BASE_URL + "metadata/",
        target_dir=str(tgt_dir),
        target_base_url=BASE_URL + "targets/",
        fetcher=DirFetcher(repo),
        bootstrap=(repo / "metadata" / expect["trusted_root"]).read_bytes(),
    )
    updater.refresh()
    return updater


def verify_with_updater(repo: Path, expect: dict) -> int:
    """Step 2; returns the number of targets downloaded and checked."""
    with tempfile.TemporaryDirectory() as tmp:
        updater = run_updater(repo, expect, Path(tmp))
        root = Metadata[Root].from_bytes((Path(tmp) / "metadata" / "root.json").read_bytes())
        if root.signed.version != expect["root_version"]:
            raise ValueError(f"updater trusts root v{root.signed.version}")
        for t in expect["targets"]:
            info = updater.get_targetinfo(t["path"])
            if info is None:
                raise ValueError(f"target {t['path']!r} not found by python-tuf")
            if info.length != t["length"] or info.hashes.get("sha256") != t["sha256"]:
                raise ValueError(f"target {t['path']!r}: length or sha256 differ")
            if info.custom != t["custom"]:
                raise ValueError(f"target {t['path']!r}: custom {info.custom} != {t['custom']}")
            data = Path(updater.download_target(info)).read_bytes()
            if hashlib.sha256(data).hexdigest() != t["sha256"] or len(data) != t["length"]:
                raise ValueError(f"target {t['path']!r}: downloaded bytes differ")
        return len(expect["targets"])


def negative_control(repo: Path, expect: dict) -> None:
    """Step 3: an altered target file must be refused."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(repo, copy)
        first = expect["targets"][0]
        dirname, sep, basename = first["path"].rpartition("/")
        victim = copy / "targets" / f"{dirname}{sep}{first['sha256']}.{basename}"
        data = bytearray(victim.read_bytes())
        data[0] ^= 0x01
        victim.write_bytes(bytes(data))
        updater = run_updater(copy, expect, Path(tmp) / "client")
        info = updater.get_targetinfo(first["path"])
        if info is None:
            raise ValueError("negative control: target not found")
        try:
            updater.download_target(info)
        except exceptions.RepositoryError:
            return
        raise ValueError("negative control: an altered target was accepted")


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: verify_rampart.py DIR", file=sys.stderr)
        return 2
    repo = Path(sys.argv[1])
    try:
        expect = json.loads((repo / "expect.json").read_text(encoding="utf-8"))
        root_version, roles = verify_with_metadata_api(repo / "metadata", expect)
        if root_version != expect["root_version"]:
            raise ValueError(f"root chain ends at v{root_version}")
        missing = set(expect["roles"]) - {r.split(" ")[0] for r in roles}
        if missing:
            raise ValueError(f"roles not verified: {sorted(missing)}")
        downloaded = verify_with_updater(repo, expect)
        negative_control(repo, expect)
    except Exception as e:  # noqa: BLE001 (any failure fails the check)
        print(f"FAIL: python-tuf rejects the Rampart repository {repo}: {type(e).__name__}: {e}")
        return 1
    print(
        f"ok: python-tuf verified the Rampart repository {repo}: {', '.join(roles)} "
        f"(verify_delegate); Updater refreshed and downloaded {downloaded} target(s); "
        "altered target refused"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
