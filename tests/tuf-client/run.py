#!/usr/bin/env python3
"""TUF client conformance scenarios for `rampart tuf-client`, run against Rampart and python-tuf.

    run.py [--client rampart|python-tuf|both] [--scenario NAME ...] [--jobs N]
           [--rampart CMD] [--python-tuf CMD] [--report FILE] [--list] [-v]

Every scenario builds a TUF repository with python-tuf's Metadata API and securesystemslib's
CryptoSigner (fresh keys per scenario and client), serves it over HTTP on 127.0.0.1 (ephemeral
port, http.server in a thread) and drives a client through a sequence of steps. A step may
change what the server serves (a repository update or an attack), then runs the client (`init`,
`refresh` or `download`, optionally under `faketime`), then checks:

* the exit status (0 success, 1 failure);
* the metadata directory: exactly the expected files, each holding the expected version and
  exactly bytes the repository served for that role and version (attack steps: byte-for-byte
  identical to before the step, unless the TUF workflow persists something first);
* the target directory: exactly the expected files with the expected bytes;
* that nothing was written outside the metadata and target directories;
* step-specific checks (HTTP requests made, bytes the server managed to send, ...).

The clients are command prefixes that implement the CLI contract of `rampart tuf-client`
(tests/tuf-client/README.md); `python_tuf_client.py` is python-tuf's ngclient behind that CLI.
Exit status: 1 if Rampart misses any expectation (python-tuf's verdicts are reported, not
enforced), 2 on usage errors, 0 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import hashlib
import json
import os
import posixpath
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner, Signature, Signer, SSlibKey
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent

FAR = datetime(2099, 1, 1, tzinfo=timezone.utc)
PAST = datetime(2020, 1, 1, tzinfo=timezone.utc)
SOON = datetime(2050, 1, 1, tzinfo=timezone.utc)  # expiry used by the faketime scenarios
BEFORE_SOON = "2040-01-01 00:00:00"  # faketime: every role still valid
AFTER_SOON = "2060-01-01 00:00:00"  # faketime: roles expiring at SOON have expired
MIB = 1024 * 1024
TOP = ("root", "timestamp", "snapshot", "targets")
CLIENT_TIMEOUT = 120


# --------------------------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------------------------


class Server:
    """Serves `files` (path relative to the server root, percent-decoded -> bytes or responder)
    on 127.0.0.1. What it serves can be changed at any time; every request is logged."""

    def __init__(self) -> None:
        self.files: dict[str, bytes | Callable[[BaseHTTPRequestHandler], None]] = {}
        self.log: list[str] = []
        self.sent: dict[str, list[int]] = {}  # bytes written per response, for responders
        self.lock = threading.Lock()
        self.busy = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                key = unquote(self.path.split("?", 1)[0].lstrip("/"))
                with outer.lock:
                    outer.log.append(key)
                    outer.busy += 1
                    entry = outer.files.get(key)
                    if entry is None:  # like a static file server: resolve "." and ".."
                        entry = outer.files.get(posixpath.normpath(key))
                try:
                    if entry is None:
                        self.send_error(404)
                    elif callable(entry):
                        entry(self)
                    else:
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(entry)))
                        self.end_headers()
                        self.wfile.write(entry)
                except OSError:
                    pass
                finally:
                    with outer.lock:
                        outer.busy -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def requests(self) -> list[str]:
        with self.lock:
            return list(self.log)

    def clear_log(self) -> None:
        with self.lock:
            self.log.clear()
            self.sent.clear()

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Waits until no response is being written (a client that hung up mid-response)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if self.busy == 0:
                    return
            time.sleep(0.02)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def oversized(body: bytes, total: int, *, content_length: bool, key: str, server: Server):
    """A responder sending `body` padded to `total` bytes, in 64 KiB pieces through a small
    socket send buffer, recording how many bytes it could write before the client hung up."""

    data = body + b" " * (total - len(body)) if total > len(body) else body

    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        handler.send_response(200)
        if content_length:
            handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        sent = 0
        try:
            while sent < len(data):
                n = handler.connection.send(data[sent : sent + 64 * 1024])
                sent += n
        except OSError:
            pass
        finally:
            with server.lock:
                server.sent.setdefault(key, []).append(sent)
            handler.close_connection = True

    return respond


# --------------------------------------------------------------------------------------------
# Repository built with python-tuf's Metadata API
# --------------------------------------------------------------------------------------------


def new_signer(keytype: str) -> Signer:
    if keytype == "ed25519":
        return CryptoSigner.generate_ed25519()
    if keytype == "ecdsa":
        return CryptoSigner.generate_ecdsa()  # ecdsa-sha2-nistp256
    if keytype == "rsa":
        return CryptoSigner.generate_rsa(scheme="rsassa-pss-sha256", size=2048)
    raise ValueError(keytype)


def unknown_key() -> SSlibKey:
    """A key of a type no client supports (its key ID is computed the usual way)."""
    d = {"keytype": "x-unknown-type", "scheme": "x-unknown-scheme", "keyval": {"public": "00" * 32}}
    keyid = hashlib.sha256(encode_canonical(d).encode()).hexdigest()
    return SSlibKey(keyid, d["keytype"], d["scheme"], d["keyval"])


def sign_raw(signed: dict[str, Any], signers: list[Signer], duplicate: bool = False) -> bytes:
    """Signs a `signed` dict as given (possibly not valid metadata). With `duplicate`, every
    signature appears twice."""
    payload = encode_canonical(signed).encode()
    sigs = [s.sign(payload).to_dict() for s in signers]
    if duplicate:
        sigs = sigs + sigs
    return json.dumps({"signatures": sigs, "signed": signed}, indent=1, sort_keys=True).encode()


class Repo:
    """A TUF repository: python-tuf metadata objects, their signers, and the bytes published
    on a Server under metadata/ and targets/."""

    def __init__(
        self,
        server: Server,
        *,
        keytype: str = "ed25519",
        consistent: bool = True,
        nkeys: dict[str, int] | None = None,
        thresholds: dict[str, int] | None = None,
        ts_meta: tuple[bool, list[str] | None] = (False, None),
        sn_meta: tuple[bool, list[str] | None] = (False, None),
        expires: dict[str, datetime] | None = None,
    ) -> None:
        self.server = server
        self.keytype = keytype
        self.consistent = consistent
        self.ts_meta = ts_meta  # (with length, hash algorithms) of snapshot meta in timestamp
        self.sn_meta = sn_meta  # same for targets roles in snapshot
        expires = expires or {}
        self.signers: dict[str, list[Signer]] = {}
        self.root = Root(expires=expires.get("root", FAR), consistent_snapshot=consistent)
        for role in TOP:
            self.signers[role] = []
            for _ in range((nkeys or {}).get(role, 1)):
                s = new_signer(keytype)
                self.root.add_key(s.public_key, role)
                self.signers[role].append(s)
            self.root.roles[role].threshold = (thresholds or {}).get(role, 1)
        self.timestamp = Timestamp(expires=expires.get("timestamp", FAR))
        self.snapshot = Snapshot(expires=expires.get("snapshot", FAR))
        self.targets: dict[str, Targets] = {"targets": Targets(expires=expires.get("targets", FAR))}
        self.delegator: dict[str, str] = {"targets": "root"}
        self.target_data: dict[str, bytes] = {}
        # (role, version) -> every byte string published for it
        self.published: dict[tuple[str, int], list[bytes]] = {}
        self.root_bytes: dict[int, bytes] = {}

    # -- signing and publishing -------------------------------------------------------------

    def serialize(self, signed: Any, signers: list[Signer], extra_sigs: list[Signature] = ()) -> bytes:
        md = Metadata(signed)
        for s in signers:
            md.sign(s, append=True)
        for sig in extra_sigs:
            md.signatures[sig.keyid] = sig
        return md.to_bytes(JSONSerializer(compact=False))

    def md_path(self, role: str, version: int | None) -> str:
        name = quote(role, "")
        if version is None:
            return unquote(f"metadata/{name}.json")
        return unquote(f"metadata/{version}.{name}.json")

    def record(self, role: str, version: int, data: bytes) -> None:
        self.published.setdefault((role, version), []).append(data)

    def publish_root(self, signers: list[Signer] | None = None, extra_sigs: list[Signature] = ()) -> bytes:
        data = self.serialize(self.root, self.signers["root"] if signers is None else signers, extra_sigs)
        self.server.files[self.md_path("root", self.root.version)] = data
        self.record("root", self.root.version, data)
        self.root_bytes[self.root.version] = data
        return data

    def metafile(self, version: int, data: bytes, spec: tuple[bool, list[str] | None]) -> MetaFile:
        with_length, algorithms = spec
        mf = MetaFile(version)
        if with_length:
            mf.length = len(data)
        if algorithms:
            mf.hashes = MetaFile.from_data(version, data, algorithms).hashes
        return mf

    def publish_targets(self, role: str = "targets", signers: list[Signer] | None = None,
                        extra_sigs: list[Signature] = ()) -> bytes:
        md = self.targets[role]
        data = self.serialize(md, self.signers[role] if signers is None else signers, extra_sigs)
        self.server.files[self.md_path(role, md.version if self.consistent else None)] = data
        self.record(role, md.version, data)
        self.snapshot.meta[f"{role}.json"] = self.metafile(md.version, data, self.sn_meta)
        return data

    def publish_snapshot(self, signers: list[Signer] | None = None, extra_sigs: list[Signature] = ()) -> bytes:
        data = self.serialize(self.snapshot, self.signers["snapshot"] if signers is None else signers, extra_sigs)
        self.server.files[self.md_path("snapshot", self.snapshot.version if self.consistent else None)] = data
        self.record("snapshot", self.snapshot.version, data)
        self.timestamp.snapshot_meta = self.metafile(self.snapshot.version, data, self.ts_meta)
        return data

    def publish_timestamp(self, signers: list[Signer] | None = None, extra_sigs: list[Signature] = ()) -> bytes:
        data = self.serialize(self.timestamp, self.signers["timestamp"] if signers is None else signers, extra_sigs)
        self.server.files["metadata/timestamp.json"] = data
        self.record("timestamp", self.timestamp.version, data)
        return data

    def publish_initial(self) -> None:
        self.publish_root()
        for role in self.targets:
            self.publish_targets(role)
        self.publish_snapshot()
        self.publish_timestamp()

    def bump(self, *roles: str, snapshot: bool = True, timestamp: bool = True) -> None:
        """New versions of targets `roles`, then (by default) snapshot and timestamp."""
        for role in roles:
            self.targets[role].version += 1
            self.publish_targets(role)
        if snapshot:
            self.snapshot.version += 1
            self.publish_snapshot()
        if timestamp:
            self.timestamp.version += 1
            self.publish_timestamp()

    def new_root(self, change: Callable[[Root], None] | None = None, signers: list[Signer] | None = None) -> bytes:
        """Root version N+1 after `change`, signed by the old and the new root keys (or by
        `signers`)."""
        old = list(self.signers["root"])
        if change:
            change(self.root)
        self.root.version += 1
        if signers is None:
            seen: dict[str, Signer] = {}
            for s in old + self.signers["root"]:
                seen.setdefault(s.public_key.keyid, s)
            signers = list(seen.values())
        return self.publish_root(signers)

    def replace_keys(self, role: str, count: int = 1, threshold: int = 1, keytype: str | None = None) -> list[Signer]:
        """Replaces the keys of a top-level role in self.root (not published)."""
        for keyid in list(self.root.roles[role].keyids):
            self.root.revoke_key(keyid, role)
        self.signers[role] = [new_signer(keytype or self.keytype) for _ in range(count)]
        for s in self.signers[role]:
            self.root.add_key(s.public_key, role)
        self.root.roles[role].threshold = threshold
        return self.signers[role]

    # -- targets and delegations ------------------------------------------------------------

    def target_url_paths(self, tf: TargetFile) -> list[str]:
        if not self.consistent:
            return [f"targets/{tf.path}"]
        directory, sep, base = tf.path.rpartition("/")
        return [f"targets/{directory}{sep}{h}.{base}" for h in tf.hashes.values()]

    def add_target(self, path: str, data: bytes, role: str = "targets",
                   hashes: tuple[str, ...] = ("sha256", "sha512")) -> TargetFile:
        tf = TargetFile.from_data(path, data, list(hashes))
        self.targets[role].targets[path] = tf
        self.target_data[path] = data
        for url in self.target_url_paths(tf):
            self.server.files[posixpath.normpath(url)] = data
        return tf

    def delegate(self, delegator: str, name: str, *, paths: list[str] | None = None,
                 hash_prefixes: list[str] | None = None, terminating: bool = False,
                 expires: datetime = FAR) -> None:
        known = name in self.targets  # delegating to an existing role (e.g. a cycle): same key
        signer = self.signers[name][0] if known else new_signer(self.keytype)
        parent = self.targets[delegator]
        if parent.delegations is None:
            parent.delegations = Delegations(keys={}, roles={})
        parent.delegations.keys[signer.public_key.keyid] = signer.public_key
        parent.delegations.roles[name] = DelegatedRole(
            name=name, keyids=[signer.public_key.keyid], threshold=1, terminating=terminating,
            paths=paths, path_hash_prefixes=hash_prefixes,
        )
        if not known:
            self.targets[name] = Targets(expires=expires)
            self.signers[name] = [signer]
            self.delegator[name] = delegator


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------


@dataclass
class Step:
    label: str
    cmd: str  # "init" | "refresh" | "download"
    action: Callable[[Ctx], None] | None = None  # repository change before the command
    targets: list[str] = field(default_factory=list)
    faketime: str | None = None
    exit: int | None = 0  # None: either is acceptable
    md: dict[str, int] | None = None  # role -> version: exact content of the metadata dir
    unchanged: bool = False  # metadata dir byte-identical to before the step
    tgt: dict[str, bytes] | None = None  # target path -> bytes: exact content of the target dir
    tgt_any: bool = False  # target dir content not checked (only that nothing leaves it)
    checks: list[Callable[[Ctx], list[str]]] = field(default_factory=list)
    verbose: bool = False
    trusted_root: Callable[[Ctx], bytes] | None = None  # init: bytes to trust (default 1.root.json)
    resumable: bool = False  # a cut transfer: a NAME#partial kept in the target dir is allowed

    def expected_text(self) -> str:
        parts = ["exit 0 or 1" if self.exit is None else f"exit {self.exit}"]
        if self.unchanged:
            parts.append("md unchanged")
        elif self.md is not None:
            short = {"root": "root", "timestamp": "ts", "snapshot": "snap", "targets": "tgts"}
            parts.append(" ".join(f"{short.get(r, r)}={v}" for r, v in self.md.items()))
        return "; ".join(parts)


@dataclass
class Scenario:
    name: str
    kind: str  # "feature" | "attack"
    doc: str
    build: Callable[[Ctx], list[Step]]
    # step label -> why python-tuf's verdict differs from the expectation (documented)
    python_differences: dict[str, str] = field(default_factory=dict)
    # step label -> known Rampart bug in code this suite may not change (reported, not fatal)
    rampart_known_bugs: dict[str, str] = field(default_factory=dict)


SCENARIOS: list[Scenario] = []


def scenario(kind: str, python_differences: dict[str, str] | None = None,
             rampart_known_bugs: dict[str, str] | None = None):
    def register(fn: Callable[[Ctx], list[Step]]) -> Callable[[Ctx], list[Step]]:
        SCENARIOS.append(Scenario(fn.__name__.replace("_", "-"), kind, (fn.__doc__ or "").strip(), fn,
                                  python_differences or {}, rampart_known_bugs or {}))
        return fn

    return register


class Ctx:
    """State of one scenario run for one client."""

    def __init__(self, server: Server, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir  # walked for stray files
        self.base = workdir / "a" / "b"  # md and tgt live two levels down, so ../../x is caught
        self.md = self.base / "md"
        self.tgt = self.base / "tgt"
        self.repo: Repo | None = None
        self.vars: dict[str, Any] = {}

    def new_repo(self, **kw: Any) -> Repo:
        self.repo = Repo(self.server, **kw)
        return self.repo

    @property
    def r(self) -> Repo:
        assert self.repo is not None
        return self.repo

    @property
    def metadata_url(self) -> str:
        return self.server.url + "metadata/"

    @property
    def targets_url(self) -> str:
        return self.server.url + "targets/"


def top(root: int = 1, ts: int = 1, sn: int = 1, tg: int = 1, **delegated: int) -> dict[str, int]:
    out = {"root": root, "timestamp": ts, "snapshot": sn, "targets": tg}
    out.update(delegated)
    return out


def init_step(**kw: Any) -> Step:
    return Step("init", "init", md={"root": 1}, **kw)


# -- reusable checks ------------------------------------------------------------------------


def requested(*paths: str) -> Callable[[Ctx], list[str]]:
    def check(ctx: Ctx) -> list[str]:
        log = ctx.server.requests()
        return [f"expected a request for {p}; requests: {log}" for p in paths if p not in log]

    return check


def not_requested(pattern: str) -> Callable[[Ctx], list[str]]:
    def check(ctx: Ctx) -> list[str]:
        bad = [p for p in ctx.server.requests() if fnmatch.fnmatchcase(p, pattern)]
        return [f"unexpected request(s) {bad}"] if bad else []

    return check


def requests_exactly(*paths: str) -> Callable[[Ctx], list[str]]:
    def check(ctx: Ctx) -> list[str]:
        log = ctx.server.requests()
        return [] if sorted(log) == sorted(paths) else [f"requests {log}, expected {list(paths)}"]

    return check


def requested_one_of(*paths: str) -> Callable[[Ctx], list[str]]:
    def check(ctx: Ctx) -> list[str]:
        log = ctx.server.requests()
        return [] if any(p in log for p in paths) else [f"expected a request for one of {paths}; requests: {log}"]

    return check


def partial_read(key: str, total: int) -> Callable[[Ctx], list[str]]:
    """The responder for `key` must not have been able to send all `total` bytes."""

    def check(ctx: Ctx) -> list[str]:
        ctx.server.wait_idle()
        sent = ctx.server.sent.get(key, [])
        if not sent:
            return [f"{key} was not requested"]
        full = [s for s in sent if s >= total]
        if full:
            return [f"client read all {total} bytes of {key} (server sent {sent})"]
        ctx.vars.setdefault("notes", []).append(f"{key}: server could send {max(sent)} of {total} bytes")
        return []

    return check


def served(role: str, version: int) -> Callable[[Ctx], bytes]:
    return lambda ctx: ctx.r.published[(role, version)][-1]


# -- features -------------------------------------------------------------------------------

T1 = b"target one\n"
T2 = b"target two, a little longer\n"
T3 = b"a target in a subdirectory\n"


def basic(ctx: Ctx, keytype: str) -> list[Step]:
    repo = ctx.new_repo(keytype=keytype)
    tf1 = repo.add_target("file1.txt", T1)
    tf3 = repo.add_target("dir/sub/file3.txt", T3)
    repo.publish_initial()

    def update(c: Ctx) -> None:
        c.r.add_target("file2.txt", T2)
        c.r.bump("targets")

    return [
        init_step(),
        Step("refresh", "refresh", md=top(), checks=[requested("metadata/2.root.json", "metadata/timestamp.json",
                                                                 "metadata/1.snapshot.json", "metadata/1.targets.json")]),
        Step("refresh again: nothing new", "refresh", unchanged=True, md=top(),
             checks=[requests_exactly("metadata/2.root.json", "metadata/timestamp.json")]),
        Step("download file1.txt and dir/sub/file3.txt", "download", targets=["file1.txt", "dir/sub/file3.txt"],
             md=top(), tgt={"file1.txt": T1, "dir/sub/file3.txt": T3},
             checks=[requested_one_of(*repo.target_url_paths(tf1)), requested_one_of(*repo.target_url_paths(tf3))]),
        Step("repository update: targets v2 with file2.txt; download it", "download", action=update,
             targets=["file2.txt"], md=top(1, 2, 2, 2),
             tgt={"file1.txt": T1, "dir/sub/file3.txt": T3, "file2.txt": T2}),
    ]


@scenario("feature")
def keys_ed25519(ctx: Ctx) -> list[Step]:
    """ed25519 keys for every role; consistent snapshots; refresh, no-op refresh (only
    2.root.json and timestamp.json requested), download (hash-prefixed target URLs), update."""
    return basic(ctx, "ed25519")


@scenario("feature")
def keys_ecdsa(ctx: Ctx) -> list[Step]:
    """ecdsa-sha2-nistp256 keys for every role; same steps as keys-ed25519."""
    return basic(ctx, "ecdsa")


@scenario("feature")
def keys_rsa(ctx: Ctx) -> list[Step]:
    """rsassa-pss-sha256 (RSA 2048) keys for every role; same steps as keys-ed25519."""
    return basic(ctx, "rsa")


@scenario("feature")
def hashes_sha256_only(ctx: Ctx) -> list[Step]:
    """Target hashed with sha256 only (URL HASH.NAME uses it); timestamp lists snapshot's
    length and sha256; snapshot lists targets' length and sha256."""
    repo = ctx.new_repo(ts_meta=(True, ["sha256"]), sn_meta=(True, ["sha256"]))
    tf = repo.add_target("file1.txt", T1, hashes=("sha256",))
    repo.publish_initial()
    return [
        init_step(),
        Step("download file1.txt", "download", targets=["file1.txt"], md=top(), tgt={"file1.txt": T1},
             checks=[requested(f"targets/{tf.hashes['sha256']}.file1.txt")]),
    ]


