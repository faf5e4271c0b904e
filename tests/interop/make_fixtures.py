#!/usr/bin/env python3
"""Builds TUF repositories with python-tuf for Rampart's interoperability tests.

Usage: make_fixtures.py OUTDIR

Every case is written as OUTDIR/<case>/ in python-tuf's repository layout with consistent
snapshots:

    metadata/1.root.json, 2.root.json, ..., timestamp.json, N.snapshot.json, N.targets.json,
             N.<role name quoted with urllib.parse.quote(name, "")>.json
    targets/[DIR/]HASH.NAME   (one copy per listed hash)
    expect.json               what a correct client must conclude (rule names are those of
                              rampart-core's Error::rule()), plus what python-tuf's own
                              ngclient concluded on the same files (key "python_tuf")

Metadata is built and signed with python-tuf's Metadata API and securesystemslib signers
only; nothing is written by hand. Keys are fresh on every run, everything else is
deterministic. Expiry dates are fixed (2099, or 2020 where a case tests expiry), and
Rampart's test uses the fixed reference time written in expect.json.

After writing a case, the script runs python-tuf's ngclient Updater against it and checks
that python-tuf agrees with expect.json, except for the divergences listed in
KNOWN_PYTHON_TUF_DIVERGENCES (each explained there). Any other disagreement makes the script
exit non-zero.

OUTDIR is wiped first, so its content is exactly what this script makes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner, Signer, SSlibKey
from tuf.api import exceptions
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

REFERENCE_TIME = "2030-01-01T00:00:00Z"
FAR = datetime(2099, 1, 1, tzinfo=timezone.utc)
PAST = datetime(2020, 1, 1, tzinfo=timezone.utc)
HASH_ALGORITHMS = ["sha256", "sha512"]
BASE_URL = "https://repository.invalid/"

# Cases where python-tuf 7.0.1 concludes something else than expect.json, and why the
# expectation (what rampart-core must do) is nevertheless the one written.
KNOWN_PYTHON_TUF_DIVERGENCES = {
    "large-integers-in-custom": (
        "python-tuf accepts integers of any size in signed metadata; Rampart refuses integers "
        "outside the 64-bit range (malformed) rather than risk a parser differential or lose "
        "precision: serde_json has no exact big-integer type without global side effects."
    ),
    "attack-duplicate-keys": (
        "python-tuf counts signatures per key ID; the same public key listed under two key "
        "IDs therefore meets threshold 2 with one private key. Rampart counts distinct key "
        "material (TUF: a threshold of signatures from distinct keys)."
    ),
    "unknown-key-type": (
        "securesystemslib's Key.from_dict raises ValueError on an unknown keytype/scheme, so "
        "python-tuf cannot even load a root that lists such a key; Rampart ignores keys it "
        "cannot use and counts the others."
    ),
    "succinct-bins-non-terminating": (
        "python-tuf treats every succinct_roles bin as terminating (comment in "
        "Delegations.get_roles_for_target); TAP 15 says 'All succinct hashed bin delegations "
        "will be non-terminating', so the walk backtracks to the next role, as Rampart does."
    ),
}

JSON_OUT = JSONSerializer(compact=False)


def new_signer(kind: str) -> CryptoSigner:
    """A fresh key of one of the three schemes Rampart supports."""
    if kind == "ed25519":
        return CryptoSigner.generate_ed25519()
    if kind == "ecdsa":
        return CryptoSigner.generate_ecdsa()
    if kind == "rsa":
        return CryptoSigner.generate_rsa()
    raise ValueError(kind)


def keyid_of(key_dict: dict[str, Any]) -> str:
    """TUF key ID: SHA-256 of the canonical JSON of the key object."""
    return hashlib.sha256(encode_canonical(key_dict).encode("utf-8")).hexdigest()


class Repo:
    """One repository under construction, written in python-tuf's repository layout."""

    def __init__(self, out: Path, name: str, description: str, kinds: dict[str, str]):
        self.name = name
        self.dir = out / name
        self.metadata_dir = self.dir / "metadata"
        self.targets_dir = self.dir / "targets"
        self.metadata_dir.mkdir(parents=True)
        self.targets_dir.mkdir()
        self.description = description
        # role -> signers authorised by the delegator; sign_with: the ones that do sign.
        self.signers: dict[str, list[Signer]] = {}
        self.sign_with: dict[str, list[Signer]] = {}
        self.root = Metadata(Root(expires=FAR, consistent_snapshot=True))
        for role in ["root", "timestamp", "snapshot", "targets"]:
            signer = new_signer(kinds.get(role, "ed25519"))
            self.root.signed.add_key(signer.public_key, role)
            self.signers[role] = [signer]
        self.root_published = False
        self.targets: dict[str, Metadata[Targets]] = {"targets": Metadata(Targets(expires=FAR))}
        self.timestamp = Metadata(Timestamp(expires=FAR))
        self.snapshot = Metadata(Snapshot(expires=FAR))
        self.snapshot_meta_extras: dict[str, dict[str, Any]] = {}
        self.timestamp_meta_extras: dict[str, Any] = {}
        self.lookups: list[dict[str, Any]] = []

    # -- building ------------------------------------------------------------------------

    def add_target(
        self,
        role: str,
        path: str,
        data: bytes,
        custom: Any = None,
        unrecognized: dict[str, Any] | None = None,
    ) -> TargetFile:
        target = TargetFile.from_data(path, data, HASH_ALGORITHMS)
        fields = dict(unrecognized or {})
        if custom is not None:
            fields["custom"] = custom
        target.unrecognized_fields = fields
        self.targets[role].signed.targets[path] = target
        dirname, sep, basename = path.rpartition("/")
        for digest in target.hashes.values():
            dest = self.targets_dir / f"{dirname}{sep}{digest}.{basename}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        return target

    def delegate(
        self,
        parent: str,
        name: str,
        kinds: list[str],
        threshold: int = 1,
        terminating: bool = False,
        paths: list[str] | None = None,
        path_hash_prefixes: list[str] | None = None,
        unrecognized: dict[str, Any] | None = None,
        sign_with: list[int] | None = None,
    ) -> None:
        """Adds a delegation from `parent` to a new role `name` with keys of `kinds`."""
        signers = [new_signer(k) for k in kinds]
        parent_md = self.targets[parent].signed
        if parent_md.delegations is None:
            parent_md.delegations = Delegations(keys={}, roles={})
        for s in signers:
            parent_md.delegations.keys[s.public_key.keyid] = s.public_key
        assert parent_md.delegations.roles is not None
        parent_md.delegations.roles[name] = DelegatedRole(
            name=name,
            keyids=[s.public_key.keyid for s in signers],
            threshold=threshold,
            terminating=terminating,
            paths=paths,
            path_hash_prefixes=path_hash_prefixes,
            unrecognized_fields=unrecognized or {},
        )
        self.signers[name] = signers
        if sign_with is not None:
            self.sign_with[name] = [signers[i] for i in sign_with]
        self.targets[name] = Metadata(Targets(expires=FAR))

    def delegate_succinct(
        self, parent: str, kind: str, bit_length: int, name_prefix: str
    ) -> SuccinctRoles:
        signer = new_signer(kind)
        succinct = SuccinctRoles(
            keyids=[signer.public_key.keyid],
            threshold=1,
            bit_length=bit_length,
            name_prefix=name_prefix,
            unrecognized_fields={"x-interop-note": {"bins": 2**bit_length}},
        )
        self.targets[parent].signed.delegations = Delegations(
            keys={signer.public_key.keyid: signer.public_key},
            roles=None,
            succinct_roles=succinct,
        )
        for bin_name in succinct.get_roles():
            self.signers[bin_name] = [signer]
            self.targets[bin_name] = Metadata(Targets(expires=FAR))
        return succinct

    def signing(self, role: str) -> list[Signer]:
        return self.sign_with.get(role, self.signers[role])

    @staticmethod
    def sign(md: Metadata, signers: list[Signer]) -> bytes:
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)
        return md.to_bytes(JSON_OUT)

    def write(self, filename: str, data: bytes) -> None:
        (self.metadata_dir / filename).write_bytes(data)

    def read(self, filename: str) -> bytes:
        return (self.metadata_dir / filename).read_bytes()

    def publish_root(self, signers: list[Signer] | None = None) -> None:
        data = self.sign(self.root, signers if signers is not None else self.signers["root"])
        self.write(f"{self.root.signed.version}.root.json", data)
        self.root_published = True

    def rotate_root(
        self, new_signers: list[Signer], threshold: int, sign_with: list[Signer]
    ) -> None:
        """Writes the next root version with new root keys, signed by `sign_with`."""
        root = self.root.signed
        for keyid in list(root.roles["root"].keyids):
            root.revoke_key(keyid, "root")
        for s in new_signers:
            root.add_key(s.public_key, "root")
        root.roles["root"].threshold = threshold
        root.version += 1
        self.signers["root"] = new_signers
        self.write(f"{root.version}.root.json", self.sign(self.root, sign_with))

    def publish(
        self,
        snapshot_lists_hashes: bool = False,
        timestamp_lists_hashes: bool = False,
    ) -> dict[str, bytes]:
        """Signs and writes every targets role, snapshot and timestamp (in that order)."""
        if not self.root_published:
            self.publish_root()
        written: dict[str, bytes] = {}
        meta: dict[str, MetaFile] = {}
        for role, md in self.targets.items():
            data = self.sign(md, self.signing(role))
            filename = f"{md.signed.version}.{quote(role, '')}.json"
            self.write(filename, data)
            written[role] = data
            mf = MetaFile(version=md.signed.version)
            if snapshot_lists_hashes:
                mf.length = len(data)
                mf.hashes = {"sha256": hashlib.sha256(data).hexdigest()}
            mf.unrecognized_fields = dict(self.snapshot_meta_extras.get(role, {}))
            meta[f"{role}.json"] = mf
        self.snapshot.signed.meta = meta
        snap = self.sign(self.snapshot, self.signing("snapshot"))
        self.write(f"{self.snapshot.signed.version}.snapshot.json", snap)
        written["snapshot"] = snap
        smf = MetaFile(version=self.snapshot.signed.version)
        if timestamp_lists_hashes:
            smf.length = len(snap)
            smf.hashes = {"sha256": hashlib.sha256(snap).hexdigest()}
        smf.unrecognized_fields = dict(self.timestamp_meta_extras)
        self.timestamp.signed.snapshot_meta = smf
        ts = self.sign(self.timestamp, self.signing("timestamp"))
        self.write("timestamp.json", ts)
        written["timestamp"] = ts
        return written

    # -- expectations ----------------------------------------------------------------------

    def found(self, target: str, role: str) -> None:
        self.lookups.append({"target": target, "found_in": role})

    def not_found(self, target: str, rule: str = "target-not-found") -> None:
        self.lookups.append({"target": target, "rule": rule})

    def finish(self, refresh: str = "ok", rule: str | None = None, **extra: Any) -> dict:
        expect: dict[str, Any] = {
            "case": self.name,
            "description": self.description,
            "reference_time": REFERENCE_TIME,
            "trusted_root": "1.root.json",
            "refresh": refresh,
        }
        if rule is not None:
            expect["rule"] = rule
        expect.update(extra)
        expect["lookups"] = self.lookups if refresh == "ok" else []
        return expect


