# SPDX-License-Identifier: MIT
"""Fetch the micropython-lib packages the firmware needs from PyPI, pinned by sha256.

These packages are MicroPython source distributions that pip cannot install (they have no
setup.py), so we take the archive from PyPI's simple index, check its hash and unpack only the
module files into build/vendor/, which deploy copies to the board and the unix port imports.

    python -m ctmeter.vendor          # fetch what is missing
"""

import hashlib
import io
import re
import sys
import tarfile
import urllib.request

from ctmeter.paths import VENDOR

INDEX = "https://pypi.org/simple/{name}/"

# name, version, sha256 of the sdist, module files to take (path inside the archive's top folder)
PACKAGES = [
    (
        "micropython-umqtt-simple",
        "1.3.4",
        "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f",
        ["umqtt/simple.py"],
    ),
]


class VendorError(RuntimeError):
    pass


def _download(name: str, version: str) -> bytes:
    page = urllib.request.urlopen(INDEX.format(name=name), timeout=60).read().decode()
    for href in re.findall(r'href="([^"]+)"', page):
        if f"-{version}.tar.gz" in href:
            return urllib.request.urlopen(href.split("#")[0], timeout=60).read()
    raise VendorError(f"{name} {version} not found on the package index")


def fetch(dest=VENDOR, force=False) -> list:
    """Make sure every pinned module is in `dest`; returns the files written."""
    written = []
    for name, version, sha256, files in PACKAGES:
        targets = [dest / f for f in files]
        if not force and all(t.exists() for t in targets):
            continue
        data = _download(name, version)
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise VendorError(f"{name} {version}: sha256 {got} does not match the pinned {sha256}")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for rel, target in zip(files, targets, strict=True):
                member = next((m for m in tar.getmembers() if m.name.endswith("/" + rel)), None)
                if member is None:
                    raise VendorError(f"{name} {version}: {rel} missing from the archive")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
                written.append(target)
    return written


def main() -> int:
    try:
        for path in fetch():
            print(f"vendored {path}")
    except (VendorError, OSError) as exc:
        print(f"ctmeter: vendor: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
