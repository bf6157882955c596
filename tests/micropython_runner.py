# SPDX-License-Identifier: MIT
"""Run code on the MicroPython unix port with the firmware's library path.

    mp = MicroPython()
    out = mp.run("from meter import kernels; print(kernels.sum_block(...))", heapsize="64k")

`run` raises MicroPythonFailed (with stdout and stderr) on a non-zero exit.
"""

import os
import subprocess
import tempfile

from ctmeter.paths import micropython_binary, micropython_path


class MicroPythonFailed(AssertionError):
    pass


class MicroPython:
    def __init__(self, binary=None):
        self.binary = binary or micropython_binary()

    def run(self, source: str, heapsize: str = "64k", timeout: float = 120, args=(), env=None):
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(source)
            script = f.name
        try:
            return self.run_file(script, heapsize=heapsize, timeout=timeout, args=args, env=env)
        finally:
            os.unlink(script)

    def run_file(self, script, heapsize="64k", timeout=120, args=(), env=None):
        full_env = dict(os.environ, MICROPYPATH=micropython_path())
        full_env.update(env or {})
        cmd = [self.binary, "-X", f"heapsize={heapsize}", str(script), *map(str, args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
        if proc.returncode != 0:
            raise MicroPythonFailed(
                f"micropython exited {proc.returncode}\n--- stdout\n{proc.stdout}"
                f"\n--- stderr\n{proc.stderr}"
            )
        return proc.stdout