# -- the cases ---------------------------------------------------------------------------

UNKNOWN_SIGNED_FIELD = {
    "x-interop-unknown": {"nested": [1, -2, {"deep": None, "flag": True}], "empty": {}}
}

NASTY_STRING = 'quote" backslash\\ tab\t newline\n ctl\u0001 é e\u0301 \ufb01 \U0001f600'

KEYTYPE_TARGETS: list[tuple[str, bytes]] = [
    ("a", b"target a\n"),
    ("a!", b"target a-bang\n"),  # "a" < "a!" in code point order, ">" byte-wise with quotes
    ("e\u0301.txt", b"decomposed e + combining acute\n"),
    ("\u00e9.txt", b"precomposed e-acute\n"),
    ("dir/\ufb01le.bin", b"ligature fi, in a directory\n"),
    ("\U0001f600.bin", b"outside the BMP: surrogate pair in JSON, sorts after U+FB01\n"),
    ("empty.bin", b""),
]


def case_keytype(out: Path, kind: str, scheme: str) -> dict:
    repo = Repo(
        out,
        f"keytype-{scheme}",
        f"every role signed with {scheme} keys; targets whose names sort differently byte-wise "
        "and by prefix, non-ASCII and decomposed names, nested custom, unknown fields",
        {r: kind for r in ["root", "timestamp", "snapshot", "targets"]},
    )
    repo.root.signed.unrecognized_fields = {"x-root-extension": {"a": [1, 2, 3], "b": "c"}}
    repo.timestamp.signed.unrecognized_fields = {"x-timestamp-extension": 7}
    repo.snapshot.signed.unrecognized_fields = {"x-snapshot-extension": [None, False]}
    repo.targets["targets"].signed.unrecognized_fields = copy.deepcopy(UNKNOWN_SIGNED_FIELD)
    repo.snapshot_meta_extras["targets"] = {"x-meta-extension": {"k": "v"}}
    repo.timestamp_meta_extras = {"x-meta-extension": ["snapshot"]}
    for path, data in KEYTYPE_TARGETS:
        custom = None
        unrecognized = None
        if path == "a":
            custom = {
                "hardware_id": "ecu-a",
                "release_counter": 3,
                "nested": {
                    "list": [1, -2, {"deep": {"x": None, "y": True}}],
                    "empty": {},
                    "s": NASTY_STRING,
                    "a": 1,
                    "a!": 2,
                },
                "big": 2**63 + 1,
                "negative": -(2**63),
            }
        if path == "a!":
            unrecognized = {"x-target-extension": {"z": [1, {"y": "x"}]}}
            custom = {"e\u0301": "decomposed key", "\u00e9": "composed key"}
        repo.add_target("targets", path, data, custom, unrecognized)
        repo.found(path, "targets")
    repo.publish(snapshot_lists_hashes=True, timestamp_lists_hashes=True)
    repo.not_found("missing.bin")
    repo.not_found("A")
    repo.not_found("e\u0301.TXT")
    return repo.finish(root_version=1)


