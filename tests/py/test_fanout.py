"""CONTRACT sections 3 and 6: the publishing API delivers to exactly the sockets audiobookshelf would.

A population modelled on a real library (root, an admin, a user limited to one library and a tag
allow-list, a tag deny-list, a guest, a user limited to the other library), each with two sockets
(one per path), plus unauthenticated sockets; items inserted in audiobookshelf's formats.
"""

import json
import time
import uuid

import pytest
import requests

from conftest import BACKENDS, Client, PgStore, Server, access_token, fixture_copy, sequelize_now, sign, token, user

AUDIOBOOKS = "212d0f61-06e9-4ebb-a618-7f0f6007dbf9"
PODCASTS = "0c290f4d-b1f0-45ab-b66b-86724bbeec73"
LIBBY = str(uuid.uuid4())
NAMES = ["admin", "maria", "tom", "sara", "lena", "libby"]

# (key, library, media type, tags as stored (None = NULL), explicit as stored)
ITEMS = [
    ("b_plain", AUDIOBOOKS, "book", [], 0),
    ("b_family", AUDIOBOOKS, "book", ["family"], 0),
    ("b_horror", AUDIOBOOKS, "book", ["horror"], 0),
    ("b_explicit", AUDIOBOOKS, "book", [], 1),
    ("b_family_horror", AUDIOBOOKS, "book", ["family", "horror"], 0),
    ("b_null", AUDIOBOOKS, "book", None, None),
    ("p_plain", PODCASTS, "podcast", [], 0),
    ("p_family", PODCASTS, "podcast", ["family"], 0),
    ("p_explicit_family", PODCASTS, "podcast", ["family"], 1),
]


def insert_population(db, backend="sqlite"):
    """libby and the items; SQL that means the same on SQLite and PostgreSQL (quoted names, TRUE/FALSE).
    On PostgreSQL (abs-socket's own store) the item tables hold only the columns abs-socket reads."""
    now = sequelize_now()
    perms = {"download": True, "update": False, "delete": False, "upload": False, "createEreader": False,
             "accessAllLibraries": False, "accessAllTags": True, "accessExplicitContent": True,
             "selectedTagsNotAccessible": False, "librariesAccessible": [AUDIOBOOKS], "itemTagsSelected": []}
    db.execute("""INSERT INTO "users" ("id", "username", "email", "pash", "type", "token", "isActive", "isLocked", "lastSeen", "permissions", "bookmarks", "extraData", "createdAt", "updatedAt") VALUES (?, 'libby', NULL, NULL, 'user', NULL, TRUE, FALSE, NULL, ?, '[]', '{"seriesHideFromContinueListening":[]}', ?, ?)""",
               (LIBBY, json.dumps(perms, separators=(",", ":")), now, now))
    ids = {}
    for key, lib, media_type, tags, explicit in ITEMS:
        item_id, media_id = str(uuid.uuid4()), str(uuid.uuid4())
        ids[key] = item_id
        table = "books" if media_type == "book" else "podcasts"
        if backend == "postgres":
            db.execute(f'INSERT INTO "{table}" ("id", "tags", "explicit") VALUES (?, ?, ?)',
                       (media_id, None if tags is None else json.dumps(tags), None if explicit is None else bool(explicit)))
            db.execute('INSERT INTO "libraryItems" ("id", "libraryId", "mediaId", "mediaType") VALUES (?, ?, ?, ?)',
                       (item_id, lib, media_id, media_type))
            continue
        db.execute(f"INSERT INTO {table} (id, title, tags, explicit, createdAt, updatedAt) VALUES (?, ?, ?, ?, ?, ?)",
                   (media_id, key, None if tags is None else json.dumps(tags), explicit, now, now))
        db.execute("INSERT INTO libraryItems (id, ino, path, relPath, mediaId, mediaType, isFile, isMissing, isInvalid, libraryFiles, extraData, title, createdAt, updatedAt, libraryId) VALUES (?, '1', ?, ?, ?, ?, 0, 0, 0, '[]', '{}', ?, ?, ?, ?)",
                   (item_id, f"/m/{key}", key, media_id, media_type, key, now, now, lib))
    return ids


def user_token(name):
    if name == "libby":
        return sign({"userId": LIBBY, "username": "libby", "iat": 1})
    return token(f"legacy_{name}")


def uid(name):
    return LIBBY if name == "libby" else user(name)["id"]


