"""Three abs-socket nodes on one Redis behave as one server (issue 6).

Real python-socketio clients are spread over three server processes that share the fixture
database and a real redis-server. The fan-out matrix of test_fanout.py is replayed with the
publisher and the receivers on different nodes; presence, a node killed with SIGKILL and a Redis
restart are tested on the same cluster (those come last, as they disturb it).
"""

import signal
import time
import uuid

import pytest
import requests

import conftest
from conftest import Client, Server, fixture_copy, token, user, wait_for
from services import RedisServer
from test_fanout import AUDIOBOOKS, ITEMS, NAMES, PODCASTS, can_item, can_library, insert_population, uid, user_token

PRESENCE_TTL = 3.0  # cluster::presence::TTL


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster")
    path = fixture_copy(d)
    db = conftest.connect_db(path)
    ids = insert_population(db)
    redis = RedisServer()
    nodes = []
    try:
        for i in range(3):
            nodes.append(Server(path, args=["--redis-url", redis.url], log_name=f"node{i}.log"))
        # Each user's two sockets are on two different nodes, one per path.
        sockets = {}
        for n, name in enumerate(NAMES):
            a = Client(nodes[n % 3].url, transports=["websocket"])
            b = Client(nodes[(n + 1) % 3].url, path="audiobookshelf/socket.io")
            a.auth(user_token(name))
            b.auth(user_token(name))
            a.node, b.node = n % 3, (n + 1) % 3
            sockets[name] = [a, b]
        anon = [Client(nodes[i].url) for i in range(3)]
        import json
        perms = {n: json.loads(db.execute("SELECT permissions FROM users WHERE id = ?", (uid(n),)).fetchone()[0]) for n in NAMES}
        yield {"nodes": nodes, "redis": redis, "db": db, "ids": ids, "sockets": sockets, "anon": anon, "perms": perms, "dir": d, "path": path}
    finally:
        for c in [c for cs in locals().get("sockets", {}).values() for c in cs] + locals().get("anon", []):
            c.close()
        for s in nodes:
            s.stop()
        redis.close()


def publish(node, body, tok=None):
    headers = {"Authorization": f"Bearer {tok or token('legacy_admin')}"}
    return requests.post(f"{node.url}/api/socket/emit", json=body, headers=headers, timeout=10)


COUNTER = iter(range(10**6))


def deliveries(cluster, to, via, data="payload", settle=0.8):
    event = f"cl_{next(COUNTER)}"
    res = publish(cluster["nodes"][via], {"event": event, "data": data, "to": to})
    assert res.status_code == 200, res.text
    time.sleep(settle)
    got = {name: [c.received(event) for c in cs] for name, cs in cluster["sockets"].items()}
    assert [c.received(event) for c in cluster["anon"]] == [[], [], []], "never to an unauthenticated socket"
    return got, res.json()["sockets"]


def assert_exactly(cluster, got, reached, receivers, via, data="payload"):
    for name, per_socket in got.items():
        expected = [[data], [data]] if name in receivers else [[], []]
        assert per_socket == expected, f"{name}: {per_socket} (expected {expected})"
    # The publishing API counts the sockets reached on the node that was asked.
    local = sum(1 for n in receivers for c in cluster["sockets"][n] if c.node == via)
    assert reached == local


@pytest.mark.parametrize("via", [0, 1, 2])
def test_all_admins_users_from_every_node(cluster, via):
    got, n = deliveries(cluster, {"all": True}, via)
    assert_exactly(cluster, got, n, set(NAMES), via)
    got, n = deliveries(cluster, {"admins": True}, via)
    assert_exactly(cluster, got, n, {"admin", "maria"}, via)
    got, n = deliveries(cluster, {"users": [uid("tom"), uid("libby"), str(uuid.uuid4())]}, via)
    assert_exactly(cluster, got, n, {"tom", "libby"}, via)


@pytest.mark.parametrize("lib", [AUDIOBOOKS, PODCASTS])
def test_library(cluster, lib):
    expected = {n for n in NAMES if can_library(cluster["perms"][n], lib)}
    got, n = deliveries(cluster, {"library": lib}, via=1)
    assert_exactly(cluster, got, n, expected, via=1)


@pytest.mark.parametrize("key", [i[0] for i in ITEMS])
def test_library_item_by_descriptor_and_id(cluster, key):
    _, lib, _, tags, explicit = next(i for i in ITEMS if i[0] == key)
    expected = {n for n in NAMES if can_item(cluster["perms"][n], lib, tags, explicit)}
    for via, to in ((0, {"libraryItem": {"libraryId": lib, "tags": tags or [], "explicit": bool(explicit)}}),
                    (2, {"libraryItem": {"id": cluster["ids"][key]}})):
        data = {"id": cluster["ids"][key]}
        got, n = deliveries(cluster, to, via, data=data)
        assert_exactly(cluster, got, n, expected, via, data=data)


