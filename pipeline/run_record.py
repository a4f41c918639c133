"""OUTPUT/run.json: what a `mtrank run` was given and what it made, so a pushed model can be traced
back to its data, code and config."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sys
import time

PACKAGES = (
    "mtrank",
    "tensorflow",
    "keras",
    "tensorflow-transform",
    "tfx-bsl",
    "apache-beam",
    "kfp",
    "tensorflow-serving-api",
    "numpy",
)


def package_versions() -> dict:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def fingerprint(path: str) -> dict:
    """sha256 over the names and bytes of the files under `path` (one file or a folder); a URL
    (gs://...) is not read again here: its record says so."""
    if "://" in path:
        return {"skipped": "remote data is not fingerprinted"}
    files = (
        [path]
        if os.path.isfile(path)
        else sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
    )
    digest = hashlib.sha256()
    size = 0
    for file in files:
        digest.update(os.path.relpath(file, path).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
    return {"sha256": digest.hexdigest(), "files": len(files), "bytes": size}


def write(output: str, record: dict) -> str:
    """Writes OUTPUT/run.json (atomically) with the package versions and the time added."""
    record = {
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "packages": package_versions(),
        **record,
    }
    path = os.path.join(output, "run.json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2, default=str)
    os.replace(path + ".tmp", path)
    return path