def case_delegations(out: Path) -> dict:
    repo = Repo(
        out,
        "delegations",
        "delegation graph: path patterns, path_hash_prefixes, a terminating role, threshold-2 "
        "roles (one under-signed), role names that need percent-encoding, nested delegation, "
        "priority order",
        {"root": "ed25519", "timestamp": "ecdsa", "snapshot": "rsa", "targets": "ed25519"},
    )
    t = "targets"
    repo.add_target(t, "top.bin", b"top-level target\n")
    repo.found("top.bin", t)

    repo.delegate(
        t,
        "firmware",
        ["ecdsa"],
        paths=["firmware/*.bin", "firmware/v[0-9]/*"],
        unrecognized={"x-role-extension": {"hardware_ids": ["ecu-1"]}},
    )
    repo.add_target("firmware", "firmware/ecu.bin", b"firmware for ecu\n", {"v": 1})
    repo.add_target("firmware", "firmware/v2/ecu.img", b"firmware v2 image\n")
    repo.add_target("firmware", "firmware/sub/ecu.bin", b"* must not cross /\n")
    repo.add_target("firmware", "other/stray.bin", b"outside the delegated paths\n")
    repo.found("firmware/ecu.bin", "firmware")
    repo.found("firmware/v2/ecu.img", "firmware")
    repo.not_found("firmware/sub/ecu.bin")
    repo.not_found("other/stray.bin")
    repo.not_found("firmware/vx/ecu.img")

    covered = "hashed/file.txt"
    uncovered = "hashed/other.txt"
    prefix = hashlib.sha256(covered.encode()).hexdigest()[:3]
    assert not hashlib.sha256(uncovered.encode()).hexdigest().startswith(prefix)
    repo.delegate(t, "hashed", ["ed25519"], path_hash_prefixes=[prefix])
    repo.add_target("hashed", covered, b"covered by the hash prefix\n")
    repo.add_target("hashed", uncovered, b"not covered by the hash prefix\n")
    repo.found(covered, "hashed")
    repo.not_found(uncovered)

    repo.delegate(t, "term", ["rsa"], terminating=True, paths=["term/*"])
    repo.add_target("term", "term/x.bin", b"in the terminating role\n")
    repo.delegate(t, "after-term", ["ed25519"], paths=["term/*", "late/*"])
    repo.add_target("after-term", "term/deep.bin", b"hidden by the terminating role\n")
    repo.add_target("after-term", "late/y.bin", b"after the terminating role\n")
    repo.found("term/x.bin", "term")
    repo.not_found("term/deep.bin")
    repo.found("late/y.bin", "after-term")

    repo.delegate(
        t, "two-of-three", ["ed25519", "ecdsa", "rsa"], threshold=2, paths=["multi/*"],
        sign_with=[1, 2],
    )
    repo.add_target("two-of-three", "multi/x.bin", b"signed by 2 of 3 keys\n")
    repo.found("multi/x.bin", "two-of-three")

    repo.delegate(
        t, "under-signed", ["ed25519", "ed25519"], threshold=2, paths=["under/*"],
        sign_with=[0],
    )
    repo.add_target("under-signed", "under/x.bin", b"signed by 1 of the 2 needed\n")
    repo.not_found("under/x.bin", "threshold")

    repo.delegate(t, "../evil", ["ed25519"], paths=["evil/*"])
    repo.add_target("../evil", "evil/x.bin", b"role name with a slash and dots\n")
    repo.found("evil/x.bin", "../evil")

    repo.delegate(t, "a b", ["ecdsa"], paths=["space/*"])
    repo.add_target("a b", "space/x.bin", b"role name with a space\n")
    repo.found("space/x.bin", "a b")

    repo.delegate(t, "r\u00f4le/\u00fc", ["ed25519"], paths=["uni/*"])
    repo.add_target("r\u00f4le/\u00fc", "uni/x.bin", b"non-ASCII role name\n")
    repo.found("uni/x.bin", "r\u00f4le/\u00fc")

    repo.delegate(t, "nested", ["ed25519"], paths=["nest/*/*"])
    repo.delegate("nested", "nested-child", ["rsa"], paths=["nest/deep/*"])
    repo.add_target("nested-child", "nest/deep/x.bin", b"two levels down\n")
    repo.found("nest/deep/x.bin", "nested-child")

    repo.delegate(t, "prio-1", ["ed25519"], paths=["prio/*"])
    repo.delegate(t, "prio-2", ["ed25519"], paths=["prio/*"])
    repo.add_target("prio-1", "prio/x.bin", b"from the first role\n")
    repo.add_target("prio-2", "prio/x.bin", b"from the second role, must lose\n")
    repo.add_target("prio-2", "prio/only2.bin", b"only in the second role\n")
    repo.found("prio/x.bin", "prio-1")
    repo.found("prio/only2.bin", "prio-2")

    repo.publish()
    return repo.finish(root_version=1)


