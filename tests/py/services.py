"""Real Redis and PostgreSQL servers for the tests, on 127.0.0.1, on free ports, in throwaway folders.

Started from Debian's packages (tests/run installs them when missing and it runs as root). As root,
PostgreSQL runs as the `postgres` user the package creates: initdb and postgres refuse root.
Each server is stopped by its fixture's finalizer, also when a test fails.
"""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port, proc, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


class RedisServer:
    """A redis-server with no persistence: a restart starts it empty, as after a crash."""

    def __init__(self):
        self.binary = shutil.which("redis-server")
        if not self.binary:
            raise RuntimeError("redis-server is missing: apt-get install redis-server (tests/run does it as root)")
        self.dir = Path(tempfile.mkdtemp(prefix="abs-socket-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = None
        self.start()

    def start(self):
        self.log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)],
            stdout=self.log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, "redis-server")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bin(name):
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"{name} is missing: apt-get install postgresql (tests/run does it as root)")
    return candidates[-1]


class PostgresServer:
    """A throwaway PostgreSQL cluster with trust authentication on 127.0.0.1."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="abs-socket-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        as_root = os.geteuid() == 0
        self.prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
        if as_root:
            shutil.chown(self.dir, "postgres")
            os.chmod(self.dir, 0o755)
        subprocess.run([*self.prefix, _pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        self.log = open(self.dir / "postgres.log", "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, _pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(self.dir), "-c", "fsync=off", "-c", "max_connections=300"],
            stdout=self.log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, "postgres")
        self.counter = 0

    def url(self, database="postgres"):
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql, database="postgres"):
        return subprocess.run([_pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-d", self.url(database),
                               "-c", sql], check=True, capture_output=True, text=True).stdout

    def new_database(self):
        """A new empty database; returns its URL."""
        self.counter += 1
        name = f"abs_{os.getpid()}_{self.counter}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self):
        if self.proc.poll() is None:
            subprocess.run([*self.prefix, _pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                           capture_output=True)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
