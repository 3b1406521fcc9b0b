"""Handshake tokens, limits, the log listener, faults, and secrets that stay secret."""

import json
import re
import signal
import threading
import time
import uuid

import pytest
import requests
import socketio

from conftest import (FIXTURE, SECRET, Client, Crowd, Server, access_token, connect_db, fixture_copy,
                      sequelize_now, token, user, wait_for, SEQUELIZE_DATE)


def init_for(name):
    return {"userId": user(name)["id"], "username": name}


# --- authentication at the handshake ---------------------------------------------------------

@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_connect_auth_payload(shared_server, clients, transport):
    c = clients(shared_server.url, transports=[transport], auth={"token": token("legacy_tom")})
    assert c.next("init") == init_for("tom")


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_bearer_header(shared_server, clients, transport):
    c = clients(shared_server.url, transports=[transport], headers={"Authorization": f"Bearer {token('apikey_tom_active')}"})
    assert c.next("init") == init_for("tom")


def test_query_token(shared_server, clients):
    c = clients(f"{shared_server.url}?token={token('legacy_maria')}", path="audiobookshelf/socket.io")
    got = c.next("init")
    assert got["username"] == "maria" and "usersOnline" in got


def test_bad_handshake_tokens_fail_and_stay_connected(shared_server, clients):
    for kw in ({"auth": {"token": 5}}, {"auth": {"token": "garbage"}},
               {"headers": {"Authorization": "Bearer garbage"}}, {"auth": {"token": token("legacy_olaf")}}):
        c = clients(shared_server.url, **kw)
        expected = "Invalid user" if "auth" in kw and kw["auth"]["token"] == token("legacy_olaf") else "Invalid token"
        assert c.next("auth_failed") == {"message": expected}
        assert c.sio.connected
        assert c.auth(token("legacy_sara")) == init_for("sara"), "and may authenticate with an auth event"


def test_no_handshake_token_means_no_reply(shared_server, clients):
    c = clients(shared_server.url, auth={"other": 1})
    c.none("auth_failed", wait=0.3)
    c.none("init", wait=0.0)


# --- limits ---------------------------------------------------------------------------------

def test_eleventh_attempt_in_ten_seconds_is_refused(shared_server, clients):
    c = clients(shared_server.url)
    for _ in range(12):
        c.emit("auth", "garbage")
    time.sleep(1.0)
    got = c.received("auth_failed")
    assert got == [{"message": "Invalid token"}] * 10 + [{"message": "Too many attempts"}] * 2
    c.emit("auth", token("legacy_tom"))
    got, _ = wait_for(lambda: c.received("auth_failed")[12:], 3)
    assert got == [{"message": "Too many attempts"}], "even a good token, without reading the database"
    assert c.received("init") == []


def test_connections_per_address(workdir):
    srv = Server(fixture_copy(workdir), args=["--max-connections-per-ip", "2", "--trust-proxy"])
    try:
        a = Client(srv.url)
        b = Client(srv.url)
        with pytest.raises(socketio.exceptions.ConnectionError):
            Client(srv.url)
        other = Client(srv.url, headers={"X-Forwarded-For": "203.0.113.9"})
        assert other.auth(token("legacy_tom")) == init_for("tom")
        a.close()
        time.sleep(0.3)
        Client(srv.url).close()  # the freed slot is usable again
        b.close(), other.close()
    finally:
        srv.stop()


def test_auth_timeout(workdir):
    srv = Server(fixture_copy(workdir), args=["--auth-timeout", "1"])
    try:
        idle = Client(srv.url)
        good = Client(srv.url)
        good.auth(token("legacy_tom"))
        gone, _ = wait_for(lambda: not idle.sio.connected, 4)
        assert gone, "an unauthenticated socket is disconnected after the deadline"
        assert good.sio.connected
    finally:
        srv.stop()


# --- the log listener -----------------------------------------------------------------------

