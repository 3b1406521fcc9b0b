"""The load generator works: each scenario at a small N against the real server (no timing asserted)."""

import re
import subprocess

from conftest import REPO, token

BENCH = REPO / "target" / "debug" / "abs-bench"


def run(shared_server, *args):
    out = subprocess.run([str(BENCH), *args, "--server", f"127.0.0.1:{shared_server.port}",
                          "--pid", str(shared_server.proc.pid),
                          "--token", token("legacy_tom"), "--token", token("apikey_tom_active")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_auth_storm(shared_server):
    out = run(shared_server, "auth-storm", "--n", "60")
    assert re.search(r"n=60 ok=60 lost=0", out), out
    assert "cpu_ms_per_socket=" in out


def test_fanout(shared_server):
    out = run(shared_server, "fanout", "--n", "30", "--rounds", "3", "--admin-token", token("legacy_admin"))
    assert re.search(r"n=3 ok=3 lost=0", out), out
    assert "p99=" in out and "cpu_us_per_recipient=" in out


def test_idle(shared_server):
    out = run(shared_server, "idle", "--n", "30", "--secs", "1")
    assert re.search(r"n=30 ok=30", out), out
    assert "rss_per_socket=" in out


def test_api_fanout(shared_server):
    tom = __import__("conftest").user("tom")["id"]
    out = run(shared_server, "api-fanout", "--n", "30", "--rounds", "3", "--admin-token", token("legacy_admin"),
              "--to", '{"users":["%s"]}' % tom)
    assert re.search(r"n=3 ok=3 lost=0", out), out
    assert "p99=" in out and "cpu_us_per_recipient=" in out


def test_cluster_fanout_over_two_nodes():
    from conftest import BIN, FIXTURE_DIR
    out = subprocess.run([str(BENCH), "cluster", "--abs-socket", str(BIN), "--database", str(FIXTURE_DIR / "absdatabase.sqlite"),
                          "--fanout", "30", "--rounds", "3", "--nodes", "2"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert re.search(r"\| rounds complete \| 3\.000 +\| 3\.000 +\|", out.stdout), out.stdout
    assert "2 nodes on Redis" in out.stdout


def test_floor_server_runs_the_socket_scenarios():
    """The floor (bench/src/floor.rs) speaks enough of the protocol for the real load generator."""
    from conftest import FIXTURE_DIR
    out = subprocess.run([str(BENCH), "compare", "--only", "floor", "--database", str(FIXTURE_DIR / "absdatabase.sqlite"),
                          "--storm", "40", "--fanout", "30",
                          "--rounds", "3", "--idle", "20", "--idle-secs", "1", "--api"],
                         capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("floor: auth-storm 40:") == 3, "three storms, the table shows the median"
    rows = {line.split("|")[2].strip(): line for line in out.stdout.splitlines() if line.count("|") == 8}
    assert re.search(r"\| 0\.000 +\| - \|$", rows["lost sockets"]), out.stdout
    assert re.search(r"\| 3\.000 +\| - \|$", rows["rounds complete"]), out.stdout
    assert re.search(r"\| 20\.000 +\| - \|$", rows["sockets still connected"]), out.stdout
    assert re.search(r"\| [0-9.]+ µs \| - \|$", rows["server CPU per recipient per broadcast"]), out.stdout
