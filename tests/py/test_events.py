"""CONTRACT sections 2 to 4: replies, re-authentication, and malformed input on every event."""

import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, Client, token, user

MALFORMED = [42, {}, None, [], ["x"], True, "Bearer " + token("legacy_tom"), token("legacy_tom") + " ",
             "x" * 900_000, b"\xff\xfe\x00\x80 not utf-8", {"token": 5}, {"token": None}]
EVENTS = ["auth", "message_all_users", "search_covers", "cancel_scan", "cancel_cover_search", "ping",
          "remove_log_listener", "no_such_event"]


@pytest.mark.parametrize("payload", MALFORMED, ids=lambda p: repr(p)[:30])
def test_malformed_auth_is_invalid_token(shared_server, clients, payload):
    c = clients(shared_server.url)
    c.emit("auth", payload)
    assert c.next("auth_failed") == {"message": "Invalid token"}
    # ...and the socket may try again.
    assert c.auth(token("legacy_tom"))["username"] == "tom"


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_a_900_kb_message_is_within_the_limit_on_both_transports(shared_server, clients, transport):
    c = clients(shared_server.url, transports=[transport])
    c.emit("auth", "y" * 900_000)
    assert c.next("auth_failed", timeout=10) == {"message": "Invalid token"}
    assert c.sio.connected


def test_auth_without_payload(shared_server, clients):
    c = clients(shared_server.url)
    c.emit("auth")
    assert c.next("auth_failed") == {"message": "Invalid token"}


@pytest.mark.parametrize("authenticated", [False, True])
def test_every_event_survives_every_malformed_payload(shared_server, clients, authenticated):
    c = clients(shared_server.url)
    if authenticated:
        c.auth(token("legacy_admin"))
    for event in EVENTS:
        c.emit(event)
        for payload in MALFORMED:
            c.emit(event, payload)
    c.emit("ping")
    assert c.sio.connected
    # The server still serves this socket and the next client.
    deadline = time.time() + 10
    while len(c.received("pong")) < len(MALFORMED) + 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(c.received("pong")) == len(MALFORMED) + 2
    assert clients(shared_server.url).auth(token("legacy_sara"))["username"] == "sara"


def test_ping_pong_without_authentication(shared_server, clients):
    c = clients(shared_server.url)
    c.emit("ping")
    assert c.next("pong") is None


def test_search_covers_answers(shared_server, clients):
    c = clients(shared_server.url)
    c.emit("search_covers", {"requestId": "r1", "title": "Dune"})
    assert c.next("cover_search_error") == {"requestId": "r1", "error": "Unauthorized"}
    c.emit("search_covers")
    assert c.next("cover_search_error") == {"requestId": None, "error": "Unauthorized"}
    c.auth(token("legacy_tom"))
    c.emit("search_covers", {"requestId": "r2"})
    assert c.next("cover_search_error") == {"requestId": "r2", "error": "Invalid request parameters"}
    c.emit("search_covers", {"title": "Dune"})
    assert c.next("cover_search_error") == {"requestId": None, "error": "Invalid request parameters"}
    c.emit("search_covers")
    assert c.next("cover_search_error") == {"requestId": None, "error": "Invalid request parameters"}
    c.emit("search_covers", {"requestId": "r3", "title": "Dune", "author": "Herbert"})
    assert c.next("cover_search_error") == {"requestId": "r3", "error": "Cover search is not available on this server"}
    c.emit("cancel_cover_search", "r3")
    c.none("cover_search_cancelled", wait=0.3)


def test_message_all_users_payload_shapes(shared_server, clients):
    admin = clients(shared_server.url)
    admin.auth(token("legacy_admin"))
    for payload, expected in [({"message": "hi"}, "hi"), ("hi", ""), (None, ""), ({}, ""),
                              ({"message": ""}, ""), ({"message": 0}, ""), ({"message": 7}, 7),
                              ({"message": {"a": 1}}, {"a": 1})]:
        admin.emit("message_all_users", payload) if payload is not None else admin.emit("message_all_users")
        assert admin.next("admin_message") == expected, payload


def test_non_admins_cannot_message_all_users(shared_server, clients):
    tom = clients(shared_server.url)
    tom.auth(token("legacy_tom"))
    tom.emit("message_all_users", {"message": "spam"})
    tom.none("admin_message", wait=0.5)