# The oracle: CONTRACT section 3's access rule, written out independently of the server.
def can_library(p, lib):
    return bool(p.get("accessAllLibraries")) or lib in (p.get("librariesAccessible") or [])


def can_item(p, lib, tags, explicit):
    if not can_library(p, lib):
        return False
    if explicit and not p.get("accessExplicitContent"):
        return False
    tags = tags or []
    selected = p.get("itemTagsSelected") or []
    if p.get("accessAllTags"):
        return True
    if p.get("selectedTagsNotAccessible"):
        return not any(t in selected for t in tags)
    return any(t in selected for t in tags)


def permissions_of(db, user_id):
    v = db.execute('SELECT "permissions" FROM "users" WHERE "id" = ?', (user_id,)).fetchone()["permissions"]
    return v if isinstance(v, dict) else json.loads(v)


@pytest.fixture(scope="module", params=BACKENDS)
def world(request):
    """The population on a copy of the real SQLite file, and again on a PostgreSQL store."""
    import shutil
    import tempfile
    from pathlib import Path
    backend = request.param
    d = Path(tempfile.mkdtemp(prefix=f"abs-socket-fanout-{backend}-"))
    if backend == "postgres":
        store = PgStore(request.getfixturevalue("postgres"))
        db = store.connect()
        ids = insert_population(db, backend)
        srv = Server(None, fresh_dir=d, pg=store)
    else:
        path = fixture_copy(d)
        db = __import__("conftest").connect_db(path)
        ids = insert_population(db)
        srv = Server(path)
    sockets = {}
    for name in NAMES:
        a = Client(srv.url, transports=["websocket"])
        b = Client(srv.url, path="audiobookshelf/socket.io")
        a.auth(user_token(name))
        b.auth(user_token(name))
        sockets[name] = [a, b]
    anon = [Client(srv.url), Client(srv.url, path="audiobookshelf/socket.io")]
    refused = Client(srv.url)
    refused.auth(token("legacy_olaf"), expect="auth_failed")
    anon.append(refused)
    perms = {n: permissions_of(db, uid(n)) for n in NAMES}
    yield {"srv": srv, "db": db, "ids": ids, "sockets": sockets, "anon": anon, "perms": perms}
    for c in [c for cs in sockets.values() for c in cs] + anon:
        c.close()
    srv.stop()
    shutil.rmtree(d, ignore_errors=True)


def publish(srv, body, tok=None, base=""):
    headers = {"Authorization": f"Bearer {tok or token('legacy_admin')}"}
    return requests.post(f"{srv.url}{base}/api/socket/emit", json=body, headers=headers, timeout=10)


COUNTER = iter(range(10**6))


def deliveries(world, to, data="payload", settle=0.6):
    """Publishes a fresh event; returns {name: [payloads per socket]} and the anonymous receipts."""
    event = f"fan_{next(COUNTER)}"
    res = publish(world["srv"], {"event": event, "data": data, "to": to})
    assert res.status_code == 200, res.text
    time.sleep(settle)
    got = {name: [c.received(event) for c in cs] for name, cs in world["sockets"].items()}
    anon = [c.received(event) for c in world["anon"]]
    assert anon == [[], [], []], "an unauthenticated socket never receives a broadcast"
    return got, res.json()["sockets"]


def assert_exactly(got, sockets_reached, receivers, data="payload"):
    for name, per_socket in got.items():
        expected = [[data], [data]] if name in receivers else [[], []]
        assert per_socket == expected, f"{name}: {per_socket} (expected {expected})"
    assert sockets_reached == 2 * len(receivers)


def test_all(world):
    got, n = deliveries(world, {"all": True})
    assert_exactly(got, n, set(NAMES))


def test_admins(world):
    got, n = deliveries(world, {"admins": True})
    assert_exactly(got, n, {"admin", "maria"})


def test_users(world):
    got, n = deliveries(world, {"users": [uid("tom"), uid("sara"), str(uuid.uuid4())]})
    assert_exactly(got, n, {"tom", "sara"})
    got, n = deliveries(world, {"users": []})
    assert_exactly(got, n, set())


@pytest.mark.parametrize("lib", [AUDIOBOOKS, PODCASTS, "no-such-library"])
def test_library(world, lib):
    expected = {n for n in NAMES if can_library(world["perms"][n], lib)}
    got, n = deliveries(world, {"library": lib})
    assert_exactly(got, n, expected)