@scenario("feature")
def hashes_sha512_only(ctx: Ctx) -> list[Step]:
    """Target hashed with sha512 only (URL HASH.NAME uses the sha512 digest); metadata meta
    with length and sha512 only."""
    repo = ctx.new_repo(ts_meta=(True, ["sha512"]), sn_meta=(True, ["sha512"]))
    tf = repo.add_target("file1.txt", T1, hashes=("sha512",))
    repo.publish_initial()
    return [
        init_step(),
        Step("download file1.txt", "download", targets=["file1.txt"], md=top(), tgt={"file1.txt": T1},
             checks=[requested(f"targets/{tf.hashes['sha512']}.file1.txt")]),
    ]


@scenario("feature")
def consistent_snapshot_off(ctx: Ctx) -> list[Step]:
    """consistent_snapshot false: snapshot.json, targets.json and targets/PATH are fetched
    without version or hash prefix (the server has no prefixed copies)."""
    repo = ctx.new_repo(consistent=False)
    repo.add_target("file1.txt", T1)
    repo.add_target("dir/sub/file3.txt", T3)
    repo.publish_initial()

    def update(c: Ctx) -> None:
        c.r.add_target("file2.txt", T2)
        c.r.bump("targets")

    return [
        init_step(),
        Step("download file1.txt and dir/sub/file3.txt", "download", targets=["file1.txt", "dir/sub/file3.txt"],
             md=top(), tgt={"file1.txt": T1, "dir/sub/file3.txt": T3},
             checks=[requested("metadata/snapshot.json", "metadata/targets.json", "targets/file1.txt",
                               "targets/dir/sub/file3.txt"),
                     not_requested("metadata/1.snapshot.json")]),
        Step("repository update: targets v2; download file2.txt", "download", action=update,
             targets=["file2.txt"], md=top(1, 2, 2, 2),
             tgt={"file1.txt": T1, "dir/sub/file3.txt": T3, "file2.txt": T2}),
    ]


