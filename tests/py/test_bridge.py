"""The bridge (issue 7, CONTRACT section 7): abs-socket in front of an unmodified audiobookshelf.

The upstream is a stand-in written on the npm socket.io server (tests/js/upstream.mjs) that
authenticates the tokens abs-socket mints with the fixture's secret, as audiobookshelf does.
"""

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from conftest import FIXTURE, REPO, SECRET, Client, Server, fixture_copy, free_port, health, token, user, wait_for

NAMES = ["admin", "maria", "tom", "sara", "lena"]
OWN_EVENTS = ["init", "auth_failed", "pong", "user_online", "user_offline"]


class Upstream:
    """The stand-in audiobookshelf, restartable on the same port."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self):
        users = json.dumps(FIXTURE["users"])
        self.proc = subprocess.Popen(["node", str(REPO / "tests" / "js" / "upstream.mjs"), str(self.port), SECRET, users],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     cwd=REPO / "tests")
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), line

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def emit(self, to, event, data=None):
        cmd = {"cmd": "emit", "to": to, "event": event}
        if data is not None:
            cmd["data"] = data
        assert self.ask(**cmd) == {"ok": True}

    def state(self):
        return self.ask(cmd="state")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def bridged():
    d = Path(tempfile.mkdtemp(prefix="abs-socket-bridge-"))
    up = Upstream()
    srv = Server(fixture_copy(d), args=["--upstream", up.url, "--bridge-grace", "1.5"])
    yield {"srv": srv, "up": up, "dir": d}
    srv.stop()
    up.stop()
    shutil.rmtree(d, ignore_errors=True)


def upstream_users(up):
    return up.state()["users"]


def connect_population(srv, names=NAMES):
    """Two sockets per user, one per path."""
    sockets = {}
    for name in names:
        a = Client(srv.url, transports=["websocket"])
        b = Client(srv.url, path="audiobookshelf/socket.io")
        a.auth(token(f"legacy_{name}"))
        b.auth(token(f"legacy_{name}"))
        sockets[name] = [a, b]
    return sockets


def close_all(sockets):
    for cs in sockets.values():
        for c in cs:
            c.close()


def wait_upstream(up, expected, timeout=5):
    got, _ = wait_for(lambda: upstream_users(up) == expected or None, timeout, step=0.05)
    assert upstream_users(up) == expected


def test_each_user_gets_exactly_what_the_upstream_sent_them_once(bridged):
    srv, up = bridged["srv"], bridged["up"]
    sockets = connect_population(srv)
    anon = Client(srv.url)
    try:
        # One upstream connection per online user, not per socket.
        wait_upstream(up, {user(n)["id"]: 1 for n in NAMES})
        up.emit({"users": [user("tom")["id"]]}, "user_updated", {"id": user("tom")["id"]})
        up.emit("admins", "task_started", {"id": "t1"})
        up.emit("all", "item_added", {"id": "i1"})
        up.emit({"users": [user("sara")["id"], user("lena")["id"]]}, "items_updated", [{"id": "i2"}])
        up.emit({"users": [user("lena")["id"]]}, "no_arg_event")
        # What abs-socket answers itself is never relayed.
        for ev in OWN_EVENTS:
            up.emit("all", ev, {"from": "upstream"})
        time.sleep(0.8)
        expected = {
            "admin": {"task_started": [{"id": "t1"}], "item_added": [{"id": "i1"}]},
            "maria": {"task_started": [{"id": "t1"}], "item_added": [{"id": "i1"}]},
            "tom": {"user_updated": [{"id": user("tom")["id"]}], "item_added": [{"id": "i1"}]},
            "sara": {"item_added": [{"id": "i1"}], "items_updated": [[{"id": "i2"}]]},
            "lena": {"item_added": [{"id": "i1"}], "items_updated": [[{"id": "i2"}]], "no_arg_event": [None]},
        }
        for name, cs in sockets.items():
            for c in cs:
                relayed = {e: c.received(e) for e in ("user_updated", "task_started", "item_added", "items_updated", "no_arg_event")}
                relayed = {e: v for e, v in relayed.items() if v}
                assert relayed == expected[name], (name, relayed)
                for ev in OWN_EVENTS:
                    assert {"from": "upstream"} not in c.received(ev), (name, ev)
        assert [e for e, _ in anon.events] == [], "nothing reaches an unauthenticated socket"
        assert health(srv)["bridge"]["connected"] == len(NAMES)
    finally:
        close_all(sockets)
        anon.close()


def test_an_api_key_user_is_bridged(bridged):
    srv, up = bridged["srv"], bridged["up"]
    c = Client(srv.url)
    try:
        c.auth(token("apikey_tom_active"))
        wait_upstream(up, {user("tom")["id"]: 1})
        up.emit({"users": [user("tom")["id"]]}, "progress_updated", {"id": "p1"})
        assert c.next("progress_updated") == {"id": "p1"}
    finally:
        c.close()


def test_cover_search_results_reach_only_the_asking_socket(bridged):
    srv, up = bridged["srv"], bridged["up"]
    asker, other = Client(srv.url), Client(srv.url, path="audiobookshelf/socket.io")
    try:
        asker.auth(token("legacy_sara"))
        other.auth(token("legacy_sara"))
        wait_upstream(up, {user("sara")["id"]: 1})
        asker.emit("search_covers", {"requestId": "r1", "title": "Dune"})
        assert asker.next("cover_search_result") == {"requestId": "r1", "provider": "stand-in", "covers": ["Dune.jpg"]}
        assert asker.next("cover_search_complete") == {"requestId": "r1"}
        other.none("cover_search_result", wait=0.3)
        assert other.received("cover_search_complete") == []
        assert up.state()["searches"][-1] == {"user": user("sara")["id"], "requestId": "r1", "title": "Dune"}
        # Cancelling goes upstream too, and its answer back to the asker alone.
        other.emit("search_covers", {"requestId": "r2", "title": "slow"})
        assert other.next("cover_search_result")["requestId"] == "r2"
        other.emit("cancel_cover_search", "r2")
        assert other.next("cover_search_cancelled") == {"requestId": "r2"}
        asker.none("cover_search_cancelled", wait=0.3)
        assert [r["requestId"] for r in asker.received("cover_search_result")] == ["r1"]
        # The local checks still answer at once.
        asker.emit("search_covers", {"requestId": "r3"})
        assert asker.next("cover_search_error") == {"requestId": "r3", "error": "Invalid request parameters"}
    finally:
        asker.close()
        other.close()


def test_cancel_scan_is_forwarded_for_admins_only(bridged):
    srv, up = bridged["srv"], bridged["up"]
    admin, tom = Client(srv.url), Client(srv.url)
    try:
        admin.auth(token("legacy_admin"))
        tom.auth(token("legacy_tom"))
        wait_upstream(up, {user("admin")["id"]: 1, user("tom")["id"]: 1})
        tom.emit("cancel_scan", "lib-from-tom")
        admin.emit("cancel_scan", "lib-1")
        scans, _ = wait_for(lambda: up.state()["cancelScans"], timeout=3)
        time.sleep(0.3)
        assert up.state()["cancelScans"] == [{"user": user("admin")["id"], "libraryId": "lib-1"}]
    finally:
        admin.close()
        tom.close()


def test_the_link_closes_a_grace_period_after_the_last_socket(bridged):
    srv, up = bridged["srv"], bridged["up"]
    wait_upstream(up, {})
    a = Client(srv.url)
    a.auth(token("legacy_lena"))
    wait_upstream(up, {user("lena")["id"]: 1})
    a.close()
    # Within the grace period (1.5 s here) a returning socket keeps the same link.
    time.sleep(0.5)
    b = Client(srv.url)
    b.auth(token("legacy_lena"))
    time.sleep(1.5)
    assert upstream_users(up) == {user("lena")["id"]: 1}
    b.close()
    left = time.time()
    wait_upstream(up, {}, timeout=4)
    assert time.time() - left >= 1.2, "closed before the grace period"


def test_an_upstream_restart_is_survived(bridged):
    srv, up = bridged["srv"], bridged["up"]
    c = Client(srv.url)
    try:
        c.auth(token("legacy_maria"))
        wait_upstream(up, {user("maria")["id"]: 1})
        # A cover search still running when audiobookshelf goes away is answered with an error.
        c.emit("search_covers", {"requestId": "slow-1", "title": "slow"})
        assert c.next("cover_search_result")["requestId"] == "slow-1"
        up.stop()
        assert c.next("cover_search_error", timeout=5) == {"requestId": "slow-1", "error": "Library server unavailable"}
        _, _ = wait_for(lambda: health(srv)["bridge"]["reconnecting"] == 1, timeout=5)
        h = health(srv)["bridge"]
        assert h["reconnecting"] == 1 and h["eventsLostForSeconds"] is not None
        time.sleep(1.0)
        up.start()
        wait_upstream(up, {user("maria")["id"]: 1}, timeout=20)
        up.emit("admins", "after_restart", {"n": 1})
        assert c.next("after_restart", timeout=5) == {"n": 1}
        h = health(srv)["bridge"]
        assert h["connected"] == 1 and h["reconnects"] >= 1 and h["eventsLostForSeconds"] is None
        assert "events for this user in between were lost" in srv.log()
    finally:
        c.close()


def test_revocation_closes_the_users_upstream_at_once(server, clients, workdir):
    up = Upstream()
    try:
        # A long grace period: only the revocation can close the link in time.
        srv = server(args=["--upstream", up.url, "--bridge-grace", "60"])
        tom = clients(srv.url)
        tom.auth(token("legacy_tom"))
        wait_upstream(up, {user("tom")["id"]: 1})
        srv.db().execute("UPDATE users SET isActive = 0 WHERE id = ?", (user("tom")["id"],))
        assert tom.next("auth_failed", timeout=2.5) == {"message": "Invalid user"}
        wait_upstream(up, {}, timeout=2)
    finally:
        up.stop()


def test_a_demoted_admin_is_authenticated_upstream_again_and_loses_admin_events(server, clients):
    up = Upstream()
    try:
        srv = server(args=["--upstream", up.url])
        maria = clients(srv.url)
        maria.auth(token("legacy_maria"))
        wait_upstream(up, {user("maria")["id"]: 1})
        assert up.state()["admins"] == 1
        up.emit("admins", "task_started", {"n": 1})
        assert maria.next("task_started") == {"n": 1}
        # Demoted in audiobookshelf: its database, and its own view of the user.
        assert up.ask(cmd="set_user", id=user("maria")["id"], type="user") == {"ok": True}
        srv.db().execute("UPDATE users SET type = 'user' WHERE id = ?", (user("maria")["id"],))
        # The upstream socket authenticated as an admin stays one in audiobookshelf until it
        # authenticates again; the bridge does that when the sweep sees the demotion.
        again, _ = wait_for(lambda: up.state()["admins"] == 0 and upstream_users(up) == {user("maria")["id"]: 1}, timeout=3)
        assert again, up.state()
        up.emit("admins", "task_started", {"n": 2})
        up.emit({"users": [user("maria")["id"]]}, "user_updated", {"n": 3})
        assert maria.next("user_updated") == {"n": 3}
        assert maria.received("task_started") == [{"n": 1}]
    finally:
        up.stop()


def test_without_upstream_cover_search_says_so(shared_server, clients):
    c = clients(shared_server.url)
    c.auth(token("legacy_tom"))
    c.emit("search_covers", {"requestId": "x", "title": "t"})
    assert c.next("cover_search_error") == {"requestId": "x", "error": "Cover search is not available on this server"}
    assert health(shared_server)["bridge"] == {"enabled": False}


def test_an_unreachable_upstream_answers_cover_searches_with_an_error(server, clients):
    srv = server(args=["--upstream", f"http://127.0.0.1:{free_port()}"])
    c = clients(srv.url)
    c.auth(token("legacy_tom"))
    c.emit("search_covers", {"requestId": "x", "title": "t"})
    assert c.next("cover_search_error") == {"requestId": "x", "error": "Library server unavailable"}
    _, _ = wait_for(lambda: health(srv)["bridge"]["reconnecting"] == 1, timeout=5)
    assert health(srv)["bridge"]["reconnecting"] == 1


def test_with_two_nodes_each_node_delivers_its_own_upstream_once(tmp_path):
    from services import RedisServer
    redis = RedisServer()
    up = Upstream()
    path = fixture_copy(tmp_path)
    nodes = [Server(path, args=["--redis-url", redis.url, "--upstream", up.url], log_name=f"n{i}.log") for i in range(2)]
    sockets = []
    try:
        for node in nodes:
            for p in ("socket.io", "audiobookshelf/socket.io"):
                c = Client(node.url, path=p)
                c.auth(token("legacy_tom"))
                sockets.append(c)
        # One upstream connection per user per node: the node's own sockets are its to serve.
        wait_upstream(up, {user("tom")["id"]: 2})
        up.emit({"users": [user("tom")["id"]]}, "progress_updated", {"n": 1})
        time.sleep(0.8)
        # Each node relays what its upstream got to its local sockets only: once per socket.
        assert [c.received("progress_updated") for c in sockets] == [[{"n": 1}]] * 4
    finally:
        for c in sockets:
            c.close()
        for n in nodes:
            n.stop()
        up.stop()
        redis.close()
