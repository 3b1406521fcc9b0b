"""Every token kind and every failure message of CONTRACT section 2, on the real ABS database.

Every test runs twice: on a copy of the real audiobookshelf SQLite file, and on a PostgreSQL store
filled from it with `abs-socket import`. The SQL the tests run quotes identifiers and writes
booleans as TRUE/FALSE, so that it means the same on both.
"""

import datetime
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import (BACKENDS, SECRET, SEQUELIZE_DATE, access_token, api_key_id, b64, sequelize_now,
                      sign, start_on, token, user)

INIT = "init"
FAILED = "auth_failed"


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def shared_server(backend, request):
    d = Path(tempfile.mkdtemp(prefix=f"abs-socket-auth-{backend}-"))
    s = start_on(backend, d, request)
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def server(backend, workdir, request):
    servers = []

    def start(**kw):
        s = start_on(backend, workdir, request, **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def as_datetime(v):
    """A date column's value: Sequelize text on SQLite, a native timestamp on PostgreSQL."""
    if isinstance(v, datetime.datetime):
        return v
    assert re.match(SEQUELIZE_DATE, v), v
    return datetime.datetime.strptime(v, "%Y-%m-%d %H:%M:%S.%f +00:00").replace(tzinfo=datetime.timezone.utc)


def init_for(name):
    u = user(name)
    return {"userId": u["id"], "username": name}


@pytest.mark.parametrize("name", ["admin", "maria", "tom", "sara", "lena"])
def test_legacy_and_access_tokens_of_every_active_user(shared_server, clients, name):
    for tok in (token(f"legacy_{name}"), access_token(name)):
        c = clients(shared_server.url)
        got = c.auth(tok)
        assert got["userId"] == init_for(name)["userId"]
        assert got["username"] == name
        # usersOnline only for admins; the key is absent otherwise.
        assert ("usersOnline" in got) == (user(name)["type"] in ("root", "admin"))


@pytest.mark.parametrize("label,message", [
    ("legacy_olaf", "Invalid user"),
    ("refresh_admin", "Invalid token"),
    ("refresh_tom", "Invalid token"),
    ("apikey_sara_inactive", "Invalid API key"),
    ("apikey_lena_deactivated", "Invalid API key"),
])
def test_refused_fixture_tokens(shared_server, clients, label, message):
    c = clients(shared_server.url)
    assert c.auth(token(label), expect=FAILED) == {"message": message}
    c.none(INIT, wait=0.2)


def test_api_keys_authenticate(shared_server, clients):
    c = clients(shared_server.url)
    assert c.auth(token("apikey_tom_active")) == init_for("tom")
    a = clients(shared_server.url)
    got = a.auth(token("apikey_admin_active"))
    assert got["userId"] == user("admin")["id"] and "usersOnline" in got


def test_token_as_object_payload(shared_server, clients):
    c = clients(shared_server.url)
    assert c.auth({"token": token("legacy_tom")}) == init_for("tom")


@pytest.mark.parametrize("make,message", [
    (lambda: access_token("tom", lifetime=-10), "Invalid token"),
    (lambda: access_token("tom", lifetime=0), "Invalid token"),
    (lambda: access_token("tom", nbf=int(time.time()) + 30), "Invalid token"),
    (lambda: sign({"userId": user("tom")["id"]}, secret="another-secret"), "Invalid token"),
    (lambda: sign({"userId": str(uuid.uuid4()), "username": "ghost"}), "Invalid token"),
    (lambda: sign({"username": "tom"}), "Invalid token"),
    (lambda: sign({"userId": user("tom")["id"], "type": "refresh"}), "Invalid token"),
    (lambda: f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'userId': user('admin')['id']})}.", "Invalid token"),
    (lambda: sign({"keyId": str(uuid.uuid4()), "type": "api"}), "Invalid API key"),
    # type "api" wins over a userId: never a user token.
    (lambda: sign({"keyId": str(uuid.uuid4()), "type": "api", "userId": user("admin")["id"]}), "Invalid API key"),
])
def test_bad_tokens(shared_server, clients, make, message):
    c = clients(shared_server.url)
    assert c.auth(make(), expect=FAILED) == {"message": message}


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_hs384_and_hs512(shared_server, clients, alg):
    c = clients(shared_server.url)
    tok = sign({"userId": user("sara")["id"], "username": "sara", "type": "access",
                "iat": int(time.time()), "exp": int(time.time()) + 60}, alg=alg)
    assert c.auth(tok) == init_for("sara")