@scenario("feature")
def delegation_paths(ctx: Ctx) -> list[Step]:
    """Delegations by `paths` (a/*, nested a/sub-*) and by `path_hash_prefixes`; a delegated
    role only loaded when the walk needs it; a target outside a role's paths is not found even
    if the role lists it ("a/*" does not match a/deep/x.txt)."""
    repo = ctx.new_repo()
    b_hash = hashlib.sha256(b"b/file.txt").hexdigest()
    prefix = b_hash[:4]
    for other in ("c/file.txt", "a/file.txt", "a/deep/x.txt", "a/sub-1.txt"):
        assert not hashlib.sha256(other.encode()).hexdigest().startswith(prefix)
    repo.delegate("targets", "a-role", paths=["a/*"])
    repo.delegate("targets", "b-role", hash_prefixes=[prefix])
    repo.delegate("a-role", "a-sub", paths=["a/sub-*"])
    repo.add_target("a/file.txt", b"A\n", role="a-role")
    repo.add_target("c/file.txt", b"C\n", role="a-role")
    repo.add_target("a/deep/x.txt", b"X\n", role="a-role")
    repo.add_target("b/file.txt", b"B\n", role="b-role")
    repo.add_target("a/sub-1.txt", b"S\n", role="a-sub")
    repo.publish_initial()
    return [
        init_step(),
        Step("refresh (top-level only)", "refresh", md=top()),
        Step("download a/file.txt (a-role, paths a/*)", "download", targets=["a/file.txt"],
             md=top(**{"a-role": 1}), tgt={"a/file.txt": b"A\n"}, checks=[not_requested("metadata/1.b-role.json")]),
        Step("download b/file.txt (b-role, path_hash_prefixes)", "download", targets=["b/file.txt"],
             md=top(**{"a-role": 1, "b-role": 1}), tgt={"a/file.txt": b"A\n", "b/file.txt": b"B\n"}),
        Step("download a/sub-1.txt (a-role -> a-sub)", "download", targets=["a/sub-1.txt"],
             md=top(**{"a-role": 1, "b-role": 1, "a-sub": 1}),
             tgt={"a/file.txt": b"A\n", "b/file.txt": b"B\n", "a/sub-1.txt": b"S\n"}),
        Step("download c/file.txt (listed by a-role, outside its paths): not found", "download",
             targets=["c/file.txt"], exit=1, unchanged=True),
        Step("download a/deep/x.txt ('a/*' does not match across '/'): not found", "download",
             targets=["a/deep/x.txt"], exit=1, unchanged=True),
    ]


@scenario("feature")
def delegation_terminating(ctx: Ctx) -> list[Step]:
    """A terminating delegation stops the search: a target only in a later role is not found,
    and that role is never fetched; a terminating role whose paths do not match does not stop
    it; once the delegation is made non-terminating the target is found."""
    repo = ctx.new_repo()
    repo.delegate("targets", "first", paths=["*.txt"], terminating=True)
    repo.delegate("targets", "second", paths=["*.txt"])
    repo.delegate("targets", "third", paths=["*.bin"])
    repo.add_target("in-first.txt", b"1\n", role="first")
    repo.add_target("only-in-second.txt", b"2\n", role="second")
    repo.add_target("x.bin", b"3\n", role="third")
    repo.publish_initial()

    def non_terminating(c: Ctx) -> None:
        c.r.targets["targets"].delegations.roles["first"].terminating = False
        c.r.bump("targets")

    return [
        init_step(),
        Step("download only-in-second.txt: 'first' is terminating -> not found", "download",
             targets=["only-in-second.txt"], exit=1, md=top(first=1),
             checks=[not_requested("metadata/*second*")]),
        Step("download in-first.txt", "download", targets=["in-first.txt"], md=top(first=1),
             tgt={"in-first.txt": b"1\n"}),
        Step("download x.bin ('first' does not match, so does not terminate)", "download", targets=["x.bin"],
             md=top(first=1, third=1), tgt={"in-first.txt": b"1\n", "x.bin": b"3\n"}),
        Step("targets v2 makes 'first' non-terminating; only-in-second.txt found", "download",
             action=non_terminating, targets=["only-in-second.txt"], md=top(1, 2, 2, 2, first=1, second=1, third=1),
             tgt={"in-first.txt": b"1\n", "x.bin": b"3\n", "only-in-second.txt": b"2\n"}),
    ]


@scenario("feature")
def role_name_encoding(ctx: Ctx) -> list[Step]:
    """Delegated roles named '../evil' and 'with space/ü' (consistent snapshots off, so the URL
    is just the quoted name): metadata files ..%2Fevil.json and with%20space%2F%C3%BC.json in
    the metadata dir, nothing written outside it."""
    repo = ctx.new_repo(consistent=False)
    repo.delegate("targets", "../evil", paths=["evil/*"])
    repo.delegate("targets", "with space/ü", paths=["space/*"])
    repo.add_target("evil/x.txt", b"E\n", role="../evil")
    repo.add_target("space/y.txt", b"S\n", role="with space/ü")
    repo.publish_initial()
    return [
        init_step(),
        Step("download evil/x.txt and space/y.txt", "download", targets=["evil/x.txt", "space/y.txt"],
             md=top(**{"../evil": 1, "with space/ü": 1}), tgt={"evil/x.txt": b"E\n", "space/y.txt": b"S\n"},
             checks=[requested("metadata/../evil.json", "metadata/with space/ü.json")]),
    ]


@scenario("feature")
def root_rotation(ctx: Ctx) -> list[Step]:
    """Root 1 (1-of-1) -> 2 (new keys, 2-of-3, signed by the old key and two new ones) -> 3 and
    4 (2-of-3, signed by two of the new keys only), walked one and then two versions at a
    time; a root 5 signed by one of three keys is rejected."""
    repo = ctx.new_repo()
    repo.add_target("file1.txt", T1)
    repo.publish_initial()

    def v2(c: Ctx) -> None:
        c.vars["old_root_signer"] = c.r.signers["root"][0]
        new = [new_signer("ed25519") for _ in range(3)]

        def change(root: Root) -> None:
            for keyid in list(root.roles["root"].keyids):
                root.revoke_key(keyid, "root")
            for s in new:
                root.add_key(s.public_key, "root")
            root.roles["root"].threshold = 2

        c.r.signers["root"] = new
        old = c.vars["old_root_signer"]
        c.r.new_root(change, signers=[old, new[0], new[1]])

    def v3_v4(c: Ctx) -> None:
        c.r.new_root(signers=c.r.signers["root"][1:3])
        c.r.new_root(signers=[c.r.signers["root"][0], c.r.signers["root"][2]])

    def v5_one_sig(c: Ctx) -> None:
        c.r.new_root(signers=c.r.signers["root"][:1])

    return [
        init_step(),
        Step("refresh", "refresh", md=top()),
        Step("root v2 (2-of-3 new keys)", "refresh", action=v2, md=top(root=2),
             checks=[requested("metadata/2.root.json", "metadata/3.root.json")]),
        Step("roots v3 and v4 (signed by 2 of the 3 new keys)", "refresh", action=v3_v4, md=top(root=4)),
        Step("root v5 signed by 1 of 3 keys: rejected", "refresh", action=v5_one_sig, exit=1, unchanged=True,
             md=top(root=4)),
        Step("download file1.txt with root v4 trusted", "download", action=lambda c: c.server.files.pop(
            "metadata/5.root.json"), targets=["file1.txt"], md=top(root=4), tgt={"file1.txt": T1}),
    ]


@scenario("feature")
def timestamp_key_rotation_ffwd(ctx: Ctx) -> list[Step]:
    """Fast-forward recovery: an attacker holding the timestamp key made the client accept
    timestamp v1000; the repository's v2 is then a rollback. Root v2 rotates the timestamp key
    and the repository publishes timestamp v2 with the new key: the client must accept it
    (TUF 5.3.11) and end with timestamp.json version 2."""
    repo = ctx.new_repo()
    repo.add_target("file1.txt", T1)
    repo.publish_initial()

    def attacker_v1000(c: Ctx) -> None:
        c.r.timestamp.version = 1000
        c.r.publish_timestamp()

    def repo_v2_old_key(c: Ctx) -> None:
        c.r.timestamp.version = 2
        c.r.publish_timestamp()

    def rotate(c: Ctx) -> None:
        c.r.replace_keys("timestamp")
        c.r.new_root()
        c.r.timestamp.version = 2
        c.r.publish_timestamp()

    return [
        init_step(),
        Step("refresh", "refresh", md=top()),
        Step("attacker's timestamp v1000 (old key) accepted", "refresh", action=attacker_v1000, md=top(ts=1000)),
        Step("repository's timestamp v2: rollback, rejected", "refresh", action=repo_v2_old_key, exit=1,
             unchanged=True, md=top(ts=1000)),
        Step("root v2 rotates the timestamp key, timestamp v2 (new key): recovered", "refresh", action=rotate,
             md=top(root=2, ts=2)),
        Step("download file1.txt after recovery", "download", targets=["file1.txt"], md=top(root=2, ts=2),
             tgt={"file1.txt": T1}),
    ]


@scenario("feature")
def snapshot_key_rotation_ffwd(ctx: Ctx) -> list[Step]:
    """Fast-forward recovery for snapshot: an attacker with the timestamp and snapshot keys made
    the client accept snapshot v1000 (and timestamp v1000); root v2 rotates both keys, the
    repository publishes snapshot v2 and timestamp v2: the client must recover."""
    repo = ctx.new_repo()
    repo.add_target("file1.txt", T1)
    repo.publish_initial()

    def attacker(c: Ctx) -> None:
        c.r.snapshot.version = 1000
        c.r.publish_snapshot()
        c.r.timestamp.version = 1000
        c.r.publish_timestamp()

    def rotate(c: Ctx) -> None:
        c.r.replace_keys("timestamp")
        c.r.replace_keys("snapshot")
        c.r.new_root()
        c.r.snapshot.version = 2
        c.r.publish_snapshot()
        c.r.timestamp.version = 2
        c.r.publish_timestamp()

    return [
        init_step(),
        Step("refresh", "refresh", md=top()),
        Step("attacker's snapshot v1000 + timestamp v1000 accepted", "refresh", action=attacker,
             md=top(ts=1000, sn=1000)),
        Step("root v2 rotates timestamp and snapshot keys; v2 of both: recovered", "refresh", action=rotate,
             md=top(root=2, ts=2, sn=2)),
    ]


