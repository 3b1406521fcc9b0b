"""Starts the real abs-socket binary on 127.0.0.1 and drives it with python-socketio clients.

Each server runs on its own copy of the real audiobookshelf 2.36 database in
../shared/fixtures/abs-2.36 (or on a fresh file), on a free port. The database is read and
changed with a bundled SQLite >= 3.44, as audiobookshelf would change it.
"""

import base64
import hashlib
import hmac
import json
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
import socketio
from pysqlite3 import dbapi2 as sqlite3

REPO = Path(__file__).resolve().parents[2]
FIXTURE_DIR = REPO.parent / "shared" / "fixtures" / "abs-2.36"
FIXTURE = json.loads((FIXTURE_DIR / "tokens.json").read_text())
BIN = Path(os.environ.get("ABS_SOCKET_BIN", REPO / "target" / "debug" / "abs-socket"))
SECRET = FIXTURE["jwtSecret"]
SEQUELIZE_DATE = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3} \+00:00$"


def token(label):
    return next(t["jwt"] for t in FIXTURE["tokens"] if t["label"] == label)


def user(name):
    return next(u for u in FIXTURE["users"] if u["username"] == name)


def api_key_id(label):
    return next(t["apiKeyId"] for t in FIXTURE["tokens"] if t["label"] == label)


def b64(data):
    if not isinstance(data, bytes):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(claims, secret=SECRET, alg="HS256", header=None):
    """HS256/384/512 over the UTF-8 bytes of the secret, as audiobookshelf signs."""
    head = f"{b64(header or {'alg': alg, 'typ': 'JWT'})}.{b64(claims)}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    sig = hmac.new(secret.encode(), head.encode(), digest).digest()
    return f"{head}.{b64(sig)}"


def access_token(name, lifetime=3600, **extra):
    u = user(name)
    iat = int(time.time())
    claims = {"userId": u["id"], "username": name, "jti": str(uuid.uuid4()), "type": "access",
              "iat": iat, "exp": iat + lifetime}
    claims.update(extra)
    return sign(claims)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sequelize_now(offset_s=0.0):
    t = time.time() + offset_s
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d} +00:00"


class Server:
    """One abs-socket process, on a SQLite file (`db_path`) or a PostgreSQL store (`pg`, a `PgStore`)."""

    def __init__(self, db_path, env=None, args=(), fresh_dir=None, log_name="server.log", pg=None, healthy=True):
        self.pg = pg
        self.dir = Path(db_path).parent if db_path else Path(fresh_dir)
        self.db_path = Path(db_path) if db_path else self.dir / "absdatabase.sqlite"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(BIN)]
        if pg:
            cmd += ["--database", pg.url]
        elif db_path:
            cmd += ["--database", str(db_path)]
        cmd += ["serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        full_env = {**os.environ, "CONFIG_PATH": str(self.dir), "RUST_LOG": os.environ.get("RUST_LOG", "info")}
        full_env.pop("JWT_SECRET_KEY", None)
        full_env.update(env or {})
        self.log_path = self.dir / log_name
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.dir, env=full_env, stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"abs-socket exited early:\n{self.log()}")
            try:
                res = requests.get(f"{self.url}/healthz", timeout=1)
                if res.ok or not healthy:  # healthy=False: any answer will do
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"abs-socket did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def db(self):
        return self.pg.connect() if self.pg else connect_db(self.db_path)

    def cli(self, *args, check=True):
        return run_cli(self.pg.url if self.pg else self.db_path, *args, check=check)

    def stop(self, sig=None):
        if self.proc.poll() is None:
            self.proc.terminate() if sig is None else self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log_file.close()
        return code


def connect_db(path):
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


def run_cli(db_path, *args, check=True, env=None):
    full_env = {**os.environ, "RUST_LOG": "warn"}
    full_env.pop("JWT_SECRET_KEY", None)
    full_env.update(env or {})
    res = subprocess.run([str(BIN), "--database", str(db_path), *args], capture_output=True, text=True, env=full_env, timeout=60)
    if check and res.returncode != 0:
        raise AssertionError(f"abs-socket {' '.join(args)} failed: {res.stderr}")
    return res