def test_reauth_as_the_same_user(shared_server, clients):
    admin = clients(shared_server.url)
    admin.auth(token("legacy_admin"))
    tom = clients(shared_server.url)
    tom.auth(token("legacy_tom"))
    assert admin.next("user_online")["id"] == user("admin")["id"]
    assert admin.next("user_online")["id"] == user("tom")["id"]
    assert tom.auth(access_token_for("tom"))["username"] == "tom"
    assert admin.next("user_online")["id"] == user("tom")["id"], "re-auth announces the user again"
    tom.none("user_online", wait=0.2)


def access_token_for(name):
    from conftest import access_token
    return access_token(name)


def test_reauth_as_another_user_drops_earlier_rights(server, clients):
    s = server()
    watcher = clients(s.url)
    watcher.auth(token("legacy_maria"))
    switcher = clients(s.url, path="audiobookshelf/socket.io")
    switcher.auth(token("legacy_admin"))
    assert watcher.next("user_online")["id"] == user("maria")["id"]
    assert watcher.next("user_online")["id"] == user("admin")["id"]

    got = switcher.auth(token("legacy_tom"))
    assert got == {"userId": user("tom")["id"], "username": "tom"}
    offline = watcher.next("user_offline")
    assert offline["id"] == user("admin")["id"]
    assert watcher.next("user_online")["id"] == user("tom")["id"]
    # No admin rights any more: its message_all_users does nothing, admin events stop.
    switcher.emit("message_all_users", {"message": "still admin?"})
    watcher.none("admin_message", wait=0.4)
    clients(s.url).auth(token("legacy_sara"))
    assert watcher.next("user_online")["id"] == user("sara")["id"]
    switcher.none("user_online", wait=0.3)
    # It still gets what every authenticated socket gets.
    watcher.emit("message_all_users", {"message": "hello all"})
    assert switcher.next("admin_message") == "hello all"


def test_failed_reauth_keeps_the_earlier_authentication(shared_server, clients):
    admin = clients(shared_server.url)
    admin.auth(token("legacy_admin"))
    admin.emit("auth", "garbage")
    assert admin.next("auth_failed") == {"message": "Invalid token"}
    admin.emit("message_all_users", {"message": "still here"})
    assert admin.next("admin_message") == "still here"


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_message_over_one_megabyte_closes_that_connection_only(shared_server, clients, transport):
    bystander = clients(shared_server.url)
    bystander.auth(token("legacy_sara"))
    big = Client(shared_server.url, transports=[transport])
    try:
        big.auth(token("legacy_tom"))
        big.emit("auth", "x" * 1_100_000)
        deadline = time.time() + 10
        while big.sio.connected and time.time() < deadline:
            time.sleep(0.05)
        assert not big.sio.connected, "the oversized message closes its connection"
    finally:
        big.close()
    bystander.emit("ping")
    assert bystander.next("pong") is None
    assert clients(shared_server.url).auth(token("legacy_lena"))["username"] == "lena"


def tokio_workers(srv):
    """The server's tokio worker threads (tokio names them `tokio-runtime-worker` or
    `tokio-rt-worker`; the kernel keeps 15 characters)."""
    tasks = Path(f"/proc/{srv.proc.pid}/task")
    return sum(1 for t in tasks.iterdir() if (t / "comm").read_text().startswith("tokio-r"))


@pytest.mark.parametrize("threads", [None, "2"])
def test_one_thread_by_default_and_as_many_as_asked_serve_the_same(server, clients, threads):
    srv = server(env={"TOKIO_WORKER_THREADS": threads} if threads else {})
    assert tokio_workers(srv) == (0 if threads is None else 2)
    admin = clients(srv.url)
    admin.auth(token("legacy_admin"))
    users = [clients(srv.url) for _ in range(20)]
    for c in users:
        c.emit("auth", token("legacy_tom"))
    for c in users:
        assert c.next("init")["username"] == "tom"
    online = [admin.next("user_online")["username"] for _ in range(21)]
    assert online.count("tom") == 20, online
    admin.emit("message_all_users", {"message": "all threads"})
    for c in users:
        assert c.next("admin_message") == "all threads"


def test_zero_worker_threads_is_refused_with_a_clear_message(workdir):
    res = subprocess.run([str(BIN), "--worker-threads", "0", "serve"], capture_output=True, text=True, timeout=30,
                         cwd=workdir, env={**os.environ, "RUST_LOG": "off"})
    assert res.returncode != 0
    assert "--worker-threads" in res.stderr and "0" in res.stderr, res.stderr