@scenario("feature", python_differences={
    "root v2 rotates only the snapshot key; snapshot v2, timestamp v2 (same key)": (
        "TUF 5.3.11 says: if the timestamp and/or snapshot keys were rotated, delete the trusted "
        "timestamp and snapshot (rampart-core does). python-tuf has no explicit deletion: a local "
        "file is dropped only when it no longer verifies with the new root, so the local "
        "timestamp v1000 (timestamp key unchanged) still applies and timestamp v2 is refused: "
        "'BadVersionNumberError: New timestamp version 2 must be >= 1000'. The spec text is "
        "known to be ambiguous here (theupdateframework/specification#71, #150); python-tuf's "
        "reading is that the repository must rotate the key of every role it wants clients to "
        "forget."),
})
def snapshot_only_key_rotation_ffwd(ctx: Ctx) -> list[Step]:
    """As snapshot-key-rotation-ffwd, but root v2 rotates only the snapshot key while the
    repository goes back to timestamp v2 (same timestamp key). TUF 5.3.11 deletes the trusted
    timestamp and snapshot whenever either key set changed, so v2 must be accepted."""
    repo = ctx.new_repo()
    repo.publish_initial()

    def attacker(c: Ctx) -> None:
        c.r.snapshot.version = 1000
        c.r.publish_snapshot()
        c.r.timestamp.version = 1000
        c.r.publish_timestamp()

    def rotate(c: Ctx) -> None:
        c.r.replace_keys("snapshot")
        c.r.new_root()
        c.r.snapshot.version = 2
        c.r.publish_snapshot()
        c.r.timestamp.version = 2
        c.r.publish_timestamp()

    return [
        init_step(),
        Step("refresh", "refresh", md=top()),
        Step("attacker's snapshot v1000 + timestamp v1000 accepted", "refresh", action=attacker,
             md=top(ts=1000, sn=1000)),
        Step("root v2 rotates only the snapshot key; snapshot v2, timestamp v2 (same key)", "refresh",
             action=rotate, md=top(root=2, ts=2, sn=2)),
    ]


@scenario("feature")
def download_cached(ctx: Ctx) -> list[Step]:
    """A target already in the target dir with the signed length and hashes is not downloaded
    again (no request for it); a corrupted local copy is downloaded again."""
    repo = ctx.new_repo()
    tf = repo.add_target("file1.txt", T1)
    repo.publish_initial()
    urls = repo.target_url_paths(tf)

    def corrupt(c: Ctx) -> None:
        (c.tgt / "file1.txt").write_bytes(b"target onE\n")

    return [
        init_step(),
        Step("download file1.txt", "download", targets=["file1.txt"], md=top(), tgt={"file1.txt": T1},
             checks=[requested_one_of(*urls)]),
        Step("download file1.txt again: not fetched", "download", targets=["file1.txt"], md=top(),
             tgt={"file1.txt": T1}, checks=[not_requested("targets/*")]),
        Step("local copy corrupted: fetched again", "download", action=corrupt, targets=["file1.txt"], md=top(),
             tgt={"file1.txt": T1}, checks=[requested_one_of(*urls)]),
    ]


@scenario("feature")
def target_names_like_temp_files(ctx: Ctx) -> list[Step]:
    """Targets whose quoted names look like a client's temporary files ('a.txt.part' next to
    'a.txt', '.a.txt.tmp'): each lives at T/quote(path) and survives downloading the others;
    a second download of all three fetches nothing."""
    repo = ctx.new_repo()
    names = {"a.txt.part": b"I am a target called a.txt.part\n", "a.txt": b"I am a.txt\n",
             ".a.txt.tmp": b"dot tmp\n"}
    for path, data in names.items():
        repo.add_target(path, data)
    repo.publish_initial()
    return [
        init_step(),
        Step("download a.txt.part", "download", targets=["a.txt.part"], md=top(),
             tgt={"a.txt.part": names["a.txt.part"]}),
        Step("download a.txt and .a.txt.tmp", "download", targets=["a.txt", ".a.txt.tmp"], md=top(), tgt=names),
        Step("download all three again: nothing fetched", "download", targets=list(names), md=top(), tgt=names,
             checks=[not_requested("targets/*")]),
    ]


@scenario("feature")
def target_update(ctx: Ctx) -> list[Step]:
    """A target changes legitimately (new content, hashes and length in targets v2): the new
    content replaces the old file. Then the server swaps in other content without new
    metadata: the client may use its verified copy or fail, but must never store it."""
    repo = ctx.new_repo()
    repo.add_target("file1.txt", T1)
    repo.publish_initial()
    new = b"target one, second edition\n"

    def update(c: Ctx) -> None:
        c.r.add_target("file1.txt", new)
        c.r.bump("targets")

    def swap(c: Ctx) -> None:
        for url in c.r.target_url_paths(c.r.targets["targets"].targets["file1.txt"]):
            c.server.files[url] = b"malicious contents, same name\n"
        c.r.bump("targets")

    return [
        init_step(),
        Step("download file1.txt", "download", targets=["file1.txt"], md=top(), tgt={"file1.txt": T1}),
        Step("targets v2 changes file1.txt; download", "download", action=update, targets=["file1.txt"],
             md=top(1, 2, 2, 2), tgt={"file1.txt": new}),
        Step("server swaps the content, metadata unchanged (targets v3); download", "download", action=swap,
             targets=["file1.txt"], exit=None, md=top(1, 3, 3, 3), tgt={"file1.txt": new}),
    ]


@scenario("feature")
def targets_key_rotation(ctx: Ctx) -> list[Step]:
    """Root v2 rotates the targets key and targets v2 is signed with the new key: the local
    targets v1 no longer verifies and v2 is fetched. A targets v3 signed with the old key is
    then refused."""
    repo = ctx.new_repo()
    repo.add_target("file1.txt", T1)
    repo.publish_initial()

    def rotate(c: Ctx) -> None:
        c.vars["old"] = c.r.signers["targets"]
        c.r.replace_keys("targets")
        c.r.new_root()
        c.r.bump("targets")

    def old_key(c: Ctx) -> None:
        c.r.targets["targets"].version += 1
        c.r.publish_targets(signers=c.vars["old"])
        c.r.bump()

    return [
        init_step(),
        Step("refresh", "refresh", md=top()),
        Step("root v2 rotates the targets key; targets v2 (new key)", "download", action=rotate,
             targets=["file1.txt"], md=top(2, 2, 2, 2), tgt={"file1.txt": T1}),
        Step("targets v3 signed with the old key", "refresh", action=old_key, exit=1, md=top(2, 3, 3, 2)),
    ]


@scenario("feature")
def timestamp_equal_version(ctx: Ctx) -> list[Step]:
    """The server offers a different, validly signed timestamp with the version already
    trusted: nothing new, the trusted copy is kept and the refresh succeeds (python-tuf:
    EqualVersionNumberError is not an error)."""
    repo = ctx.new_repo()
    repo.publish_initial()

    def same_version(c: Ctx) -> None:
        c.r.timestamp.expires = datetime(2098, 1, 1, tzinfo=timezone.utc)
        c.r.publish_timestamp()

    return [
        init_step(),
        Step("refresh", "refresh", md=top()),
        Step("different timestamp v1", "refresh", action=same_version, unchanged=True, md=top()),
    ]


@scenario("feature")
def delegation_cycle_and_limit(ctx: Ctx) -> list[Step]:
    """A delegation cycle (c1 -> c2 -> c1) ends the search (target not found, no hang); a chain
    of 40 delegations exceeds the limit of 32 visited roles (both clients' default), so a target
    at its end is not found; one at depth 5 is."""
    repo = ctx.new_repo()
    repo.delegate("targets", "c1", paths=["cycle/*"])
    repo.delegate("c1", "c2", paths=["cycle/*"])
    repo.delegate("c2", "c1", paths=["cycle/*"])
    prev = "targets"
    for i in range(1, 41):
        repo.delegate(prev, f"d{i}", paths=["chain/*"])
        prev = f"d{i}"
    repo.add_target("chain/5.txt", b"5\n", role="d5")
    repo.add_target("chain/40.txt", b"40\n", role="d40")
    repo.publish_initial()
    chain5 = {f"d{i}": 1 for i in range(1, 6)}
    return [
        init_step(),
        Step("download cycle/x.txt (c1 -> c2 -> c1)", "download", targets=["cycle/x.txt"], exit=1,
             md=top(c1=1, c2=1)),
        Step("download chain/5.txt (depth 5)", "download", targets=["chain/5.txt"], md=top(c1=1, c2=1, **chain5),
             tgt={"chain/5.txt": b"5\n"}),
        Step("download chain/40.txt (depth 40 > 32 roles)", "download", targets=["chain/40.txt"], exit=1,
             md=None, checks=[not_requested("metadata/1.d40.json")]),
    ]


@scenario("attack")
def delegation_key_confusion(ctx: Ctx) -> list[Step]:
    """Key confusion between delegators: parent-a delegates 'release' for a/* to key A,
    parent-b delegates 'release' for b/* to key B; 'release' is signed by key A only and also
    lists b/brakes.txt. Once 'release' is trusted through parent-a (a/app.txt), a lookup of
    b/brakes.txt through parent-b must verify it against key B and refuse it. (Rampart before
    issue 11 reused the role trusted through parent-a; python-tuf 7.0.1 refuses it too.)"""
    repo = ctx.new_repo()
    repo.delegate("targets", "parent-a", paths=["*/*"])
    repo.delegate("targets", "parent-b", paths=["*/*"])
    repo.delegate("parent-a", "release", paths=["a/*"])
    key_b = new_signer(repo.keytype)
    b = repo.targets["parent-b"]
    b.delegations = Delegations(keys={key_b.public_key.keyid: key_b.public_key}, roles={
        "release": DelegatedRole(name="release", keyids=[key_b.public_key.keyid], threshold=1,
                                 terminating=False, paths=["b/*"]),
    })
    repo.add_target("a/app.txt", b"A\n", role="release")
    repo.add_target("b/brakes.txt", b"EVIL\n", role="release")
    repo.publish_initial()
    roles = {"parent-a": 1, "parent-b": 1, "release": 1}
    return [
        init_step(),
        Step("download a/app.txt then b/brakes.txt in one run: b/brakes.txt refused", "download",
             targets=["a/app.txt", "b/brakes.txt"], exit=1, md=top(**roles),
             tgt={"a/app.txt": b"A\n"}),
        Step("download b/brakes.txt alone (release read from local storage): refused", "download",
             targets=["b/brakes.txt"], exit=1, unchanged=True),
    ]


def status(code: int) -> Callable[[BaseHTTPRequestHandler], None]:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_error(code)

    return respond


@scenario("feature")
def http_status(ctx: Ctx) -> list[Step]:
    """403 for the next root means "no newer root" (like 404); 500 for it, or 404 for the
    snapshot the timestamp names, fails the refresh without changing anything."""
    repo = ctx.new_repo()
    repo.publish_initial()

    def snapshot_404(c: Ctx) -> None:
        c.server.files.pop("metadata/2.root.json")
        c.r.bump()
        c.server.files.pop("metadata/2.snapshot.json")

    return [
        init_step(),
        Step("2.root.json answers 403", "refresh", action=lambda c: c.server.files.__setitem__(
            "metadata/2.root.json", status(403)), md=top()),
        Step("2.root.json answers 500", "refresh", action=lambda c: c.server.files.__setitem__(
            "metadata/2.root.json", status(500)), exit=1, unchanged=True, md=top()),
        Step("snapshot v2 named by timestamp v2 is 404", "refresh", action=snapshot_404, exit=1, md=top(ts=2)),
    ]