def test_library_spot_checks(world):
    assert {n for n in NAMES if can_library(world["perms"][n], AUDIOBOOKS)} == {"admin", "maria", "sara", "lena", "libby"}
    assert {n for n in NAMES if can_library(world["perms"][n], PODCASTS)} == {"admin", "maria", "tom", "sara", "lena"}


@pytest.mark.parametrize("key", [i[0] for i in ITEMS])
@pytest.mark.parametrize("form", ["descriptor", "id"])
def test_library_item(world, key, form):
    _, lib, _, tags, explicit = next(i for i in ITEMS if i[0] == key)
    expected = {n for n in NAMES if can_item(world["perms"][n], lib, tags, explicit)}
    if form == "id":
        to = {"libraryItem": {"id": world["ids"][key]}}
    else:
        to = {"libraryItem": {"libraryId": lib, "tags": tags or [], "explicit": bool(explicit)}}
    got, n = deliveries(world, to, data={"id": world["ids"][key]})
    assert_exactly(got, n, expected, data={"id": world["ids"][key]})


def test_item_rules_spot_checks(world):
    p = world["perms"]
    who = lambda key: {n for n in NAMES if can_item(p[n], *next((i[1], i[3], i[4]) for i in ITEMS if i[0] == key))}
    assert who("p_family") == {"admin", "maria", "tom", "sara", "lena"}
    assert who("p_plain") == {"admin", "maria", "sara", "lena"}, "tom's allow-list fails untagged items"
    assert who("p_explicit_family") == {"admin", "maria"}
    assert who("b_horror") == {"admin", "maria", "lena", "libby"}, "sara's deny-list"
    assert who("b_plain") == {"admin", "maria", "sara", "lena", "libby"}, "sara's deny-list passes untagged items"
    assert who("b_explicit") == {"admin", "maria", "libby"}


def test_items_each_user_gets_their_subset_in_order(world):
    keys = [i[0] for i in ITEMS]
    descriptors = []
    for idx, (key, lib, _, tags, explicit) in enumerate(ITEMS):
        # Mix both kinds of descriptor.
        if idx % 2:
            descriptors.append({"id": world["ids"][key]})
        else:
            descriptors.append({"libraryId": lib, "tags": tags or [], "explicit": bool(explicit)})
    event = f"fan_{next(COUNTER)}"
    res = publish(world["srv"], {"event": event, "data": keys, "to": {"items": descriptors}})
    assert res.status_code == 200, res.text
    time.sleep(0.6)
    reached = 0
    for name, cs in world["sockets"].items():
        subset = [k for (k, lib, _, tags, explicit) in ITEMS if can_item(world["perms"][name], lib, tags, explicit)]
        for c in cs:
            got = c.received(event)
            if subset:
                assert got == [subset], f"{name}: {got} (expected one event with {subset})"
                reached += 1
            else:
                assert got == [], name
    assert [c.received(event) for c in world["anon"]] == [[], [], []]
    assert res.json()["sockets"] == reached


def test_items_with_an_empty_subset_send_nothing(world):
    event = f"fan_{next(COUNTER)}"
    to = {"items": [{"libraryId": PODCASTS, "tags": ["family"], "explicit": True}, {"libraryId": "elsewhere", "explicit": True}]}
    res = publish(world["srv"], {"event": event, "data": ["x", "y"], "to": to})
    assert res.status_code == 200 and res.json() == {"sockets": 4}
    time.sleep(0.4)
    for name, cs in world["sockets"].items():
        expected = [["x", "y"]] if name in ("admin", "maria") else []
        assert [c.received(event) for c in cs] == [expected, expected], name


def test_both_base_paths_and_every_admin_credential(world):
    for base in ("", "/audiobookshelf"):
        for tok in (token("legacy_admin"), token("legacy_maria"), token("apikey_admin_active"), access_token("maria")):
            res = publish(world["srv"], {"event": "fan_cred", "to": {"admins": True}}, tok=tok, base=base)
            assert res.status_code == 200, (base, res.text)


def test_event_without_data_has_no_argument(world):
    event = f"fan_{next(COUNTER)}"
    res = publish(world["srv"], {"event": event, "to": {"users": [uid("tom")]}})
    assert res.status_code == 200
    time.sleep(0.4)
    assert world["sockets"]["tom"][0].received(event) == [None]