def test_expired_api_key_is_refused_and_deactivated(server, clients):
    s = server()
    key = api_key_id("apikey_maria_expired")
    db = s.db()
    before = db.execute('SELECT "isActive", "updatedAt" FROM "apiKeys" WHERE "id" = ?', (key,)).fetchone()
    assert before["isActive"] == 1
    c = clients(s.url)
    t0 = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(milliseconds=1)
    assert c.auth(token("apikey_maria_expired"), expect=FAILED) == {"message": "API key expired"}
    deadline = time.time() + 3
    while time.time() < deadline:
        row = db.execute('SELECT "isActive", "updatedAt" FROM "apiKeys" WHERE "id" = ?', (key,)).fetchone()
        if row["isActive"] == 0:
            break
        time.sleep(0.05)
    assert row["isActive"] == 0
    updated = as_datetime(row["updatedAt"])
    assert t0 <= updated <= datetime.datetime.now(datetime.timezone.utc)
    # Once deactivated it stays "API key expired" (expiry is judged first).
    assert c.auth(token("apikey_maria_expired"), expect=FAILED) == {"message": "API key expired"}


def insert_key(db, owner_id, expires_at=None, active=True):
    kid = str(uuid.uuid4())
    now = sequelize_now()
    db.execute('INSERT INTO "apiKeys" ("id", "name", "description", "expiresAt", "lastUsedAt", "isActive", "permissions", "createdAt", "updatedAt", "userId", "createdByUserId") VALUES (?, ?, NULL, ?, NULL, ?, NULL, ?, ?, ?, NULL)',
               (kid, f"key-{kid[:8]}", expires_at, active, now, now, owner_id))
    return kid, sign({"keyId": kid, "name": f"key-{kid[:8]}", "type": "api", "iat": int(time.time())})


def test_api_key_rules_that_need_new_rows(server, clients):
    s = server()
    db = s.db()
    c = clients(s.url)
    # An API key of an inactive user: "Invalid user".
    _, tok = insert_key(db, user("olaf")["id"])
    assert c.auth(tok, expect=FAILED) == {"message": "Invalid user"}
    # A key whose owner is gone (userId NULL): "Invalid API key".
    _, tok = insert_key(db, None)
    assert c.auth(tok, expect=FAILED) == {"message": "Invalid API key"}
    # The row's expiresAt in the past, though the JWT has no exp: "API key expired", deactivated.
    kid, tok = insert_key(db, user("tom")["id"], expires_at=sequelize_now(-5))
    assert c.auth(tok, expect=FAILED) == {"message": "API key expired"}
    # A key created a moment ago authenticates; deactivated a moment ago, it does not.
    kid, tok = insert_key(db, user("lena")["id"])
    assert c.auth(tok) == init_for("lena")
    db.execute('UPDATE "apiKeys" SET "isActive" = FALSE WHERE "id" = ?', (kid,))
    assert clients(s.url).auth(tok, expect=FAILED) == {"message": "Invalid API key"}