def test_log_listener(workdir):
    path = fixture_copy(workdir)
    srv = Server(path, env={"RUST_LOG": "debug", "DB_BUSY_TIMEOUT": "0.2"})
    try:
        admin = Client(srv.url)
        admin.auth(token("legacy_admin"))
        warn_only = Client(srv.url)
        warn_only.auth(token("legacy_maria"))
        tom = Client(srv.url)
        tom.auth(token("legacy_tom"))
        admin.emit("set_log_listener", 2)
        warn_only.emit("set_log_listener", 3)
        tom.emit("set_log_listener", 0)
        for bad in ("x", 9, -1, None, {"level": 1}):
            Client(srv.url).close()
        time.sleep(0.3)
        Client(srv.url).auth(token("legacy_lena"))  # logs "socket authenticated" at INFO
        line, _ = wait_for(lambda: [l for l in admin.received("log") if "socket authenticated" in l["message"]], 3)
        assert line, admin.received("log")
        entry = line[0]
        assert set(entry) == {"timestamp", "source", "message", "levelName", "level"}
        assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$", entry["timestamp"])
        assert entry["levelName"] == "INFO" and entry["level"] == 2
        assert all(l["level"] >= 2 for l in admin.received("log"))
        assert all(l["source"].startswith("src/") for l in admin.received("log")), "only abs-socket's own lines"
        assert not [l for l in warn_only.received("log") if l["level"] < 3]
        assert tom.received("log") == [], "admins only"
        # A WARN line reaches both listeners: an auth that meets a locked database produces one.
        holder = hold_exclusive(path, 1.5)
        Client(srv.url).auth(token("legacy_lena"), expect="auth_failed")
        holder.join()
        got, _ = wait_for(lambda: [l for l in warn_only.received("log") if l["levelName"] == "WARN"], 3)
        assert got
        assert [l for l in admin.received("log") if l["levelName"] == "WARN"]
        admin.emit("remove_log_listener")
        time.sleep(0.3)
        n = len(admin.received("log"))
        Client(srv.url).auth(token("legacy_sara"))
        time.sleep(0.5)
        assert len(admin.received("log")) == n, "remove_log_listener stops the events"
        # Invalid levels start nothing.
        admin.emit("set_log_listener", 17)
        admin.emit("set_log_listener", "2")
        Client(srv.url).auth(token("legacy_sara"))
        time.sleep(0.5)
        assert len(admin.received("log")) == n
    finally:
        srv.stop()


# --- faults ---------------------------------------------------------------------------------

def hold_exclusive(path, seconds):
    """Holds an exclusive lock on the database for `seconds`, in a thread; returns that thread
    once the lock is taken."""
    started = threading.Event()

    def hold():
        db = connect_db(path)
        db.execute("BEGIN EXCLUSIVE")
        started.set()
        time.sleep(seconds)
        db.execute("COMMIT")
        db.close()

    holder = threading.Thread(target=hold)
    holder.start()
    started.wait()
    return holder


def test_a_lock_held_for_five_seconds_delays_init_but_loses_nothing(workdir):
    path = fixture_copy(workdir)
    srv = Server(path)
    try:
        holder = hold_exclusive(path, 5)
        names = ["admin", "maria", "tom", "sara", "lena"]
        t0 = sequelize_now(-0.001)
        cs = []
        for name in names * 4:
            c = Client(srv.url)
            c.emit("auth", token(f"legacy_{name}"))
            cs.append((name, c))
        for name, c in cs:
            got = c.next("init", timeout=15)
            assert got["username"] == name
        holder.join()
        t1 = sequelize_now(0.001)
        db = connect_db(path)
        for name in names:
            seen, _ = wait_for(lambda: (db.execute("SELECT lastSeen FROM users WHERE username = ?", (name,)).fetchone()[0] or "") >= t0, 3)
            row = db.execute("SELECT lastSeen, updatedAt FROM users WHERE username = ?", (name,)).fetchone()
            assert re.match(SEQUELIZE_DATE, row["lastSeen"]) and t0 <= row["lastSeen"] <= t1, (name, row["lastSeen"])
            assert row["updatedAt"] == row["lastSeen"]
        for _, c in cs:
            c.close()
    finally:
        assert srv.stop() == 0


def test_past_the_busy_timeout_auth_says_busy_and_writes_are_retried(workdir):
    path = fixture_copy(workdir)
    srv = Server(path, args=[], env={"DB_BUSY_TIMEOUT": "0.5"})
    try:
        early = Client(srv.url)
        # The lock starts right after this auth: its lastSeen write must wait and be retried.
        early.emit("auth", token("legacy_tom"))
        early.next("init")
        holder = hold_exclusive(path, 3)
        late = Client(srv.url)
        late.emit("auth", token("legacy_sara"))
        assert late.next("auth_failed", timeout=5) == {"message": "Server busy, try again"}
        assert requests.get(f"{srv.url}/healthz", timeout=5).status_code == 503
        holder.join()
        assert late.auth(token("legacy_sara"))["username"] == "sara", "serving again after the lock"
        db = connect_db(path)
        ok, _ = wait_for(lambda: db.execute("SELECT lastSeen FROM users WHERE username = 'tom'").fetchone()[0] != "2026-12-04 13:41:15.866 +00:00", 5)
        assert ok, "the lastSeen write that met the lock was retried"
        early.close(), late.close()
    finally:
        assert srv.stop() == 0


