# SPDX-License-Identifier: MIT
"""Where the project's files are, and which MicroPython binary to run.

The toolkit runs from a checkout (editable install): the firmware, board files and
calibration profiles are read from the repository, never from copies.
"""

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEVICE = ROOT / "device"
DEVICE_LIB = DEVICE / "lib"
BOARDS = ROOT / "boards"
CALIBRATION = ROOT / "calibration"
BUILD = ROOT / "build"
VENDOR = BUILD / "vendor"


class MicroPythonNotFound(RuntimeError):
    pass


def micropython_binary() -> str:
    """The MicroPython unix port: $MICROPYTHON if set, else the one installed beside this Python."""
    env = os.environ.get("MICROPYTHON")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise MicroPythonNotFound(f"MICROPYTHON={env} is not an executable file")
        return env
    beside = Path(sys.executable).with_name("micropython")
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found:
        return found
    raise MicroPythonNotFound(
        "no MicroPython unix port found: run `make setup` or set MICROPYTHON=/path/to/micropython"
    )


def micropython_path() -> str:
    """MICROPYPATH for running the firmware from the checkout: device/lib and the vendored libs."""
    return os.pathsep.join([str(DEVICE_LIB), str(VENDOR), ".frozen"])