@scenario("feature")
def local_state_damaged(ctx: Ctx) -> list[Step]:
    """Trusted files damaged on disk (timestamp.json truncated, snapshot.json and targets.json
    garbage) are not trusted and are fetched again; an empty target (length 0) is downloaded
    and then found in the target dir."""
    repo = ctx.new_repo()
    repo.add_target("empty", b"")
    repo.publish_initial()

    def damage(c: Ctx) -> None:
        ts = c.md / "timestamp.json"
        ts.write_bytes(ts.read_bytes()[:40])
        (c.md / "snapshot.json").write_bytes(b"garbage")
        (c.md / "targets.json").write_bytes(b"{}")

    return [
        init_step(),
        Step("download the empty target", "download", targets=["empty"], md=top(), tgt={"empty": b""}),
        Step("local timestamp, snapshot, targets damaged; download again", "download", action=damage,
             targets=["empty"], md=top(), tgt={"empty": b""}, checks=[not_requested("targets/*")]),
    ]


@scenario("feature")
def download_order(ctx: Ctx) -> list[Step]:
    """Targets are downloaded in order and the command stops at the first failure (an unknown
    target); options given in another order; -v accepted."""
    repo = ctx.new_repo()
    repo.add_target("file1.txt", T1)
    repo.add_target("file2.txt", T2)
    repo.publish_initial()
    return [
        init_step(),
        Step("download file1.txt, missing.txt, file2.txt: stops at missing.txt", "download",
             targets=["file1.txt", "missing.txt", "file2.txt"], exit=1, md=top(), tgt={"file1.txt": T1},
             verbose=True),
        Step("download file2.txt", "download", targets=["file2.txt"], md=top(),
             tgt={"file1.txt": T1, "file2.txt": T2}),
    ]


UNKNOWN_KEY_DIFF = (
    "python-tuf cannot load a root that lists a key of an unknown type: securesystemslib 1.6 "
    "Key.from_dict raises ValueError('Unsupported public key x-unknown-type/x-unknown-scheme'), "
    "which Metadata.from_bytes reports as 'DeserializationError: Failed to deserialize JSON'. "
    "The expectation follows TUF (keys a client cannot use are ignored, the threshold is "
    "counted over the others), as rampart-core does."
)


def with_unknown_key(repo: Repo, role: str, threshold: int) -> SSlibKey:
    key = unknown_key()
    repo.root.add_key(key, role)
    repo.root.roles[role].threshold = threshold
    return key


@scenario("feature", python_differences={
    "refresh (threshold 1 met by the ed25519 key)": UNKNOWN_KEY_DIFF,
    "download file1.txt": UNKNOWN_KEY_DIFF,
})
def unknown_keytype_threshold_met(ctx: Ctx) -> list[Step]:
    """Root v1 lists, for timestamp and snapshot, an ed25519 key and a key of an unknown type
    (with a bogus signature from it on the documents), threshold 1: the valid signature meets
    the threshold, refresh and download succeed."""
    repo = ctx.new_repo()
    repo.add_target("file1.txt", T1)
    ku = with_unknown_key(repo, "timestamp", 1)
    with_unknown_key(repo, "snapshot", 1)
    bogus = Signature(ku.keyid, "ab" * 64)
    repo.publish_root()
    repo.publish_targets()
    repo.publish_snapshot(extra_sigs=[bogus])
    repo.publish_timestamp(extra_sigs=[bogus])
    return [
        init_step(),
        Step("refresh (threshold 1 met by the ed25519 key)", "refresh", md=top()),
        Step("download file1.txt", "download", targets=["file1.txt"], md=top(), tgt={"file1.txt": T1}),
    ]


@scenario("feature", python_differences={
    "root v2 adds an unknown-type key to timestamp (threshold 1)": UNKNOWN_KEY_DIFF,
})
def unknown_keytype_added_by_rotation(ctx: Ctx) -> list[Step]:
    """Root v2 adds a key of an unknown type to the timestamp role (threshold stays 1): the
    client accepts root v2 and goes on with the ed25519 signature."""
    repo = ctx.new_repo()
    repo.publish_initial()

    def rotate(c: Ctx) -> None:
        c.r.new_root(lambda root: with_unknown_key(c.r, "timestamp", 1) and None)
        c.r.bump()

    return [
        init_step(),
        Step("refresh", "refresh", md=top()),
        Step("root v2 adds an unknown-type key to timestamp (threshold 1)", "refresh", action=rotate,
             md=top(root=2, ts=2, sn=2)),
    ]


# -- attacks --------------------------------------------------------------------------------


@scenario("attack")
def unknown_keytype_needed(ctx: Ctx) -> list[Step]:
    """Root v1 lists an ed25519 key and an unknown-type key for timestamp with threshold 2:
    only one usable signature, so the timestamp is rejected."""
    repo = ctx.new_repo()
    ku = with_unknown_key(repo, "timestamp", 2)
    repo.publish_root()
    repo.publish_targets()
    repo.publish_snapshot()
    repo.publish_timestamp(extra_sigs=[Signature(ku.keyid, "ab" * 64)])
    return [init_step(), Step("refresh (threshold 2, one usable key)", "refresh", exit=1, md={"root": 1},
                              unchanged=True)]


@scenario("attack")
def unknown_hash_algorithm(ctx: Ctx) -> list[Step]:
    """Targets listing a hash algorithm the client cannot compute ('x-unknown-hash'), alone or
    next to a correct sha256: refused. Every listed hash must be checked (Uptane 5.4.4.2;
    python-tuf and rampart-core both refuse rather than skip), otherwise an attacker could
    make a client skip verification by listing only algorithms it ignores."""
    repo = ctx.new_repo()
    tf = repo.add_target("file1.txt", T1, hashes=("sha256",))
    tf.hashes["x-unknown-hash"] = "00" * 32
    tf2 = repo.add_target("file2.txt", T2, hashes=("sha256",))
    tf2.hashes = {"x-unknown-hash": "00" * 32}
    for t in (tf, tf2):
        for url in repo.target_url_paths(t):
            repo.server.files[url] = repo.target_data[t.path]
    repo.publish_initial()
    return [
        init_step(),
        Step("download file1.txt (sha256 + unknown)", "download", targets=["file1.txt"], exit=1, md=top(), tgt={}),
        Step("download file2.txt (unknown only)", "download", targets=["file2.txt"], exit=1, md=top(), tgt={}),
    ]


def expiry_faketime(ctx: Ctx, role: str) -> list[Step]:
    repo = ctx.new_repo(expires={role: SOON})
    repo.add_target("file1.txt", T1)
    repo.publish_initial()

    def renew(c: Ctx) -> None:
        if role == "root":
            c.r.new_root(lambda root: setattr(root, "expires", FAR))
        elif role == "timestamp":
            c.r.timestamp.expires = FAR
            c.r.bump(snapshot=False)
        elif role == "snapshot":
            c.r.snapshot.expires = FAR
            c.r.bump()
        else:
            c.r.targets["targets"].expires = FAR
            c.r.bump("targets")

    renewed = {"root": top(root=2), "timestamp": top(ts=2), "snapshot": top(ts=2, sn=2),
               "targets": top(ts=2, sn=2, tg=2)}[role]
    return [
        init_step(),
        Step("refresh (now)", "refresh", md=top()),
        Step(f"refresh at {BEFORE_SOON} (before {role} expiry)", "refresh", faketime=BEFORE_SOON, unchanged=True,
             md=top()),
        Step(f"refresh at {AFTER_SOON} ({role} expired)", "refresh", faketime=AFTER_SOON, exit=1, unchanged=True,
             md=top()),
        Step(f"download at {AFTER_SOON} ({role} expired)", "download", targets=["file1.txt"], faketime=AFTER_SOON,
             exit=1, unchanged=True, md=top()),
        Step(f"repository renews {role}; refresh at {AFTER_SOON}", "refresh", action=renew, faketime=AFTER_SOON,
             md=renewed),
    ]


@scenario("attack")
def expired_root_faketime(ctx: Ctx) -> list[Step]:
    """Root expires in 2050; refresh under faketime 2040 succeeds, under 2060 fails (final root
    expired) and changes nothing; a renewed root v2 is accepted."""
    return expiry_faketime(ctx, "root")


@scenario("attack")
def expired_timestamp_faketime(ctx: Ctx) -> list[Step]:
    """Timestamp expires in 2050: refresh and download under faketime 2060 fail and change
    nothing; a renewed timestamp v2 is accepted at 2060 (the expired local copy only served for
    rollback protection)."""
    return expiry_faketime(ctx, "timestamp")


@scenario("attack")
def expired_snapshot_faketime(ctx: Ctx) -> list[Step]:
    """Snapshot expires in 2050: refresh and download under faketime 2060 fail and change
    nothing; renewed snapshot v2 accepted."""
    return expiry_faketime(ctx, "snapshot")


@scenario("attack")
def expired_targets_faketime(ctx: Ctx) -> list[Step]:
    """Top-level targets expires in 2050: refresh and download under faketime 2060 fail and
    change nothing; renewed targets v2 accepted."""
    return expiry_faketime(ctx, "targets")


@scenario("attack")
def expired_delegated_faketime(ctx: Ctx) -> list[Step]:
    """A delegated role expiring in 2050: download through it under faketime 2060 fails."""
    repo = ctx.new_repo()
    repo.delegate("targets", "deleg", paths=["*"], expires=SOON)
    repo.add_target("file1.txt", T1, role="deleg")
    repo.publish_initial()
    return [
        init_step(),
        Step("download at 2040", "download", targets=["file1.txt"], faketime=BEFORE_SOON, md=top(deleg=1),
             tgt={"file1.txt": T1}),
        Step("download at 2060 (deleg expired)", "download", targets=["file1.txt"], faketime=AFTER_SOON, exit=1,
             unchanged=True, md=top(deleg=1)),
    ]


@scenario("attack")
def expired_written(ctx: Ctx) -> list[Step]:
    """New versions that are already expired when published (expires 2020), no faketime: a
    timestamp, a snapshot, a targets role and a root. Each is refused; what the workflow
    accepted before reaching it (the timestamp ahead of an expired snapshot, a root before the
    final-root expiry check, which TUF 5.3.8 persists) is kept."""
    repo = ctx.new_repo()
    repo.publish_initial()

    def ts(c: Ctx) -> None:
        c.r.timestamp.expires = PAST
        c.r.bump(snapshot=False)

    def sn(c: Ctx) -> None:
        c.r.timestamp.expires = FAR
        c.r.snapshot.expires = PAST
        c.r.bump()

    def tg(c: Ctx) -> None:
        c.r.snapshot.expires = FAR
        c.r.targets["targets"].expires = PAST
        c.r.bump("targets")

    def root(c: Ctx) -> None:
        c.r.targets["targets"].expires = FAR
        c.r.bump("targets")
        c.r.new_root(lambda r: setattr(r, "expires", PAST))

    return [
        init_step(),
        Step("refresh", "refresh", md=top()),
        Step("timestamp v2 expired", "refresh", action=ts, exit=1, unchanged=True, md=top()),
        Step("snapshot v2 expired (timestamp v3 valid)", "refresh", action=sn, exit=1, md=top(ts=3)),
        Step("targets v2 expired (snapshot v3, timestamp v4 valid)", "refresh", action=tg, exit=1,
             md=top(ts=4, sn=3)),
        Step("root v2 expired (root v2 persisted per TUF 5.3.8, nothing else)", "refresh", action=root, exit=1,
             md=top(root=2, ts=4, sn=3)),
    ]


@scenario("attack")
def rollback_timestamp(ctx: Ctx) -> list[Step]:
    """The server replays timestamp v1 after the client saw v2."""
    repo = ctx.new_repo()
    repo.publish_initial()

    def replay(c: Ctx) -> None:
        c.server.files["metadata/timestamp.json"] = c.r.published[("timestamp", 1)][-1]

    return [
        init_step(),
        Step("timestamp v2", "refresh", action=lambda c: c.r.bump(snapshot=False), md=top(ts=2)),
        Step("replayed timestamp v1", "refresh", action=replay, exit=1, unchanged=True, md=top(ts=2)),
    ]


