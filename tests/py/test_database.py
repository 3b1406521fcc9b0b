"""CONTRACT section 5: a fresh database is created; a real audiobookshelf one is left as it is."""

import json
import os
import re
import subprocess

from conftest import BIN, FIXTURE_DIR, SEQUELIZE_DATE, Client, Server, connect_db, fixture_copy, run_cli, token


def schema(db):
    return sorted(tuple(r) for r in db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))


def test_existing_database_schema_and_journal_mode_unchanged(workdir):
    path = fixture_copy(workdir)
    db = connect_db(path)
    before = schema(db)
    mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    db.close()
    assert mode == "delete"
    s = Server(path)
    try:
        c = Client(s.url)
        c.auth(token("legacy_admin"))
        Client(s.url).auth(token("apikey_maria_expired"), expect="auth_failed")  # a write: deactivation
        c.close()
    finally:
        assert s.stop() == 0
    assert "2.36.0" in s.log(), "the audiobookshelf version is logged"
    db = connect_db(path)
    assert schema(db) == before
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert not db.execute("SELECT name FROM sqlite_master WHERE name LIKE 'seaql%'").fetchall()
    db.close()
    leftovers = sorted(p.name for p in workdir.iterdir() if p.name.startswith("absdatabase.sqlite") and p.name != "absdatabase.sqlite")
    assert leftovers == [], leftovers


def test_unknown_audiobookshelf_version_is_warned_about(workdir):
    path = fixture_copy(workdir)
    db = connect_db(path)
    db.execute("UPDATE migrationsMeta SET value = '9.1.0' WHERE key = 'version'")
    db.close()
    s = Server(path)
    s.stop()
    assert re.search(r"WARN.*not one abs-socket was checked against", s.log()), s.log()


def test_fresh_database_quickstart(workdir):
    """The README's quickstart: the default file is created; the CLI makes a user and a token."""
    s = Server(None, fresh_dir=workdir)
    try:
        path = workdir / "absdatabase.sqlite"
        assert path.exists()
        assert "no users yet" in s.log()
        db = connect_db(path)
        fixture = connect_db(FIXTURE_DIR / "absdatabase.sqlite")
        for table in ("users", "apiKeys", "sessions", "settings", "libraryItems", "books", "podcasts"):
            q = "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?"
            assert db.execute(q, (table,)).fetchone()[0] == fixture.execute(q, (table,)).fetchone()[0], table
        secret = json.loads(db.execute("SELECT value FROM settings WHERE key = 'server-settings'").fetchone()[0])["tokenSecret"]
        assert len(secret) == 344, "256 random bytes in base64, as audiobookshelf makes it"

        out = run_cli(path, "user", "add", "root", "--type", "root", "--password", "pw").stdout
        uid = out.split("\t")[0]
        row = db.execute("SELECT * FROM users WHERE id = ?", (uid,)).fetchone()
        assert row["type"] == "root" and row["isActive"] == 1 and row["isLocked"] == 0
        assert row["pash"].startswith("$2")
        assert re.match(SEQUELIZE_DATE, row["createdAt"]) and row["createdAt"] == row["updatedAt"]
        perms = json.loads(row["permissions"])
        assert perms["accessAllLibraries"] and perms["delete"] and perms["librariesAccessible"] == []
        assert json.loads(row["extraData"]) == {"seriesHideFromContinueListening": []}
        assert row["bookmarks"] == "[]"

        access = run_cli(path, "user", "token", "root").stdout.strip()
        legacy = run_cli(path, "user", "token", "root", "--legacy").stdout.strip()
        assert legacy == row["token"]
        for tok in (access, legacy):
            c = Client(s.url)
            got = c.auth(tok)
            assert got["userId"] == uid and got["username"] == "root"
            c.close()

        run_cli(path, "user", "add", "kid", "--type", "guest", "--libraries", "lib1", "--tags", "a,b", "--deny-tags", "--no-explicit")
        perms = json.loads(db.execute("SELECT permissions FROM users WHERE username = 'kid'").fetchone()[0])
        assert perms["librariesAccessible"] == ["lib1"] and perms["itemTagsSelected"] == ["a", "b"]
        assert perms["selectedTagsNotAccessible"] and not perms["accessAllTags"] and not perms["accessExplicitContent"]

        key = run_cli(path, "apikey", "create", "kid", "--name", "script").stdout.strip()
        c = Client(s.url)
        assert c.auth(key)["username"] == "kid"
        run_cli(path, "apikey", "deactivate", "script")
        assert Client(s.url).auth(key, expect="auth_failed") == {"message": "Invalid API key"}
        short = run_cli(path, "apikey", "create", "kid", "--name", "short", "--expires-in", "60").stdout.strip()
        row = db.execute("SELECT expiresAt, isActive FROM apiKeys WHERE name = 'short'").fetchone()
        assert re.match(SEQUELIZE_DATE, row["expiresAt"]) and row["isActive"] == 1
        assert Client(s.url).auth(short)["username"] == "kid"
    finally:
        assert s.stop() == 0
    # Restarted on the same file: the stored secret still verifies the earlier token.
    s = Server(None, fresh_dir=workdir)
    try:
        assert Client(s.url).auth(access)["userId"] == uid
    finally:
        s.stop()