def case_succinct(out: Path) -> dict:
    repo = Repo(
        out,
        "succinct-hash-bins",
        "succinct_roles (TAP 15) with 32 bins (bit_length 5, two hex digits); one target "
        "placed in the wrong bin",
        {"root": "ecdsa", "timestamp": "ed25519", "snapshot": "ed25519", "targets": "rsa"},
    )
    succinct = repo.delegate_succinct("targets", "ecdsa", 5, "bins")
    paths = [f"pkg/{n}.tar.gz" for n in ["alpha", "beta", "gamma", "delta", "epsilon"]]
    for i, path in enumerate(paths):
        bin_name = succinct.get_role_for_target(path)
        repo.add_target(bin_name, path, f"package {i}\n".encode(), {"index": i})
        repo.found(path, bin_name)
    misplaced = "pkg/misplaced.tar.gz"
    right = succinct.get_role_for_target(misplaced)
    wrong = next(b for b in succinct.get_roles() if b != right)
    repo.add_target(wrong, misplaced, b"in a bin that may not sign for it\n")
    repo.not_found(misplaced)
    repo.not_found("pkg/nowhere.tar.gz")
    repo.publish(snapshot_lists_hashes=True)
    return repo.finish(root_version=1)


def case_succinct_non_terminating(out: Path) -> dict:
    repo = Repo(
        out,
        "succinct-bins-non-terminating",
        "a succinct bin that lacks the target must not end the search (TAP 15: succinct "
        "delegations are non-terminating); the next role lists it",
        {},
    )
    repo.delegate("targets", "hbd", ["ed25519"], paths=["*"])
    repo.delegate("targets", "fallback", ["ed25519"], paths=["*"])
    repo.delegate_succinct("hbd", "ed25519", 1, "hbd-bin")
    repo.add_target("fallback", "t.bin", b"listed by the role after the bins\n")
    repo.found("t.bin", "fallback")
    repo.publish()
    return repo.finish(root_version=1)