def test_an_auth_queued_behind_a_locked_lookup_waits_only_its_own_busy_timeout(workdir):
    # User lookups run one batch at a time; an auth that arrives while a batch waits on the lock
    # must still get its answer one busy timeout after it was sent, not after that batch's
    # timeout and then its own (2.0 s against 3.5 s here).
    path = fixture_copy(workdir)
    srv = Server(path, args=[], env={"DB_BUSY_TIMEOUT": "2"})
    try:
        holder = hold_exclusive(path, 5)
        first, second = Client(srv.url), Client(srv.url)
        first.emit("auth", token("legacy_tom"))
        time.sleep(0.5)
        sent = time.monotonic()
        second.emit("auth", token("legacy_sara"))
        assert second.next("auth_failed", timeout=6) == {"message": "Server busy, try again"}
        waited = time.monotonic() - sent
        assert 1.8 <= waited < 2.75, f"answered {waited:.2f} s after it was sent"
        assert first.next("auth_failed", timeout=1) == {"message": "Server busy, try again"}
        holder.join()
        assert second.auth(token("legacy_sara"))["username"] == "sara", "serving again after the lock"
        first.close(), second.close()
    finally:
        assert srv.stop() == 0


def test_sigterm_during_load_exits_zero(workdir):
    srv = Server(fixture_copy(workdir))
    crowd = Crowd(srv.url, 300, [token("legacy_tom"), token("legacy_admin")])
    watcher = Client(srv.url, transports=["websocket"])
    watcher.auth(token("legacy_lena"))
    extra = [Client(srv.url) for _ in range(5)]
    for c in extra:
        c.emit("auth", token("legacy_sara"))
    code = srv.stop(signal.SIGTERM)
    crowd.close()
    assert code == 0
    gone, _ = wait_for(lambda: watcher.disconnect_reason, 5)
    assert gone == socketio.Client.reason.SERVER_DISCONNECT, "clients are told the server is closing"
    assert "panicked" not in srv.log(), srv.log()[-3000:]
    assert "stopped" in srv.log()


# --- secrets --------------------------------------------------------------------------------

def test_no_secret_in_any_log_at_trace(workdir):
    path = fixture_copy(workdir)
    srv = Server(path, env={"RUST_LOG": "trace"})
    secrets = [t["jwt"] for t in FIXTURE["tokens"]] + [SECRET]
    try:
        listener = Client(srv.url)
        listener.auth(token("legacy_admin"))
        listener.emit("set_log_listener", 0)
        minted = access_token("tom")
        secrets.append(minted)
        Client(srv.url, auth={"token": token("legacy_sara")}).next("init")
        Client(srv.url, headers={"Authorization": f"Bearer {token('apikey_tom_active')}"}).next("init")
        Client(f"{srv.url}?token={token('legacy_lena')}").next("init")
        c = Client(srv.url, transports=["polling"])
        c.auth(minted)
        for label in ("refresh_admin", "legacy_olaf", "apikey_sara_inactive", "apikey_maria_expired", "apikey_lena_deactivated"):
            Client(srv.url).auth(token(label), expect="auth_failed")
        Client(srv.url).auth(token("legacy_tom") + " ", expect="auth_failed")
        requests.post(f"{srv.url}/api/socket/emit", json={"event": "x", "to": {"all": True}},
                      headers={"Authorization": f"Bearer {token('apikey_admin_active')}"})
        requests.post(f"{srv.url}/api/socket/emit?token={token('legacy_admin')}", json={"event": "x", "to": {"all": True}},
                      headers={"Authorization": f"Bearer {token('legacy_tom')}"})
        requests.get(f"{srv.url}/healthz?token={token('legacy_maria')}")
        time.sleep(1)
        logs = json.dumps(listener.received("log"))
        assert len(listener.received("log")) > 5, "the log listener did capture lines"
    finally:
        srv.stop()
    out = srv.log()
    assert " DEBUG " in out, "verbose logging was on"
    for s in secrets:
        for part in (s, s.split(".")[-1]):  # whole token, and its signature alone
            assert part not in out, f"leaked in server output: {part[:20]}..."
            assert part not in logs, f"leaked in a log event: {part[:20]}..."