def test_cli_errors_are_one_line_and_nonzero(workdir):
    path = fixture_copy(workdir)
    for args in (["user", "token", "nobody"], ["user", "add", "tom"], ["apikey", "deactivate", "nope"],
                 ["apikey", "create", "nobody", "--name", "x"], ["user", "add", ""]):
        res = run_cli(path, *args, check=False)
        assert res.returncode != 0, args
        assert "panicked" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    res = subprocess.run([str(BIN), "--database", str(workdir / "missing.sqlite"), "user", "list"], capture_output=True, text=True)
    assert res.returncode != 0 and "does not exist" in res.stderr
    assert not (workdir / "missing.sqlite").exists()


def test_not_a_database_fails_at_start_with_one_line(workdir):
    bad = workdir / "absdatabase.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    res = subprocess.run([str(BIN), "--database", str(bad), "serve", "--port", "0"], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "RUST_LOG": "off"})
    assert res.returncode != 0
    assert "not a readable SQLite database" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_an_empty_router_base_path_turns_the_second_path_off(workdir):
    s = Server(fixture_copy(workdir), env={"ROUTER_BASE_PATH": ""})
    try:
        import requests
        base = requests.get(f"{s.url}/audiobookshelf/socket.io/?EIO=4&transport=polling", timeout=5)
        root = requests.get(f"{s.url}/socket.io/?EIO=4&transport=polling", timeout=5)
        assert base.status_code == 404
        assert root.status_code == 200 and root.text.startswith("0{")
    finally:
        s.stop()
    s = Server(fixture_copy(workdir), env={"ROUTER_BASE_PATH": "/abs/"})
    try:
        import requests
        assert requests.get(f"{s.url}/abs/socket.io/?EIO=4&transport=polling", timeout=5).text.startswith("0{")
        assert requests.get(f"{s.url}/audiobookshelf/socket.io/?EIO=4&transport=polling", timeout=5).status_code == 404
    finally:
        s.stop()


def test_a_fresh_postgres_store_managed_with_the_cli(postgres, workdir):
    """Standalone on PostgreSQL: the tables are created (native types), users and keys come from
    the CLI, and the server authenticates them."""
    url = postgres.new_database()
    assert run_cli(url, "user", "add", "boss", "--type", "root", "--password", "pw").returncode == 0
    assert run_cli(url, "user", "add", "kid", "--type", "user", "--no-explicit").returncode == 0
    name = url.rsplit("/", 1)[1]
    types = dict(line.split("|") for line in postgres.psql(
        """SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'users'""",
        database=name).splitlines())
    assert types["lastSeen"] == "timestamp with time zone" and types["isActive"] == "boolean"
    assert types["permissions"] == "json"
    access = run_cli(url, "user", "token", "boss").stdout.strip()
    key = run_cli(url, "apikey", "create", "kid", "--name", "script").stdout.strip().splitlines()[0]
    srv = Server(None, fresh_dir=workdir, pg=type("Store", (), {"url": url})())
    try:
        a, b = Client(srv.url), Client(srv.url)
        assert a.auth(access)["username"] == "boss"
        assert b.auth(key)["username"] == "kid"
        # The key is revoked live, on PostgreSQL as on SQLite.
        assert run_cli(url, "apikey", "deactivate", "script").returncode == 0
        assert b.next("auth_failed", timeout=2.5) == {"message": "Invalid API key"}
        a.close()
        b.close()
    finally:
        srv.stop()