def case_root_rotation(out: Path) -> dict:
    repo = Repo(
        out,
        "root-rotation",
        "root 1 -> 2 -> 3: 1-of-1 ed25519, then 2-of-3 (ed25519, ecdsa, rsa), then 2-of-3 with "
        "one key replaced and the timestamp key rotated; each signed by old and new thresholds",
        {},
    )
    v1 = repo.signers["root"]
    repo.publish_root()
    v2 = [new_signer("ed25519"), new_signer("ecdsa"), new_signer("rsa")]
    repo.rotate_root(v2, 2, sign_with=[v1[0], v2[0], v2[1]])
    v3 = [v2[0], v2[1], new_signer("ed25519")]
    ts_new = new_signer("ecdsa")
    root = repo.root.signed
    root.revoke_key(repo.signers["timestamp"][0].public_key.keyid, "timestamp")
    root.add_key(ts_new.public_key, "timestamp")
    repo.signers["timestamp"] = [ts_new]
    # v3 is signed by v2's threshold (v2[0], v2[2]) and its own (v3[0], v3[2]).
    repo.rotate_root(v3, 2, sign_with=[v2[0], v2[2], v3[2]])
    repo.add_target("targets", "after-rotation.bin", b"signed under root v3\n")
    repo.found("after-rotation.bin", "targets")
    repo.publish()
    return repo.finish(root_version=3)


def case_root_new_keys_only(out: Path) -> dict:
    repo = Repo(
        out,
        "attack-root-v2-new-keys-only",
        "root v2 replaces the root key but is signed only by the new key (not by v1's)",
        {},
    )
    repo.publish_root()
    new = [new_signer("ed25519")]
    repo.rotate_root(new, 1, sign_with=new)
    repo.publish()
    return repo.finish("error", "threshold")


