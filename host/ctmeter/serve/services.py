# SPDX-License-Identifier: MIT
"""Throwaway local servers for tests and benchmarks: PostgreSQL and mosquitto on loopback.

    with TempPostgres() as pg:   pg.url("dbname")  /  pg.create_db("t1") -> url
    with TempMosquitto() as mq:  mq.url            # "mqtt://127.0.0.1:<port>"

Both run from a fresh temporary directory on a free port and are removed on exit. PostgreSQL
refuses to run as root, so when we are root its files belong to the `postgres` system user and
the server process runs as that user. The programs come from the system (tests/services/install.sh).
"""

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time


class ServiceError(RuntimeError):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port, proc, what, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"{what} did not open port {port} within {timeout} s")


def _stop(proc, sig=signal.SIGTERM):
    if proc and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def postgres_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise ServiceError("PostgreSQL is not installed: run tests/services/install.sh")
    return os.path.dirname(found[-1])


class TempPostgres:
    """A private PostgreSQL cluster. durable=False turns fsync off (tests); the bench keeps it."""

    user = "ctmeter"

    def __init__(self, durable=False):
        self.durable = durable
        self.proc = None
        self.dir = None
        self.port = None

    @staticmethod
    def _owner():
        # Popen(user=) switches user in the child itself, so signals reach postgres directly
        return {"user": "postgres", "group": "postgres", "extra_groups": []} \
            if os.geteuid() == 0 else {}

    def start(self):
        bindir = postgres_bin()
        self.dir = tempfile.mkdtemp(prefix="ctmeter-pg-")
        data = os.path.join(self.dir, "data")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o700)
        subprocess.run(
            [f"{bindir}/initdb", "-D", data, "-U", self.user, "--auth=trust",
             "-E", "UTF8", "--no-locale", "--no-sync"], **self._owner(),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/")
        self.port = free_port()
        opts = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                "-c", "max_connections=100", "-c", "shared_buffers=64MB"]
        if not self.durable:
            opts += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                     "-c", "full_page_writes=off"]
        self.log = open(os.path.join(self.dir, "postgres.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [f"{bindir}/postgres", "-D", data, "-p", str(self.port)] + opts, **self._owner(),
            stdout=self.log, stderr=subprocess.STDOUT, cwd="/")
        _wait_port(self.port, self.proc, "postgres")
        self._wait_ready()
        return self

    def _wait_ready(self, timeout=30):
        import psycopg

        end = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)

    def url(self, dbname="postgres"):
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_db(self, name):
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self):
        _stop(self.proc, signal.SIGINT)  # SIGINT = fast shutdown
        if self.dir:
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class TempMosquitto:
    def __init__(self):
        self.proc = None
        self.dir = None
        self.port = None

    def start(self):
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(exe):
            raise ServiceError("mosquitto is not installed: run tests/services/install.sh")
        self.dir = tempfile.mkdtemp(prefix="ctmeter-mq-")
        self.port = free_port()
        conf = os.path.join(self.dir, "mosquitto.conf")
        with open(conf, "w") as fh:
            fh.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                     "persistence false\nlog_dest stderr\nlog_type error\n")
        os.chmod(self.dir, 0o755)
        os.chmod(conf, 0o644)
        self.proc = subprocess.Popen([exe, "-c", conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, cwd="/")
        _wait_port(self.port, self.proc, "mosquitto")
        return self

    @property
    def url(self):
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self):
        _stop(self.proc)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
