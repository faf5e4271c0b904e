#!/usr/bin/env python3
"""python-tuf updates from a Rampart image repository over HTTP, as a CDN serves it.

Usage: tuf_over_http.py BASE_URL ROOT_JSON TARGET SHA256 [TARGET SHA256 ...]

BASE_URL is where `metadata/` and `targets/` are (the bucket of `[image_store]`, served
path-style, or a server's `/image/`). ROOT_JSON is the trusted root to start from. For every
TARGET, ngclient (python-tuf's own HTTP fetcher, no Rampart code) refreshes the metadata,
finds the target, downloads it and checks its SHA-256.

Negative control: the same refresh must refuse a root it does not trust (a root with one
signature byte flipped), so the run cannot pass vacuously.

Prints one line per target and a summary; exits non-zero on any failure.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

from tuf.api import exceptions
from tuf.ngclient import Updater


def updater(base: str, root: bytes, work: Path) -> Updater:
    meta = work / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    (work / "downloads").mkdir(exist_ok=True)
    return Updater(
        metadata_dir=str(meta),
        metadata_base_url=base + "metadata/",
        target_base_url=base + "targets/",
        target_dir=str(work / "downloads"),
        bootstrap=root,
    )


def main() -> int:
    if len(sys.argv) < 5 or len(sys.argv) % 2 == 0:
        print(__doc__, file=sys.stderr)
        return 2
    base = sys.argv[1].rstrip("/") + "/"
    root = Path(sys.argv[2]).read_bytes()
    wanted = list(zip(sys.argv[3::2], sys.argv[4::2]))
    with tempfile.TemporaryDirectory() as tmp:
        up = updater(base, root, Path(tmp) / "ok")
        up.refresh()
        for name, sha in wanted:
            info = up.get_targetinfo(name)
            if info is None:
                print(f"FAIL {name}: not listed", file=sys.stderr)
                return 1
            path = up.download_target(info)
            got = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            if got != sha:
                print(f"FAIL {name}: sha256 {got}, expected {sha}", file=sys.stderr)
                return 1
            print(f"ok {name} {info.length} bytes")

        # Negative control: a root whose signature was altered is not trusted.
        doc = json.loads(root)
        sig = doc["signatures"][0]["sig"]
        doc["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
        for s in doc["signatures"][1:]:
            s["sig"] = "00" * (len(s["sig"]) // 2)
        forged = json.dumps(doc).encode()
        try:
            updater(base, forged, Path(tmp) / "forged").refresh()
        except (exceptions.RepositoryError, ValueError) as e:
            print(f"ok negative control: {type(e).__name__}")
        else:
            print("FAIL negative control: an altered root was trusted", file=sys.stderr)
            return 1
    print(f"python-tuf: {len(wanted)} target(s) verified from {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