def case_timestamp_below_threshold(out: Path) -> dict:
    repo = Repo(
        out,
        "attack-timestamp-below-threshold",
        "timestamp role needs 2 of 2 keys, timestamp.json carries 1 valid signature",
        {},
    )
    second = new_signer("ecdsa")
    repo.root.signed.add_key(second.public_key, "timestamp")
    repo.root.signed.roles["timestamp"].threshold = 2
    repo.signers["timestamp"].append(second)
    repo.sign_with["timestamp"] = [second]
    repo.publish()
    return repo.finish("error", "threshold")


def case_targets_hash_mismatch(out: Path) -> dict:
    repo = Repo(
        out,
        "attack-targets-hash-mismatch",
        "snapshot lists the sha256 of targets.json; the served 1.targets.json is a different, "
        "validly signed document of the same version",
        {},
    )
    repo.add_target("targets", "original.bin", b"original\n")
    repo.publish()
    # Snapshot lists hashes (no length, so the hash is what must catch it).
    original = repo.read("1.targets.json")
    repo.snapshot.signed.meta["targets.json"].hashes = {
        "sha256": hashlib.sha256(original).hexdigest()
    }
    snap = repo.sign(repo.snapshot, repo.signing("snapshot"))
    repo.write("1.snapshot.json", snap)
    repo.timestamp.signed.snapshot_meta = MetaFile(version=1)
    repo.write("timestamp.json", repo.sign(repo.timestamp, repo.signing("timestamp")))
    repo.add_target("targets", "evil.bin", b"malicious\n")
    repo.write("1.targets.json", repo.sign(repo.targets["targets"], repo.signing("targets")))
    return repo.finish("error", "hash-mismatch")


def case_expired_timestamp(out: Path) -> dict:
    repo = Repo(out, "attack-expired-timestamp", "timestamp expired in 2020", {})
    repo.timestamp.signed.expires = PAST
    repo.publish()
    return repo.finish("error", "expired")


def case_snapshot_version_mismatch(out: Path) -> dict:
    repo = Repo(
        out,
        "attack-snapshot-version-mismatch",
        "timestamp names snapshot version 2; 2.snapshot.json holds a signed version 1",
        {},
    )
    repo.publish()
    repo.write("2.snapshot.json", repo.read("1.snapshot.json"))
    repo.timestamp.signed.snapshot_meta = MetaFile(version=2)
    repo.write("timestamp.json", repo.sign(repo.timestamp, repo.signing("timestamp")))
    return repo.finish("error", "version-mismatch")


def case_unknown_key_type(out: Path) -> dict:
    repo = Repo(
        out,
        "unknown-key-type",
        "root lists a key of an unknown type, unused by any role, and another one next to the "
        "valid timestamp key (threshold 1): both are ignored, the valid keys verify",
        {},
    )
    root = repo.root.signed
    for n, role in [(1, None), (2, "timestamp")]:
        fields = {
            "keytype": "x-unknown-keytype",
            "scheme": "x-unknown-scheme",
            "keyval": {"public": f"opaque key material {n}"},
        }
        key = SSlibKey(keyid_of(fields), fields["keytype"], fields["scheme"], fields["keyval"])
        if role is None:
            root.keys[key.keyid] = key
        else:
            root.add_key(key, role)
    repo.add_target("targets", "x.bin", b"x\n")
    repo.found("x.bin", "targets")
    repo.publish()
    return repo.finish(root_version=1)


def case_duplicate_keys(out: Path) -> dict:
    repo = Repo(
        out,
        "attack-duplicate-keys",
        "timestamp threshold 2 with the same public key listed under two key IDs (the second "
        "key object has an extra field, so both IDs are honest hashes); one private key signs "
        "twice",
        {},
    )
    signer = repo.signers["timestamp"][0]
    assert isinstance(signer, CryptoSigner)
    pub = signer.public_key
    fields = {
        "keytype": pub.keytype,
        "scheme": pub.scheme,
        "keyval": dict(pub.keyval),
        "x-copy": 1,
    }
    dup_key = SSlibKey(
        keyid_of(fields), pub.keytype, pub.scheme, dict(pub.keyval), {"x-copy": 1}
    )
    dup_signer = CryptoSigner(signer._private_key, dup_key)  # noqa: SLF001 (same key, other ID)
    repo.root.signed.add_key(dup_key, "timestamp")
    repo.root.signed.roles["timestamp"].threshold = 2
    repo.signers["timestamp"].append(dup_signer)
    repo.publish()
    return repo.finish("error", "threshold")


def case_large_integers(out: Path) -> dict:
    repo = Repo(
        out,
        "large-integers-in-custom",
        "custom holds integers beyond 64 bits (2**64 and -2**63 - 1): valid canonical JSON, "
        "signed and accepted by python-tuf, refused by Rampart as malformed (deliberate)",
        {},
    )
    repo.add_target(
        "targets",
        "serial.bin",
        b"a target whose custom data has a 128-bit serial number\n",
        {"serial": 2**127 + 1, "just_above_u64": 2**64, "just_below_i64": -(2**63) - 1},
    )
    repo.publish()
    return repo.finish("error", "malformed")