class Client:
    """A python-socketio client that records every event it receives."""

    def __init__(self, url, path="socket.io", transports=None, auth=None, headers=None):
        self.sio = socketio.Client(reconnection=False)
        self.events = []
        self.queues = {}
        self.lock = threading.Lock()

        @self.sio.on("*")
        def any_event(event, *args):
            with self.lock:
                self.events.append((event, args[0] if args else None))
                self.queues.setdefault(event, queue.Queue()).put(args[0] if args else None)

        self.disconnect_reason = None

        @self.sio.event
        def disconnect(reason=None):
            self.disconnect_reason = reason

        self.sio.connect(url, socketio_path=path, transports=transports, auth=auth, headers=headers or {}, wait_timeout=10)

    def q(self, event):
        with self.lock:
            return self.queues.setdefault(event, queue.Queue())

    def next(self, event, timeout=5):
        try:
            return self.q(event).get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {event} within {timeout}s; got {[e for e, _ in self.events]}") from None

    def none(self, event, wait=0.5):
        """Asserts that no `event` arrives within `wait` seconds from now."""
        with self.lock:
            start = len(self.events)
        time.sleep(wait)
        with self.lock:
            got = [d for e, d in self.events[start:] if e == event]
        assert not got, f"unexpected {event}: {got}"

    def received(self, event):
        with self.lock:
            return [d for e, d in self.events if e == event]

    def emit(self, event, *data):
        self.sio.emit(event, *data) if data else self.sio.emit(event)

    def auth(self, tok, expect="init", timeout=5):
        self.emit("auth", tok)
        return self.next(expect, timeout)

    def close(self):
        try:
            self.sio.disconnect()
        except Exception:
            pass


class PgStore:
    """A new PostgreSQL database holding the fixture's users, keys and secret (`abs-socket import`)."""

    def __init__(self, postgres):
        self.url = postgres.new_database()
        run_cli(self.url, "import", str(FIXTURE_DIR / "absdatabase.sqlite"))

    def connect(self):
        return PgConnection(self.url)


class PgConnection:
    """The few calls the tests make on a sqlite3 connection, on PostgreSQL: `?` placeholders,
    rows readable by column name. Test SQL that runs on both quotes identifiers and writes
    booleans as TRUE/FALSE, which SQLite stores as 1/0, audiobookshelf's own format."""

    def __init__(self, url):
        import psycopg
        from psycopg.rows import dict_row
        self.conn = psycopg.connect(url, autocommit=True, row_factory=dict_row)

    def execute(self, sql, params=()):
        return self.conn.execute(sql.replace("?", "%s"), params)

    def close(self):
        self.conn.close()


BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres():
    from services import PostgresServer
    pg = PostgresServer()
    yield pg
    pg.close()


def start_on(backend, workdir, request, **kw):
    """A server on `backend`: a copy of the fixture database, or a PostgreSQL store filled from it."""
    if backend == "postgres":
        return Server(None, fresh_dir=workdir, pg=PgStore(request.getfixturevalue("postgres")), **kw)
    return Server(fixture_copy(workdir), **kw)


@pytest.fixture
def workdir():
    d = Path(tempfile.mkdtemp(prefix="abs-socket-py-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def fixture_copy(workdir):
    dst = workdir / "absdatabase.sqlite"
    shutil.copyfile(FIXTURE_DIR / "absdatabase.sqlite", dst)
    return dst


@pytest.fixture
def server(workdir):
    """A server of its own on a copy of the fixture database (for tests that change it)."""
    servers = []

    def start(db_path=None, **kw):
        s = Server(db_path or fixture_copy(workdir), **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def shared_server():
    """One server per test module, for tests that only authenticate and read."""
    d = Path(tempfile.mkdtemp(prefix="abs-socket-py-shared-"))
    s = Server(fixture_copy(d))
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def clients():
    made = []

    def make(url, **kw):
        c = Client(url, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


class Crowd:
    """Many authenticated socket.io-client sockets in one Node process (tests/js/crowd.mjs)."""

    def __init__(self, url, count, tokens):
        self.proc = subprocess.Popen(["node", str(REPO / "tests" / "js" / "crowd.mjs"), url, str(count), *tokens],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.count = count
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("crowd exited")
            if line.startswith("failed"):
                raise RuntimeError(f"crowd auth failed: {line}")
            if line.strip() == f"ready {count}":
                return
        raise RuntimeError("crowd not ready in time")

    def received(self, event):
        """How many of the crowd's sockets received `event`."""
        self.proc.stdin.write(event + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        assert line[:2] == ["count", event], line
        return int(line[2])

    def close(self):
        try:
            self.proc.stdin.close()
        except Exception:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def health(srv):
    return requests.get(f"{srv.url}/healthz", timeout=5).json()


def wait_for(predicate, timeout, step=0.02):
    """Polls `predicate` until it is truthy; returns (value, seconds waited)."""
    start = time.time()
    while True:
        value = predicate()
        if value:
            return value, time.time() - start
        if time.time() - start > timeout:
            return value, time.time() - start
        time.sleep(step)