def test_database_is_read_at_each_decision(server, clients):
    s = server()
    db = s.db()
    tom = user("tom")["id"]
    db.execute('UPDATE "users" SET "isActive" = FALSE WHERE "id" = ?', (tom,))
    assert clients(s.url).auth(token("legacy_tom"), expect=FAILED) == {"message": "Invalid user"}
    db.execute('UPDATE "users" SET "isActive" = TRUE WHERE "id" = ?', (tom,))
    assert clients(s.url).auth(token("legacy_tom")) == init_for("tom")
    # A user inserted a moment ago, in the exact format audiobookshelf writes.
    uid = str(uuid.uuid4())
    now = sequelize_now()
    db.execute("""INSERT INTO "users" ("id", "username", "email", "pash", "type", "token", "isActive", "isLocked", "lastSeen", "permissions", "bookmarks", "extraData", "createdAt", "updatedAt") VALUES (?, 'nina', NULL, NULL, 'user', NULL, TRUE, FALSE, NULL, '{}', '[]', '{}', ?, ?)""", (uid, now, now))
    assert clients(s.url).auth(sign({"userId": uid, "username": "nina", "iat": 1})) == {"userId": uid, "username": "nina"}
    # Deleted: the token names nobody.
    db.execute('DELETE FROM "users" WHERE "id" = ?', (uid,))
    assert clients(s.url).auth(sign({"userId": uid, "username": "nina", "iat": 1}), expect=FAILED) == {"message": "Invalid token"}


def test_user_found_by_old_user_id(server, clients):
    s = server()
    db = s.db()
    import json
    extra = db.execute("""SELECT "extraData" FROM "users" WHERE "username" = 'sara'""").fetchone()["extraData"]
    extra = json.loads(extra) if isinstance(extra, str) else extra
    extra["oldUserId"] = "usr_legacy_sara"
    db.execute("""UPDATE "users" SET "extraData" = ? WHERE "username" = 'sara'""", (json.dumps(extra, separators=(",", ":")),))
    c = clients(s.url)
    assert c.auth(sign({"userId": "usr_legacy_sara", "username": "sara", "iat": 1})) == init_for("sara")


def test_lenient_json_columns(server, clients):
    s = server()
    db = s.db()
    db.execute("""UPDATE "users" SET "permissions" = NULL, "extraData" = NULL, "bookmarks" = NULL, "email" = '', "pash" = NULL WHERE "username" = 'lena'""")
    db.execute("""UPDATE "users" SET "permissions" = '{}', "extraData" = '{}' WHERE "username" = 'sara'""")
    assert clients(s.url).auth(token("legacy_lena")) == init_for("lena")
    assert clients(s.url).auth(token("legacy_sara")) == init_for("sara")


def test_last_seen_is_written_in_sequelize_format_within_a_second(server, clients, backend):
    s = server()
    db = s.db()
    tom = user("tom")["id"]
    before = db.execute('SELECT "lastSeen" FROM "users" WHERE "id" = ?', (tom,)).fetchone()["lastSeen"]
    assert as_datetime(before) == datetime.datetime(2026, 12, 4, 13, 41, 15, 866000, tzinfo=datetime.timezone.utc)
    if backend == "sqlite":
        assert before == "2026-12-04 13:41:15.866 +00:00"
    t0 = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(milliseconds=1)
    clients(s.url).auth(token("legacy_tom"))
    t1 = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(milliseconds=1)
    deadline = time.time() + 1.0
    row = None
    while time.time() < deadline:
        row = db.execute('SELECT "lastSeen", "updatedAt" FROM "users" WHERE "id" = ?', (tom,)).fetchone()
        if row["lastSeen"] != before:
            break
        time.sleep(0.02)
    assert row["lastSeen"] != before, "lastSeen not written within 1 s"
    seen = as_datetime(row["lastSeen"])  # Sequelize's text form on SQLite (checked there)
    assert t0 <= seen <= t1
    assert row["updatedAt"] == row["lastSeen"]
    # An admin's usersOnline shows the same value, in epoch ms.
    a = clients(s.url)
    got = a.auth(token("legacy_admin"))
    entry = next(u for u in got["usersOnline"] if u["id"] == tom)
    assert entry["lastSeen"] == round(seen.timestamp() * 1000)