def case_dot_role_names(out: Path) -> dict:
    repo = Repo(
        out,
        "role-names-dot-and-dot-dot",
        'delegated roles named "." and "..": python-tuf stores and fetches them as '
        '"1..json" and "1....json" (urllib.parse.quote keeps dots)',
        {},
    )
    repo.delegate("targets", ".", ["ed25519"], paths=["dot/*"])
    repo.delegate("targets", "..", ["ed25519"], paths=["dotdot/*"])
    repo.add_target(".", "dot/x.bin", b"signed by the role named '.'\n")
    repo.add_target("..", "dotdot/x.bin", b"signed by the role named '..'\n")
    repo.found("dot/x.bin", ".")
    repo.found("dotdot/x.bin", "..")
    repo.publish()
    return repo.finish(root_version=1)


CASES: list[Callable[[Path], dict]] = [
    lambda out: case_keytype(out, "ed25519", "ed25519"),
    lambda out: case_keytype(out, "ecdsa", "ecdsa-sha2-nistp256"),
    lambda out: case_keytype(out, "rsa", "rsassa-pss-sha256"),
    case_delegations,
    case_succinct,
    case_succinct_non_terminating,
    case_root_rotation,
    case_root_new_keys_only,
    case_timestamp_below_threshold,
    case_targets_hash_mismatch,
    case_expired_timestamp,
    case_snapshot_version_mismatch,
    case_unknown_key_type,
    case_duplicate_keys,
    case_large_integers,
    case_dot_role_names,
]

# -- python-tuf's own verdict ------------------------------------------------------------

# Exceptions python-tuf raises for each rampart-core rule.
RULE_TO_PYTHON = {
    "threshold": {"UnsignedMetadataError"},
    "expired": {"ExpiredMetadataError"},
    "version-mismatch": {"BadVersionNumberError"},
    "rollback": {"BadVersionNumberError"},
    "hash-mismatch": {"LengthOrHashMismatchError"},
    "length-mismatch": {"LengthOrHashMismatchError"},
}


class DirFetcher(FetcherInterface):
    """Serves BASE_URL + path from a case directory, paths taken verbatim (no unquoting)."""

    def __init__(self, base: Path):
        self.base = base
        self.fetched: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(BASE_URL):
            raise exceptions.DownloadHTTPError(f"unexpected URL {url}", 404)
        rel = url[len(BASE_URL) :]
        self.fetched.append(rel)
        path = self.base / rel
        if not path.is_file() or not path.resolve().is_relative_to(self.base.resolve()):
            raise exceptions.DownloadHTTPError(f"{rel} not found", 404)
        return iter([path.read_bytes()])


def python_tuf_verdict(case_dir: Path, expect: dict) -> dict:
    """Runs python-tuf's ngclient against the case and reports what it concluded."""
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        md_dir = Path(tmp) / "metadata"
        tgt_dir = Path(tmp) / "targets"
        md_dir.mkdir()
        tgt_dir.mkdir()
        try:
            updater = Updater(
                metadata_dir=str(md_dir),
                metadata_base_url=BASE_URL + "metadata/",
                target_dir=str(tgt_dir),
                target_base_url=BASE_URL + "targets/",
                fetcher=DirFetcher(case_dir),
                bootstrap=(case_dir / "metadata" / expect["trusted_root"]).read_bytes(),
            )
            updater.refresh()
        except Exception as e:  # noqa: BLE001 (any failure is a verdict)
            result["refresh"] = "error"
            result["error"] = f"{type(e).__name__}: {e}"
            return result
        result["refresh"] = "ok"
        lookups = []
        for lookup in expect["lookups"]:
            target = lookup["target"]
            entry: dict[str, Any] = {"target": target}
            try:
                info = updater.get_targetinfo(target)
                if info is None:
                    entry["found"] = False
                else:
                    path = updater.download_target(info)
                    data = Path(path).read_bytes()
                    info.verify_length_and_hashes(data)
                    entry["found"] = True
            except Exception as e:  # noqa: BLE001
                entry["error"] = f"{type(e).__name__}: {e}"
            lookups.append(entry)
        result["lookups"] = lookups
    return result


