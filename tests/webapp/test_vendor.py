"""The vendored browser libraries are exactly what scripts/vendor_webapp.sh fetched."""

from __future__ import annotations

import hashlib
from pathlib import Path

VENDOR = (
    Path(__file__).resolve().parents[2] / "services" / "gateway" / "webapp" / "static" / "vendor"
)


def test_vendored_files_match_their_pinned_hashes() -> None:
    pinned = {}
    for line in (VENDOR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        pinned[name.removeprefix("./")] = digest
    present = {
        str(p.relative_to(VENDOR))
        for p in VENDOR.rglob("*")
        if p.is_file() and p.name != "SHA256SUMS"
    }
    assert present == set(pinned), "vendor/ and SHA256SUMS list different files"
    for name, digest in pinned.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    versions = (VENDOR / "VERSIONS").read_text()
    for package in ("preact", "htm", "marked", "dompurify", "uplot"):
        assert f"{package} " in versions and (VENDOR / "licenses" / f"{package}.LICENSE").exists()