def test_items_subsets_across_nodes(cluster):
    keys = [i[0] for i in ITEMS]
    descriptors = [{"libraryId": lib, "tags": tags or [], "explicit": bool(explicit)} for (_, lib, _, tags, explicit) in ITEMS]
    event = f"cl_{next(COUNTER)}"
    res = publish(cluster["nodes"][2], {"event": event, "data": keys, "to": {"items": descriptors}})
    assert res.status_code == 200, res.text
    time.sleep(0.8)
    for name, cs in cluster["sockets"].items():
        subset = [k for (k, lib, _, tags, explicit) in ITEMS if can_item(cluster["perms"][name], lib, tags, explicit)]
        for c in cs:
            assert c.received(event) == ([subset] if subset else []), name


def test_message_all_users_reaches_every_node(cluster):
    admin_socket = cluster["sockets"]["admin"][0]
    admin_socket.emit("message_all_users", {"message": "hello cluster"})
    time.sleep(0.8)
    for name, cs in cluster["sockets"].items():
        for c in cs:
            assert c.received("admin_message") == ["hello cluster"], (name, c.node)
    assert [c.received("admin_message") for c in cluster["anon"]] == [[], [], []]
    # A non-admin's message goes nowhere, on any node.
    cluster["sockets"]["tom"][0].emit("message_all_users", {"message": "nope"})
    time.sleep(0.5)
    assert all(c.received("admin_message") == ["hello cluster"] for cs in cluster["sockets"].values() for c in cs)


def users_online_seen_from(node_url, timeout=5):
    c = Client(node_url)
    try:
        init = c.auth(token("legacy_maria"), timeout=timeout)
        return {u["username"]: u["connections"] for u in init["usersOnline"]}
    finally:
        c.close()
        time.sleep(0.2)  # its own presence leaves before the next look


def test_users_online_counts_sockets_on_all_nodes(cluster):
    for node in cluster["nodes"]:
        online = users_online_seen_from(node.url)
        # The asking socket itself is maria's third.
        expected = {n: 2 for n in NAMES}
        expected["maria"] = 3
        assert online == expected, (node.url, online)


def test_a_socket_shows_on_every_node_within_one_second(cluster):
    nodes = cluster["nodes"]
    newcomer = Client(nodes[0].url)
    try:
        newcomer.auth(token("legacy_tom"))
        time.sleep(1.0)
        for node in nodes[1:]:
            assert users_online_seen_from(node.url)["tom"] == 3
    finally:
        newcomer.close()
    time.sleep(0.3)
    assert users_online_seen_from(nodes[2].url)["tom"] == 2


def test_user_online_and_offline_reach_admins_on_every_node(cluster):
    admins = cluster["sockets"]["admin"] + cluster["sockets"]["maria"]  # on nodes 0,1 and 1,2
    before = [len(c.received("user_offline")) for c in admins]
    before_on = [len(c.received("user_online")) for c in admins]
    visitor = Client(cluster["nodes"][2].url)
    visitor.auth(token("legacy_lena"))
    visitor.close()
    time.sleep(0.8)
    for c, b, b_on in zip(admins, before, before_on):
        offline = c.received("user_offline")[b:]
        online = c.received("user_online")[b_on:]
        assert [u["username"] for u in online] == ["lena"], c.node
        assert [u["username"] for u in offline] == ["lena"], c.node
        assert set(offline[0]) == {"id", "username", "type", "session", "lastSeen", "createdAt"}


def test_healthz_shows_the_cluster(cluster):
    for node in cluster["nodes"]:
        h = requests.get(f"{node.url}/healthz", timeout=5).json()
        assert h["cluster"]["mode"] == "redis"
        assert h["cluster"]["redis"] == "connected"


def test_lastseen_is_written_by_every_node(cluster):
    db = cluster["db"]
    start = time.time()
    c = Client(cluster["nodes"][1].url)
    try:
        c.auth(token("legacy_sara"))
        time.sleep(0.5)
        row = db.execute("SELECT lastSeen FROM users WHERE id = ?", (user("sara")["id"],)).fetchone()
        import datetime
        seen = datetime.datetime.strptime(row[0], "%Y-%m-%d %H:%M:%S.%f +00:00").replace(tzinfo=datetime.timezone.utc)
        assert seen.timestamp() >= start - 1
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        c.close()


def test_a_connection_storm_on_one_node_loses_no_user_online_on_the_others(cluster):
    """Every auth is a cross-node broadcast: 600 at once must all reach the other nodes' admins."""
    from conftest import Crowd
    watchers = [Client(cluster["nodes"][i].url) for i in (1, 2)]
    for w in watchers:
        w.auth(token("legacy_admin"))
    time.sleep(0.3)
    crowd = Crowd(cluster["nodes"][0].url, 600, [token("legacy_tom"), token("legacy_sara")])
    try:
        def counted(event):
            return [sum(1 for u in w.received(event) if u["username"] in ("tom", "sara")) for w in watchers]
        wait_for(lambda: counted("user_online") == [600, 600], timeout=15, step=0.2)
        assert counted("user_online") == [600, 600]
        crowd.close()
        wait_for(lambda: counted("user_offline") == [600, 600], timeout=15, step=0.2)
        assert counted("user_offline") == [600, 600]
    finally:
        crowd.close()
        for w in watchers:
            w.close()