def agrees(expect: dict, py: dict) -> list[str]:
    """Differences between expect.json and python-tuf's verdict (empty: they agree)."""
    diffs = []
    if expect["refresh"] != py["refresh"]:
        diffs.append(f"refresh: expected {expect['refresh']}, python-tuf {py}")
        return diffs
    if expect["refresh"] == "error":
        cls = py["error"].split(":", 1)[0]
        if cls not in RULE_TO_PYTHON.get(expect["rule"], set()):
            diffs.append(f"refresh error: expected rule {expect['rule']}, python-tuf {cls}")
        return diffs
    for want, got in zip(expect["lookups"], py["lookups"], strict=True):
        if "found_in" in want:
            ok = got.get("found") is True
        elif want["rule"] == "target-not-found":
            ok = got.get("found") is False
        else:
            ok = got.get("error", "").split(":", 1)[0] in RULE_TO_PYTHON.get(want["rule"], set())
        if not ok:
            diffs.append(f"lookup {want!r}: python-tuf {got!r}")
    return diffs


# Patterns and paths for a differential check of delegation path matching (fnmatch per
# "/"-separated part): python-tuf's DelegatedRole.is_delegated_path decides, rampart-core must
# agree. Covers "*" not crossing "/", "?", classes with ranges, negation, "]" first, unclosed
# "[", backslashes, empty parts and non-ASCII.
PATH_PATTERNS = [
    "*", "*.bin", "a/*", "a/*/c", "a/b*", "*/*", "a?c", "?", "[abc]x", "[!abc]x", "[a-c]x",
    "[]]x", "[!]]x", "x[", "x[a", "[", "[]", "[!]", "a\\*b", "**", "a/**/c", "", "a//b",
    "\u00e9*", "e\u0301*", "[\u00e9]", "*.[ch]", "[z-a]x", "[a-]x", "[-a]x", "[--0]", "[!a-c]",
    "a[b-d-f]", "*a*a*b", "[[]x", "[^a]x", "[\\]x",
]
PATH_TARGETS = [
    "", "a", "x", "ax", "bx", "]x", "!x", "[x", "^x", "-x", "\\x", "x[", "x[a", "a/b", "a/b/c",
    "a/bb", "a.bin", "dir/a.bin", "abc", "a\\zb", "\u00e9", "e\u0301", "\u00e9.txt", "/a", "a/",
    "file.c", "file.h", "a//b", "-", "/", "0", "ae", "aaab", "a-", "[]", "[!]", "d", "b",
]


def write_path_patterns(out: Path) -> int:
    """python-tuf's verdict for every (pattern, path) pair, for rampart-core to match."""
    verdicts = []
    for pattern in PATH_PATTERNS:
        role = DelegatedRole("r", [], 1, False, paths=[pattern])
        for path in PATH_TARGETS:
            verdicts.append([pattern, path, role.is_delegated_path(path)])
    doc = {
        "description": "python-tuf DelegatedRole.is_delegated_path(path) with paths=[pattern]",
        "python": sys.version.split()[0],
        "verdicts": verdicts,
    }
    # One verdict per line: readable, and small diffs.
    body = json.dumps({k: v for k, v in doc.items() if k != "verdicts"}, ensure_ascii=False)
    lines = ",\n  ".join(json.dumps(v, ensure_ascii=False) for v in verdicts)
    text = body[:-1] + ', "verdicts": [\n  ' + lines + "\n]}\n"
    json.loads(text)
    (out / "path-patterns.json").write_text(text, encoding="utf-8")
    return len(verdicts)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    failures = 0
    names = []
    for make in CASES:
        expect = make(out)
        name = expect["case"]
        names.append(name)
        case_dir = out / name
        py = python_tuf_verdict(case_dir, expect)
        diffs = agrees(expect, py)
        known = KNOWN_PYTHON_TUF_DIVERGENCES.get(name)
        py["agrees"] = not diffs
        if known:
            py["known_divergence"] = known
        expect["python_tuf"] = py
        (case_dir / "expect.json").write_text(
            json.dumps(expect, indent=2, ensure_ascii=False, sort_keys=False) + "\n",
            encoding="utf-8",
        )
        if diffs and not known:
            failures += 1
            status = "PYTHON-TUF DISAGREES: " + "; ".join(diffs)
        elif known and not diffs:
            failures += 1
            status = "listed as a known divergence, but python-tuf now agrees: update the list"
        elif known:
            status = "python-tuf diverges (known): " + "; ".join(diffs)
        else:
            status = "python-tuf agrees"
        verdict = expect["refresh"] + (f" ({expect['rule']})" if "rule" in expect else "")
        print(f"{name:36} {verdict:24} {len(expect['lookups']):2} lookups  {status}")
    pairs = write_path_patterns(out)
    print(f"{pairs} path-pattern verdicts written to {out / 'path-patterns.json'}")
    print(f"{len(names)} cases written to {out}; {failures} unexpected python-tuf verdict(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)