@scenario("attack")
def rollback_snapshot(ctx: Ctx) -> list[Step]:
    """Snapshot rollback: a (validly signed) timestamp v3 listing snapshot v1 after snapshot v2
    was trusted; then a timestamp v4 listing snapshot v4 while 4.snapshot.json holds the old
    snapshot v2 bytes (no hashes in timestamp, so only the version check can catch it)."""
    repo = ctx.new_repo()
    repo.publish_initial()

    def ts_lists_old(c: Ctx) -> None:
        c.r.timestamp.version = 3
        c.r.timestamp.snapshot_meta = MetaFile(1)
        c.r.publish_timestamp()

    def old_bytes(c: Ctx) -> None:
        c.r.timestamp.version = 4
        c.r.timestamp.snapshot_meta = MetaFile(4)
        c.r.publish_timestamp()
        c.server.files["metadata/4.snapshot.json"] = c.r.published[("snapshot", 2)][-1]

    return [
        init_step(),
        Step("snapshot v2", "refresh", action=lambda c: c.r.bump(), md=top(ts=2, sn=2)),
        Step("timestamp v3 lists snapshot v1", "refresh", action=ts_lists_old, exit=1, unchanged=True,
             md=top(ts=2, sn=2)),
        Step("timestamp v4 lists snapshot v4, server has snapshot v2 bytes", "refresh", action=old_bytes, exit=1,
             md=top(ts=4, sn=2)),
    ]


@scenario("attack")
def rollback_targets(ctx: Ctx) -> list[Step]:
    """Targets rollback: a snapshot v3 listing targets v1 after targets v2 was trusted; then a
    snapshot v4 listing targets v4 while 4.targets.json holds the old targets v2 bytes."""
    repo = ctx.new_repo()
    repo.publish_initial()

    def sn_lists_old(c: Ctx) -> None:
        c.r.snapshot.meta["targets.json"] = MetaFile(1)
        c.r.snapshot.version = 3
        c.r.publish_snapshot()
        c.r.timestamp.version = 3
        c.r.publish_timestamp()

    def old_bytes(c: Ctx) -> None:
        c.r.snapshot.meta["targets.json"] = MetaFile(4)
        c.r.snapshot.version = 4
        c.r.publish_snapshot()
        c.r.timestamp.version = 4
        c.r.publish_timestamp()
        c.server.files["metadata/4.targets.json"] = c.r.published[("targets", 2)][-1]

    return [
        init_step(),
        Step("targets v2", "refresh", action=lambda c: c.r.bump("targets"), md=top(ts=2, sn=2, tg=2)),
        Step("snapshot v3 lists targets v1", "refresh", action=sn_lists_old, exit=1, md=top(ts=3, sn=2, tg=2)),
        Step("snapshot v4 lists targets v4, server has targets v2 bytes", "refresh", action=old_bytes, exit=1,
             md=top(ts=4, sn=4, tg=2)),
    ]


@scenario("attack")
def rollback_delegated_meta(ctx: Ctx) -> list[Step]:
    """Snapshot meta rollback of a delegated role: after snapshot v2 listed deleg.json v2, a
    snapshot v3 lists deleg.json v1; then a snapshot v4 that drops deleg.json altogether."""
    repo = ctx.new_repo()
    repo.delegate("targets", "deleg", paths=["*"])
    repo.add_target("file1.txt", T1, role="deleg")
    repo.publish_initial()

    def v2(c: Ctx) -> None:
        c.r.add_target("file2.txt", T2, role="deleg")
        c.r.bump("deleg")

    def lists_old(c: Ctx) -> None:
        c.r.snapshot.meta["deleg.json"] = MetaFile(1)
        c.r.bump()

    def drops(c: Ctx) -> None:
        del c.r.snapshot.meta["deleg.json"]
        c.r.bump()

    return [
        init_step(),
        Step("deleg v2; download file2.txt", "download", action=v2, targets=["file2.txt"],
             md=top(ts=2, sn=2, deleg=2), tgt={"file2.txt": T2}),
        Step("snapshot v3 lists deleg.json v1", "refresh", action=lists_old, exit=1, md=top(ts=3, sn=2, deleg=2)),
        Step("snapshot v4 without deleg.json", "refresh", action=drops, exit=1, md=top(ts=4, sn=2, deleg=2)),
    ]


@scenario("attack")
def hash_mismatch_target(ctx: Ctx) -> list[Step]:
    """The server's copy of a target has the signed length but other content."""
    repo = ctx.new_repo()
    tf = repo.add_target("file1.txt", T1)
    repo.publish_initial()

    def tamper(c: Ctx) -> None:
        for url in c.r.target_url_paths(tf):
            c.server.files[url] = b"target onE\n"

    return [
        init_step(),
        Step("download file1.txt with altered content", "download", action=tamper, targets=["file1.txt"], exit=1,
             md=top(), tgt={}),
    ]


@scenario("attack")
def hash_mismatch_metadata(ctx: Ctx) -> list[Step]:
    """Timestamp lists snapshot's length and hashes, snapshot lists targets' length and hashes;
    the server's 2.snapshot.json (then 2.targets.json) is another, validly signed document of
    the same version and length that does not match those hashes."""
    repo = ctx.new_repo(ts_meta=(True, ["sha256", "sha512"]), sn_meta=(True, ["sha256"]))
    repo.publish_initial()

    def snapshot(c: Ctx) -> None:
        c.r.bump()
        evil = copy.deepcopy(c.r.snapshot)
        evil.expires = datetime(2098, 1, 1, tzinfo=timezone.utc)
        c.server.files["metadata/2.snapshot.json"] = c.r.serialize(evil, c.r.signers["snapshot"])

    def targets(c: Ctx) -> None:
        c.r.bump("targets")
        evil = copy.deepcopy(c.r.targets["targets"])
        evil.expires = datetime(2098, 1, 1, tzinfo=timezone.utc)
        c.server.files["metadata/2.targets.json"] = c.r.serialize(evil, c.r.signers["targets"])

    return [
        init_step(),
        Step("refresh", "refresh", md=top()),
        Step("2.snapshot.json does not match timestamp's hashes", "refresh", action=snapshot, exit=1,
             md=top(ts=2)),
        Step("2.targets.json does not match snapshot's hashes", "refresh", action=targets, exit=1,
             md=top(ts=3, sn=3)),
    ]


@scenario("attack")
def threshold(ctx: Ctx) -> list[Step]:
    """Every top-level role has two keys and threshold 2. New versions signed by one key only
    are refused: root v2, timestamp v2, snapshot v2 (timestamp v3 fine), targets v2 (snapshot
    v3, timestamp v4 fine); and a timestamp carrying one key's signature twice."""
    repo = ctx.new_repo(nkeys={r: 2 for r in TOP}, thresholds={r: 2 for r in TOP})
    repo.publish_initial()

    def root(c: Ctx) -> None:
        c.r.new_root(signers=c.r.signers["root"][:1])

    def ts(c: Ctx) -> None:
        c.server.files.pop("metadata/2.root.json")
        c.r.root.version = 1
        c.r.timestamp.version += 1
        c.r.publish_timestamp(signers=c.r.signers["timestamp"][:1])

    def sn(c: Ctx) -> None:
        c.r.snapshot.version += 1
        c.r.publish_snapshot(signers=c.r.signers["snapshot"][:1])
        c.r.timestamp.version += 1
        c.r.publish_timestamp()

    def tg(c: Ctx) -> None:
        c.r.targets["targets"].version += 1
        c.r.publish_targets(signers=c.r.signers["targets"][:1])
        c.r.bump()

    def dup(c: Ctx) -> None:
        c.r.timestamp.version += 1
        signed = c.r.timestamp.to_dict()
        c.server.files["metadata/timestamp.json"] = sign_raw(signed, c.r.signers["timestamp"][:1], duplicate=True)

    return [
        init_step(),
        Step("refresh (2-of-2 everywhere)", "refresh", md=top()),
        Step("root v2 with 1/2 signatures", "refresh", action=root, exit=1, unchanged=True, md=top()),
        Step("timestamp v2 with 1/2 signatures", "refresh", action=ts, exit=1, unchanged=True, md=top()),
        Step("snapshot v2 with 1/2 signatures", "refresh", action=sn, exit=1, md=top(ts=3)),
        Step("targets v2 with 1/2 signatures", "refresh", action=tg, exit=1, md=top(ts=4, sn=3)),
        Step("timestamp v5 with one signature listed twice", "refresh", action=dup, exit=1, unchanged=True,
             md=top(ts=4, sn=3)),
    ]


@scenario("attack")
def root_chain_attacks(ctx: Ctx) -> list[Step]:
    """Bad root updates, each refused with nothing changed: 2.root.json holding version 3;
    root v2 signed only by its new key (not by the trusted root's key); root v2 signed only by
    the old key while its own threshold needs the new one."""
    repo = ctx.new_repo()
    repo.publish_initial()
    base = copy.deepcopy(repo.root)
    old = list(repo.signers["root"])

    def wrong_version(c: Ctx) -> None:
        r = copy.deepcopy(base)
        r.version = 3
        c.server.files["metadata/2.root.json"] = c.r.serialize(r, old)

    def new_root_with(signed_by: str) -> Callable[[Ctx], None]:
        def act(c: Ctx) -> None:
            new = new_signer("ed25519")
            r = copy.deepcopy(base)
            for keyid in list(r.roles["root"].keyids):
                r.revoke_key(keyid, "root")
            r.add_key(new.public_key, "root")
            r.version = 2
            c.server.files["metadata/2.root.json"] = c.r.serialize(r, [new] if signed_by == "new" else old)

        return act

    return [
        init_step(),
        Step("refresh", "refresh", md=top()),
        Step("2.root.json is version 3", "refresh", action=wrong_version, exit=1, unchanged=True, md=top()),
        Step("root v2 signed only by the new root key", "refresh", action=new_root_with("new"), exit=1,
             unchanged=True, md=top()),
        Step("root v2 signed only by the old root key", "refresh", action=new_root_with("old"), exit=1,
             unchanged=True, md=top()),
    ]


DUPLICATE_KEYS_DIFF = (
    "python-tuf counts signatures per key ID, so one key listed under two key IDs (and signing "
    "once per key ID) meets threshold 2. TUF requires a threshold of distinct keys; rampart-core "
    "counts distinct key material (tests/interop/make_fixtures.py documents the same case)."
)


@scenario("attack", python_differences={"timestamp v2: one key under two key IDs, threshold 2": DUPLICATE_KEYS_DIFF})
def duplicate_keys(ctx: Ctx) -> list[Step]:
    """Root v2 lists the timestamp key a second time under another key ID and sets threshold 2;
    a timestamp signed by that one key under both IDs must not meet the threshold."""
    repo = ctx.new_repo()
    repo.publish_initial()

    def dup(c: Ctx) -> None:
        signer = c.r.signers["timestamp"][0]
        pub = signer.public_key
        alias = SSlibKey(hashlib.sha256(b"alias" + pub.keyid.encode()).hexdigest(), pub.keytype, pub.scheme,
                         dict(pub.keyval))
        c.r.root.add_key(alias, "timestamp")
        c.r.root.roles["timestamp"].threshold = 2
        c.r.new_root()
        c.r.timestamp.version += 1
        payload = Metadata(c.r.timestamp).signed_bytes
        sig = signer.sign(payload)
        extra = Signature(alias.keyid, sig.signature)
        c.r.publish_timestamp(signers=[signer], extra_sigs=[extra])

    return [
        init_step(),
        Step("refresh", "refresh", md=top()),
        Step("timestamp v2: one key under two key IDs, threshold 2", "refresh", action=dup, exit=1,
             md=top(root=2)),
    ]