def test_error_statuses(world):
    srv = world["srv"]
    url = f"{srv.url}/api/socket/emit"
    body = {"event": "e", "to": {"all": True}}
    assert requests.post(url, json=body).status_code == 401
    for bad in ("Bearer garbage", "Basic abc", "Bearer ", token("legacy_admin"), f"Bearer {token('refresh_admin')}",
                f"Bearer {token('legacy_olaf')}", f"Bearer {token('apikey_lena_deactivated')}"):
        res = requests.post(url, json=body, headers={"Authorization": bad})
        assert res.status_code == 401, bad
        assert "error" in res.json()
    for non_admin in (token("legacy_tom"), token("apikey_tom_active"), token("legacy_lena")):
        res = requests.post(url, json=body, headers={"Authorization": f"Bearer {non_admin}"})
        assert res.status_code == 403 and "error" in res.json()
    auth = {"Authorization": f"Bearer {token('legacy_admin')}"}
    for raw, needle in [
        (b"not json", "not JSON"),
        (b"[1]", "object"),
        (b'{"to":{"all":true}}', "event"),
        (b'{"event":"e","to":{"all":true,"admins":true}}', "exactly one"),
        (b'{"event":"e","to":{"nobody":true}}', "unknown target"),
        (b'{"event":"init","to":{"all":true}}', "reserved"),
        (b'{"event":"auth_failed","to":{"all":true}}', "reserved"),
        (b'{"event":"e","data":[1],"to":{"items":[]}}', "same length"),
        (b'{"event":"e","to":{"users":"x"}}', "to.users"),
    ]:
        for ctype in ("application/json", "text/plain", None):
            headers = dict(auth)
            if ctype:
                headers["Content-Type"] = ctype
            res = requests.post(url, data=raw, headers=headers)
            assert res.status_code == 400, (raw, ctype, res.status_code)
            assert needle in res.json()["error"], (raw, res.json())
    missing = str(uuid.uuid4())
    res = requests.post(url, json={"event": "e", "to": {"libraryItem": {"id": missing}}}, headers=auth)
    assert res.status_code == 400 and missing in res.json()["error"]
    res = requests.post(url, json={"event": "e", "data": [1], "to": {"items": [{"id": missing}]}}, headers=auth)
    assert res.status_code == 400 and missing in res.json()["error"]


def test_oversized_bodies(world):
    url = f"{world['srv'].url}/api/socket/emit"
    auth = {"Authorization": f"Bearer {token('legacy_admin')}", "Content-Type": "application/json"}
    small = json.dumps({"event": "e", "data": "x" * 900_000, "to": {"admins": True}})
    assert requests.post(url, data=small, headers=auth).status_code == 200
    big = json.dumps({"event": "e", "data": "x" * 1_100_000, "to": {"all": True}})
    assert requests.post(url, data=big, headers=auth).status_code == 413

    def chunks(total=10 * 1024 * 1024, size=64 * 1024):
        yield b'{"event":"e","data":"'
        sent = 0
        while sent < total:
            yield b"x" * size
            sent += size
        yield b'","to":{"all":true}}'

    for declared in (True, False):
        headers = dict(auth)
        if declared:
            headers["Content-Length"] = str(10 * 1024 * 1024 + 40)
        try:
            res = requests.post(url, data=chunks(), headers=headers, timeout=30)
            assert res.status_code == 413
        except requests.ConnectionError:
            pass  # the server may close a connection that keeps sending
    # The server is fine afterwards.
    assert requests.post(url, json={"event": "e", "to": {"admins": True}}, headers=auth).status_code == 200


def test_a_permission_change_applies_after_two_seconds(world):
    db = world["db"]
    tom = uid("tom")
    got, n = deliveries(world, {"library": AUDIOBOOKS}, settle=0.3)
    assert got["tom"] == [[], []]
    old = permissions_of(db, tom)
    widened = dict(old, accessAllLibraries=True)
    db.execute('UPDATE "users" SET "permissions" = ? WHERE "id" = ?', (json.dumps(widened, separators=(",", ":")), tom))
    try:
        time.sleep(2.1)
        got, n = deliveries(world, {"library": AUDIOBOOKS}, settle=0.3)
        assert got["tom"] == [["payload"], ["payload"]]
    finally:
        db.execute('UPDATE "users" SET "permissions" = ? WHERE "id" = ?', (json.dumps(old, separators=(",", ":")), tom))
        time.sleep(2.1)
