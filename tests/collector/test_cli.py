# SPDX-License-Identifier: MIT
"""`ctmeter serve` end to end in a subprocess: starts from a config file, takes a reading,
never prints a token, stops cleanly on SIGTERM; bad configs give a clear error."""

import os
import signal
import subprocess
import sys

from ctmeter.serve.services import free_port

from tests.collector.conftest import ADMIN, TOKENS, Client


def run_serve(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "ctmeter", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})))


def test_serve_from_config_file(tmp_path):
    conf = tmp_path / "serve.toml"
    conf.write_text(f'admin_token = "{ADMIN}"\ntariff_per_kwh = 0.3\n[devices]\n'
                    f'm1 = "{TOKENS["m1"]}"\n[alerts]\npower_above_w = 5000\n')
    port = free_port()
    proc = run_serve(["--config", str(conf), "--db", f"sqlite:///{tmp_path}/c.db",
                      "--http", f"127.0.0.1:{port}"])
    try:
        lines = []
        while not any("dashboard" in line for line in lines):
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
        assert f"http://127.0.0.1:{port}/" in lines[-1]
        c = Client(f"http://127.0.0.1:{port}")
        assert c.post("/api/measurements", {"deviceId": "m1", "current": 1, "voltage": 230},
                      TOKENS["m1"])[0] == 201
        assert c.get("/api/usage/today")[1]["tariffPerKwh"] == 0.3
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    for secret in (ADMIN, *TOKENS.values()):
        assert secret not in "".join(lines) + out + err


def test_serve_refuses_bad_config(tmp_path):
    proc = run_serve(["--db", f"sqlite:///{tmp_path}/c.db"], env={"CTMETER_ADMIN_TOKEN": ""})
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1 and "no admin token" in err
    conf = tmp_path / "bad.toml"
    conf.write_text('admin_token = "long-enough-token"\ntarif_per_kwh = 0.3\n')
    proc = run_serve(["--config", str(conf)])
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1 and "unknown config key 'tarif_per_kwh'" in err
    assert "long-enough-token" not in err