@scenario("attack")
def missing_metadata(ctx: Ctx) -> list[Step]:
    """Metadata that is not there: timestamp.json 404; snapshot without targets.json; a
    delegated role that snapshot does not list; a target shorter than its signed length."""
    repo = ctx.new_repo()
    repo.delegate("targets", "unlisted", paths=["u/*"])
    tf = repo.add_target("file1.txt", T1)
    repo.publish_root()
    repo.publish_targets()  # "unlisted" is never published nor listed in snapshot
    repo.publish_snapshot()
    repo.publish_timestamp()

    def no_ts(c: Ctx) -> None:
        c.vars["ts"] = c.server.files.pop("metadata/timestamp.json")

    def no_targets_entry(c: Ctx) -> None:
        c.server.files["metadata/timestamp.json"] = c.vars["ts"]
        del c.r.snapshot.meta["targets.json"]
        c.r.bump()

    def unlisted(c: Ctx) -> None:
        c.r.snapshot.meta["targets.json"] = MetaFile(1)
        c.r.bump()

    def short(c: Ctx) -> None:
        for url in c.r.target_url_paths(tf):
            c.server.files[url] = T1[:-1]

    return [
        init_step(),
        Step("timestamp.json 404", "refresh", action=no_ts, exit=1, unchanged=True, md={"root": 1}),
        Step("snapshot v2 without targets.json", "refresh", action=no_targets_entry, exit=1,
             md={"root": 1, "timestamp": 2, "snapshot": 2}),
        Step("delegated role not in snapshot v3", "download", action=unlisted, targets=["u/x.txt"], exit=1,
             md=top(ts=3, sn=3)),
        Step("target shorter than its signed length", "download", action=short, targets=["file1.txt"], exit=1,
             md=top(ts=3, sn=3), tgt={}),
    ]


@scenario("attack")
def role_name_traversal(ctx: Ctx) -> list[Step]:
    """Delegated role names that try to leave the metadata directory, with consistent
    snapshots: '../../escaped' and '../evil' must become ..%2F..%2Fescaped.json and
    ..%2Fevil.json inside it; nothing may be written elsewhere."""
    repo = ctx.new_repo()
    repo.delegate("targets", "../../escaped", paths=["x/*"])
    repo.delegate("targets", "../evil", paths=["*"])
    repo.add_target("file1.txt", T1, role="../evil")
    repo.publish_initial()
    return [
        init_step(),
        Step("download file1.txt via ../evil", "download", targets=["file1.txt"],
             md=top(**{"../evil": 1}), tgt={"file1.txt": T1},
             checks=[requested("metadata/1.../evil.json")]),
        Step("download x/missing.txt via ../../escaped (not listed)", "download", targets=["x/missing.txt"], exit=1,
             md=top(**{"../evil": 1, "../../escaped": 1}), checks=[requested("metadata/1.../../escaped.json")]),
    ]


@scenario("attack")
def role_name_dots(ctx: Ctx) -> list[Step]:
    """Delegated roles named '.' and '..': the metadata files are quote(name, '') + '.json', i.e.
    '..json' and '...json', inside the metadata dir."""
    repo = ctx.new_repo(consistent=False)
    repo.delegate("targets", ".", paths=["d1/*"])
    repo.delegate("targets", "..", paths=["d2/*"])
    repo.add_target("d1/x.txt", b"1\n", role=".")
    repo.add_target("d2/y.txt", b"2\n", role="..")
    repo.publish_initial()
    return [
        init_step(),
        Step("download via roles '.' and '..'", "download", targets=["d1/x.txt", "d2/y.txt"],
             md=top(**{".": 1, "..": 1}), tgt={"d1/x.txt": b"1\n", "d2/y.txt": b"2\n"}),
    ]


@scenario("attack")
def target_path_traversal(ctx: Ctx) -> list[Step]:
    """Target paths that try to leave the target dir: '../escape.txt' must be stored as
    T/..%2Fescape.txt; for the target '..' (quote() keeps it, and T/.. is the parent directory)
    the client may refuse or store it under an escaped name, but must write nothing outside T."""
    repo = ctx.new_repo()
    repo.add_target("../escape.txt", b"escape\n")
    repo.add_target("..", b"dotdot\n")
    repo.publish_initial()
    return [
        init_step(),
        Step("download ../escape.txt", "download", targets=["../escape.txt"], md=top(),
             tgt={"../escape.txt": b"escape\n"}),
        Step("download '..'", "download", targets=[".."], exit=None, md=top(), tgt_any=True),
    ]


@scenario("attack")
def endless_data(ctx: Ctx) -> list[Step]:
    """A 10 MiB timestamp.json (the real one padded with spaces: valid JSON, valid signature),
    with and without Content-Length; the client must give up without reading it all. A 10 MiB
    snapshot when timestamp lists no length (default limit 2 MB in both clients)."""
    repo = ctx.new_repo()
    repo.publish_initial()
    total = 10 * MIB

    def big_ts(content_length: bool) -> Callable[[Ctx], None]:
        def act(c: Ctx) -> None:
            c.r.timestamp.version += 1
            body = c.r.publish_timestamp()
            c.server.files["metadata/timestamp.json"] = oversized(
                body, total, content_length=content_length, key="metadata/timestamp.json", server=c.server)

        return act

    def big_sn(c: Ctx) -> None:
        c.r.snapshot.version += 1
        body = c.r.publish_snapshot()
        assert c.r.snapshot.version == 2
        c.server.files["metadata/2.snapshot.json"] = oversized(
            body, total, content_length=False, key="metadata/2.snapshot.json", server=c.server)
        c.r.timestamp.version += 1
        c.r.publish_timestamp()

    return [
        init_step(),
        Step("refresh", "refresh", md=top()),
        Step("10 MiB timestamp.json with Content-Length", "refresh", action=big_ts(True), exit=1, unchanged=True,
             md=top(), checks=[partial_read("metadata/timestamp.json", total)]),
        Step("10 MiB timestamp.json without Content-Length", "refresh", action=big_ts(False), exit=1,
             unchanged=True, md=top(), checks=[partial_read("metadata/timestamp.json", total)]),
        Step("10 MiB snapshot (no length in timestamp)", "refresh", action=big_sn, exit=1, md=top(ts=4),
             checks=[partial_read("metadata/2.snapshot.json", total)]),
    ]


@scenario("attack")
def endless_target(ctx: Ctx) -> list[Step]:
    """The server sends a target longer than its signed length (signed bytes first, then 10 MiB
    more), with and without Content-Length: rejected, nothing stored under the target's name."""
    repo = ctx.new_repo()
    tf = repo.add_target("file1.txt", T1)
    repo.publish_initial()
    total = 10 * MIB

    def longer(content_length: bool) -> Callable[[Ctx], None]:
        def act(c: Ctx) -> None:
            for url in c.r.target_url_paths(tf):
                c.server.files[url] = oversized(T1 + b"x", total, content_length=content_length, key=url,
                                                server=c.server)

        return act

    def read_partially(c: Ctx) -> list[str]:
        c.server.wait_idle()
        sent = [s for url in c.r.target_url_paths(tf) for s in c.server.sent.get(url, [])]
        if not sent:
            return ["target was not requested"]
        return [f"client read all {total} bytes of the target"] if max(sent) >= total else []

    return [
        init_step(),
        Step("target longer than signed, with Content-Length", "download", action=longer(True),
             targets=["file1.txt"], exit=1, md=top(), tgt={}, checks=[read_partially]),
        Step("target longer than signed, without Content-Length", "download", action=longer(False),
             targets=["file1.txt"], exit=1, md=top(), tgt={}, checks=[read_partially]),
    ]


@scenario("attack")
def wrong_type(ctx: Ctx) -> list[Step]:
    """Documents whose `_type` is not the role they are fetched as, each validly signed by that
    role's keys: timestamp.json with _type snapshot, root v2 with _type targets, snapshot with
    _type timestamp, targets with _type snapshot."""
    repo = ctx.new_repo()
    repo.publish_initial()

    def ts(c: Ctx) -> None:
        d = c.r.timestamp.to_dict()
        d["version"] = 2
        d["_type"] = "snapshot"
        c.server.files["metadata/timestamp.json"] = sign_raw(d, c.r.signers["timestamp"])

    def root(c: Ctx) -> None:
        c.r.publish_timestamp()
        d = c.r.root.to_dict()
        d["version"] = 2
        d["_type"] = "targets"
        c.server.files["metadata/2.root.json"] = sign_raw(d, c.r.signers["root"])

    def sn(c: Ctx) -> None:
        c.server.files.pop("metadata/2.root.json")
        c.r.snapshot.version = 2
        d = c.r.snapshot.to_dict()
        d["_type"] = "timestamp"
        c.server.files["metadata/2.snapshot.json"] = sign_raw(d, c.r.signers["snapshot"])
        c.r.timestamp.snapshot_meta = MetaFile(2)
        c.r.timestamp.version = 2
        c.r.publish_timestamp()

    def tg(c: Ctx) -> None:
        c.r.targets["targets"].version = 2
        d = c.r.targets["targets"].to_dict()
        d["_type"] = "snapshot"
        c.server.files["metadata/2.targets.json"] = sign_raw(d, c.r.signers["targets"])
        c.r.snapshot.meta["targets.json"] = MetaFile(2)
        c.r.snapshot.version = 3
        c.r.publish_snapshot()
        c.r.timestamp.version = 3
        c.r.publish_timestamp()

    return [
        init_step(),
        Step("refresh", "refresh", md=top()),
        Step("timestamp.json with _type snapshot", "refresh", action=ts, exit=1, unchanged=True, md=top()),
        Step("2.root.json with _type targets", "refresh", action=root, exit=1, unchanged=True, md=top()),
        Step("2.snapshot.json with _type timestamp", "refresh", action=sn, exit=1, md=top(ts=2)),
        Step("2.targets.json with _type snapshot", "refresh", action=tg, exit=1, md=top(ts=3, sn=3)),
    ]


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    step: Step
    rc: int | None
    problems: list[str]
    stderr: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def error_line(self) -> str:
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        errs = [line for line in lines if line.startswith("error")]
        return (errs or lines or [""])[-1][:400]


def read_dir(path: Path, skip: set[str] = frozenset()) -> dict[str, bytes]:
    """Regular files (through symlinks) directly in `path`; subdirectories are reported as
    `NAME/`."""
    out: dict[str, bytes] = {}
    if not path.is_dir():
        return out
    for entry in sorted(path.iterdir()):
        if entry.name in skip:
            continue
        if entry.is_dir():
            out[entry.name + "/"] = b""
        else:
            try:
                out[entry.name] = entry.read_bytes()
            except OSError as e:
                out[entry.name] = f"<unreadable: {e}>".encode()
    return out


def version_of(data: bytes) -> int | str:
    try:
        return json.loads(data)["signed"]["version"]
    except Exception:  # noqa: BLE001
        return "?"


def stray_files(ctx: Ctx) -> list[str]:
    allowed = {ctx.md, ctx.tgt, ctx.workdir / "trusted-root.json"}
    stray = []
    for dirpath, dirnames, filenames in os.walk(ctx.workdir):
        d = Path(dirpath)
        if d in allowed or any(p in allowed for p in d.parents):
            dirnames[:] = []
            continue
        for name in filenames:
            if d / name not in allowed:
                stray.append(str((d / name).relative_to(ctx.workdir)))
    return stray


