# SPDX-License-Identifier: MIT
"""`ctmeter sim` end to end: virtual board -> HTTP -> collector on SQLite -> printed readings."""

import re
import subprocess
import sys


def test_sim_runs_the_whole_chain(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ctmeter", "sim", "--clock", "fast", "--duration", "5",
         "--http", "127.0.0.1:0", "--dir", str(tmp_path / "sim"), "--fresh"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"virtual board on /dev/pts/\d+", out)
    assert re.search(r"dashboard http://127\.0\.0\.1:\d+/", out)
    readings = re.findall(r"reading seq=(\d+) ch1 ([\d.]+) A ([\d.]+) W", out)
    assert len(readings) >= 3
    seqs = [int(s) for s, _, _ in readings]
    assert seqs == sorted(seqs)
    assert (tmp_path / "sim" / "ctmeter.db").exists()
    assert (tmp_path / "sim" / "flash" / "config.json").exists()
    token = (tmp_path / "sim" / "admin-token").read_text().strip()
    assert token and token not in out + proc.stderr  # secrets never printed
    assert (tmp_path / "sim" / "admin-token").stat().st_mode & 0o077 == 0