# The tests below disturb the cluster; they run last, in this order.

def test_z1_redis_restart_local_delivery_continues_and_cross_node_resumes(cluster):
    nodes, redis, sockets = cluster["nodes"], cluster["redis"], cluster["sockets"]
    redis.stop()
    time.sleep(0.5)
    h = requests.get(f"{nodes[0].url}/healthz", timeout=5).json()
    assert h["cluster"]["redis"] == "reconnecting"
    # Local delivery goes on meanwhile: the node asked reaches its own sockets, only those.
    event = f"cl_{next(COUNTER)}"
    res = publish(nodes[0], {"event": event, "data": 1, "to": {"all": True}})
    assert res.status_code == 200
    time.sleep(0.5)
    for cs in sockets.values():
        for c in cs:
            assert c.received(event) == ([1] if c.node == 0 else []), c.node
    # message_all_users, too, reaches the sender's node.
    sockets["admin"][0].emit("message_all_users", {"message": "while redis is away"})
    time.sleep(0.5)
    for cs in sockets.values():
        for c in cs:
            got = c.received("admin_message")
            assert ("while redis is away" in got) == (c.node == sockets["admin"][0].node)
    redis.start()
    # Cross-node delivery resumes with no node restarted.
    def everyone_gets_it():
        ev = f"cl_{next(COUNTER)}"
        publish(nodes[2], {"event": ev, "data": 2, "to": {"all": True}})
        time.sleep(0.3)
        return all(c.received(ev) == [2] for cs in sockets.values() for c in cs)
    ok, waited = wait_for(everyone_gets_it, timeout=15, step=0.2)
    assert ok, "cross-node delivery did not resume after Redis came back"
    for node in nodes:
        assert requests.get(f"{node.url}/healthz", timeout=5).json()["cluster"]["redis"] == "connected"
    # Presence is rewritten into the new, empty Redis.
    online, _ = wait_for(lambda: users_online_seen_from(nodes[0].url).get("tom") == 2, timeout=5, step=0.3)
    assert online


def test_z2_sigkill_of_a_node_clears_its_users_within_the_bound(cluster):
    nodes = cluster["nodes"]
    ghost = Client(nodes[2].url)
    ghost.auth(token("legacy_lena"))
    time.sleep(0.3)
    assert users_online_seen_from(nodes[0].url)["lena"] == 3
    # lena's fixture sockets are on nodes 1 and 2 (she is NAMES[4]); killing node 2 leaves one.
    nodes[2].proc.send_signal(signal.SIGKILL)
    killed_at = time.time()
    gone, waited = wait_for(lambda: users_online_seen_from(nodes[0].url).get("lena") == 1, timeout=PRESENCE_TTL + 3, step=0.2)
    assert gone, "the killed node's sockets are still shown online"
    assert time.time() - killed_at <= PRESENCE_TTL + 1.0
    ghost.close()


def test_a_node_whose_redis_is_down_at_start_waits_and_says_so(tmp_path):
    from conftest import health
    redis = RedisServer()
    redis.stop()
    node = Server(fixture_copy(tmp_path), args=["--redis-url", redis.url], healthy=False)
    try:
        res = requests.get(f"{node.url}/healthz", timeout=5)
        assert res.status_code == 503 and res.json() == {"status": "starting", "redis": "connecting"}
        # Sockets are not served meanwhile either.
        assert requests.get(f"{node.url}/socket.io/?EIO=4&transport=polling", timeout=5).status_code == 503
        time.sleep(1.5)
        assert "waiting for Redis" in node.log()
        redis.start()
        ok, _ = wait_for(lambda: requests.get(f"{node.url}/healthz", timeout=5).ok, timeout=10, step=0.2)
        assert ok
        assert health(node)["cluster"]["redis"] == "connected"
        c = Client(node.url)
        assert c.auth(token("legacy_tom"))["username"] == "tom"
        c.close()
    finally:
        node.stop()
        redis.close()


def test_two_nodes_share_one_sqlite_file_without_losing_a_last_seen(tmp_path):
    import datetime
    redis = RedisServer()
    path = fixture_copy(tmp_path)
    nodes = [Server(path, args=["--redis-url", redis.url], log_name=f"n{i}.log") for i in range(2)]
    clients = []
    try:
        start = time.time()
        names = ["admin", "maria", "tom", "sara", "lena"]
        for i, name in enumerate(names * 4):
            c = Client(nodes[i % 2].url)
            c.auth(token(f"legacy_{name}"))
            clients.append(c)
        time.sleep(1.0)
        db = conftest.connect_db(path)
        for name in names:
            seen = db.execute("SELECT lastSeen FROM users WHERE id = ?", (user(name)["id"],)).fetchone()[0]
            at = datetime.datetime.strptime(seen, "%Y-%m-%d %H:%M:%S.%f +00:00").replace(tzinfo=datetime.timezone.utc)
            assert at.timestamp() >= start - 1, (name, seen)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert not list(tmp_path.glob("*-wal")) and not list(tmp_path.glob("*-shm"))
    finally:
        for c in clients:
            c.close()
        for n in nodes:
            n.stop()
        redis.close()