def check_step(ctx: Ctx, step: Step, rc: int | None, md_before: dict[str, bytes],
               tgt_before: dict[str, bytes]) -> list[str]:
    problems: list[str] = []
    if rc not in ((0, 1) if step.exit is None else (step.exit,)):
        problems.append(f"exit {rc}, expected {'0 or 1' if step.exit is None else step.exit}")
    md_now = read_dir(ctx.md, skip={"root_history"})
    if step.unchanged:
        if md_now != md_before:
            changed = sorted(n for n in set(md_now) | set(md_before) if md_now.get(n) != md_before.get(n))
            desc = [f"{n}: v{version_of(md_before[n]) if n in md_before else '-'} -> "
                    f"v{version_of(md_now[n]) if n in md_now else '-'}" for n in changed]
            problems.append("metadata changed: " + ", ".join(desc))
    expected = None if step.md is None else {quote(role, "") + ".json": v for role, v in step.md.items()}
    for name in sorted(set(expected or {}) | set(md_now)):
        if name not in md_now:
            problems.append(f"{name} missing (expected v{expected[name]})")
        elif expected is not None and name not in expected:
            problems.append(f"unexpected {name} in metadata dir")
        else:
            got = version_of(md_now[name])
            if expected is not None and got != expected[name]:
                problems.append(f"{name} is v{got}, expected v{expected[name]}")
            role = unquote(name[: -len(".json")]) if name.endswith(".json") else None
            if ctx.repo is not None and md_now[name] not in ctx.r.published.get((role, got), []):
                problems.append(f"{name} is not byte-identical to what the repository served as {role} v{got}")
    tgt_now = read_dir(ctx.tgt)
    if step.tgt_any:
        pass
    elif step.tgt is None:
        if tgt_now != tgt_before:
            problems.append(f"target dir changed: {sorted(tgt_before)} -> {sorted(tgt_now)}")
    else:
        expected_t = {quote(p, ""): data for p, data in step.tgt.items()}
        for name in sorted(set(expected_t) | set(tgt_now)):
            if name not in tgt_now:
                problems.append(f"target {name} missing")
            elif name not in expected_t:
                if name.endswith("#partial") and step.resumable:
                    # the transfer was cut: the bytes so far are kept to resume from
                    ctx.vars.setdefault("notes", []).append(f"partial download kept to resume: {name}")
                else:
                    # after any other failure the target dir holds only verified targets
                    problems.append(f"unexpected file {name} in target dir")
            elif tgt_now[name] != expected_t[name]:
                problems.append(f"target {name} has wrong content")
    stray = stray_files(ctx)
    if stray:
        problems.append(f"files written outside the metadata/target dirs: {stray}")
    for check in step.checks:
        try:
            problems.extend(check(ctx))
        except Exception as e:  # noqa: BLE001
            problems.append(f"check failed: {e!r}")
    return problems


def client_args(ctx: Ctx, step: Step, trusted_root: Path | None) -> list[str]:
    v = ["-v"] if step.verbose else []
    if step.cmd == "init":
        return v + ["--metadata-dir", str(ctx.md), "init", str(trusted_root)]
    if step.cmd == "refresh":
        return v + ["--metadata-url", ctx.metadata_url, "--metadata-dir", str(ctx.md), "refresh"]
    args = v + ["--target-dir", str(ctx.tgt), "--metadata-dir", str(ctx.md)]
    for i, name in enumerate(step.targets):
        args += ["--target-name", name]
        if i == 0:
            args += ["--metadata-url", ctx.metadata_url]
    return args + ["--target-base-url", ctx.targets_url, "download"]


def run_scenario(sc: Scenario, client: str, prefix: list[str], tmp: Path) -> list[Result]:
    workdir = tmp / sc.name / client
    workdir.mkdir(parents=True)
    server = Server()
    ctx = Ctx(server, workdir)
    results: list[Result] = []
    try:
        steps = sc.build(ctx)
        ctx.base.mkdir(parents=True)
        for step in steps:
            if step.action:
                step.action(ctx)
            trusted = None
            if step.cmd == "init":
                trusted = workdir / "trusted-root.json"
                data = step.trusted_root(ctx) if step.trusted_root else ctx.r.root_bytes[1]
                trusted.write_bytes(data)
            md_before = read_dir(ctx.md, skip={"root_history"})
            tgt_before = read_dir(ctx.tgt)
            server.clear_log()
            cmd = prefix + client_args(ctx, step, trusted)
            if step.faketime:
                cmd = ["faketime", step.faketime] + cmd
            env = dict(os.environ)
            env.pop("RUST_LOG", None)
            start = time.monotonic()
            try:
                p = subprocess.run(cmd, capture_output=True, timeout=CLIENT_TIMEOUT, env=env, stdin=subprocess.DEVNULL)
                rc, stderr = p.returncode, p.stderr.decode(errors="replace")
            except subprocess.TimeoutExpired as e:
                rc, stderr = None, f"timeout after {CLIENT_TIMEOUT}s: " + (e.stderr or b"").decode(errors="replace")
            elapsed = time.monotonic() - start
            ctx.vars["notes"] = []
            problems = check_step(ctx, step, rc, md_before, tgt_before)
            results.append(Result(step, rc, problems, stderr, elapsed, list(ctx.vars["notes"])))
    except Exception:  # noqa: BLE001
        results.append(Result(Step("(scenario error)", "init"), None, [traceback.format_exc()], "", 0.0))
    finally:
        server.close()
    return results


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def verdict(sc: Scenario, res: Result | None, client: str) -> str:
    if res is None:
        return "-"
    base = f"exit {res.rc}"
    known = (sc.python_differences if client == "python-tuf" else sc.rampart_known_bugs).get(res.step.label)
    if res.ok:
        return f"pass ({base})" + (" (known issue no longer seen)" if known else "")
    if known:
        return f"{'DIFF' if client == 'python-tuf' else 'XFAIL'} ({base})"
    return f"FAIL ({base})"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--client", choices=["rampart", "python-tuf", "both"], default="both")
    parser.add_argument("--scenario", action="append", default=[],
                        help="scenario name or glob (repeatable; default all)")
    parser.add_argument("--rampart", default=str(REPO_ROOT / "target/debug/rampart") + " tuf-client",
                        help="command prefix of the Rampart client")
    parser.add_argument("--python-tuf", default=f"{sys.executable} {HERE / 'python_tuf_client.py'}",
                        help="command prefix of the python-tuf client")
    parser.add_argument("--jobs", type=int, default=min(8, 2 * (os.cpu_count() or 1)))
    parser.add_argument("--report", help="also write the markdown table to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--list", action="store_true", help="list scenarios and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every client's error message")
    args = parser.parse_args(argv)

    if args.list:
        for sc in SCENARIOS:
            print(f"{sc.name:40} {sc.kind:8} {sc.doc.splitlines()[0]}")
        return 0
    selected = [sc for sc in SCENARIOS
                if not args.scenario or any(fnmatch.fnmatchcase(sc.name, pat) for pat in args.scenario)]
    if not selected:
        print(f"no scenario matches {args.scenario}", file=sys.stderr)
        return 2
    clients = {"rampart": args.rampart.split(), "python-tuf": args.python_tuf.split()}
    names = ["rampart", "python-tuf"] if args.client == "both" else [args.client]
    if shutil.which("faketime") is None:
        print("warning: faketime is not installed; steps that need it will fail", file=sys.stderr)

    tmp = Path(tempfile.mkdtemp(prefix="tuf-client-conformance-"))
    started = time.monotonic()
    try:
        jobs = [(sc, c) for sc in selected for c in names]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {(sc.name, c): pool.submit(run_scenario, sc, c, clients[c], tmp) for sc, c in jobs}
            results = {k: f.result() for k, f in futures.items()}
    finally:
        if args.keep:
            print(f"(kept {tmp})", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started

    rows: list[list[str]] = []
    details: list[str] = []
    footnotes: dict[str, int] = {}
    counts = {c: {"steps": 0, "pass": 0, "fail": 0, "known": 0} for c in names}
    agree = disagree = 0

    def footnote(text: str) -> str:
        if text not in footnotes:
            footnotes[text] = len(footnotes) + 1
        return f"[{footnotes[text]}]"

    for sc in selected:
        per = {c: results[(sc.name, c)] for c in names}
        n = max(len(r) for r in per.values())
        for i in range(n):
            res = {c: (per[c][i] if i < len(per[c]) else None) for c in names}
            step = next(r.step for r in res.values() if r is not None)
            for c in names:
                r = res[c]
                counts[c]["steps"] += 1
                known = (sc.python_differences if c == "python-tuf" else sc.rampart_known_bugs).get(step.label)
                if r is not None and r.ok:
                    counts[c]["pass"] += 1
                elif known:
                    counts[c]["known"] += 1
                else:
                    counts[c]["fail"] += 1
            all_ok = all(r is not None and r.ok for r in res.values())
            if step.cmd == "init" and all_ok:
                continue  # init rows only when something is off
            cells = []
            for c in names:
                v = verdict(sc, res[c], c)
                known = (sc.python_differences if c == "python-tuf" else sc.rampart_known_bugs).get(step.label)
                if known and res[c] is not None and not res[c].ok:
                    v += " " + footnote(known)
                cells.append(v)
            if len(names) == 2:
                a, b = res["rampart"], res["python-tuf"]
                same = a is not None and b is not None and a.rc == b.rc and a.ok == b.ok
                agree += same
                disagree += not same
                cells.append("yes" if same else "**no**")
            rows.append([sc.name, step.label, step.expected_text()] + cells)
            for c in names:
                r = res[c]
                if r is None:
                    continue
                if not r.ok or args.verbose or (len(names) == 2 and not same):
                    tag = "ok" if r.ok else "MISSED EXPECTATION"
                    details.append(f"- {sc.name} / {step.label} / {c}: {tag}; exit {r.rc}; "
                                   f"error: `{r.error_line() or '(none)'}`"
                                   + "".join(f"\n    - {p.strip()}" for p in r.problems))
                for note in r.notes:
                    if args.verbose:
                        details.append(f"- {sc.name} / {step.label} / {c}: note: {note}")

    header = ["scenario", "step", "expected"] + names + (["agree"] if len(names) == 2 else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    table = "\n".join(lines)
    notes = "\n\n".join(f"[{n}] {text}" for text, n in footnotes.items())
    summary_parts = [f"{len(selected)} scenarios"]
    for c in names:
        k = counts[c]
        extra = ""
        if k["known"]:
            extra = f", {k['known']} {'documented differences' if c == 'python-tuf' else 'known bugs (xfail)'}"
        summary_parts.append(f"{c}: {k['pass']}/{k['steps']} steps as expected, {k['fail']} failed{extra}")
    if len(names) == 2:
        summary_parts.append(f"clients agree on {agree}/{agree + disagree} reported steps")
    summary = "SUMMARY: " + "; ".join(summary_parts) + f" ({elapsed:.0f}s)"

    print(table)
    if notes:
        print("\n" + notes)
    if details:
        print("\nDetails:\n" + "\n".join(details))
    print("\n" + summary)
    if args.report:
        Path(args.report).write_text(table + ("\n\n" + notes if notes else "") + "\n\n" + summary + "\n")
    rampart_failed = "rampart" in counts and counts["rampart"]["fail"] > 0
    return 1 if rampart_failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
