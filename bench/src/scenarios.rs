//! The scenarios, and the runner that plays them against both servers.

use crate::proc_stats;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use sio_client::Conn;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};

/// Where to connect and how.
#[derive(clap::Args, Clone, Debug)]
pub struct Target {
    /// The server, host:port (loopback only is sensible here).
    #[arg(long, value_parser = crate::parse_addr, default_value = "127.0.0.1:3333")]
    pub server: SocketAddr,
    /// Further nodes of the same cluster: sockets are spread over all of them, round-robin.
    #[arg(long, value_parser = crate::parse_addr, value_delimiter = ',')]
    pub also: Vec<SocketAddr>,
    /// Socket.IO paths, alternated from socket to socket.
    #[arg(
        long,
        default_value = "/socket.io,/audiobookshelf/socket.io",
        value_delimiter = ','
    )]
    pub paths: Vec<String>,
    /// Tokens for the sockets, used round-robin.
    #[arg(long = "token")]
    pub tokens: Vec<String>,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 1000)]
    pub ramp: usize,
    /// Give up on a scenario after this many seconds.
    #[arg(long, default_value_t = 180)]
    pub timeout_secs: u64,
    /// The server's pid, to read its CPU time and memory (with several nodes, each one's;
    /// their CPU times are summed).
    #[arg(long, value_delimiter = ',')]
    pub pid: Vec<u32>,
}

/// Source addresses: past ~28,000 ephemeral ports per address, sockets move to the next
/// 127.0.0.x, so one process can open more connections than one address allows.
static NEXT_SOCKET: AtomicUsize = AtomicUsize::new(0);
const PER_SOURCE: usize = 16_000;

fn next_source() -> IpAddr {
    let k = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + ((k / PER_SOURCE) % 250) as u8))
}

impl Target {
    /// One server the runner started, on both socket paths.
    fn of(server: &Running, tokens: &[String], ramp: usize) -> Self {
        Self {
            server: server.addr,
            also: Vec::new(),
            paths: vec!["/socket.io".into(), "/audiobookshelf/socket.io".into()],
            tokens: tokens.to_vec(),
            ramp,
            timeout_secs: 300,
            pid: vec![server.child.id()],
        }
    }

    fn path(&self, k: usize) -> &str {
        &self.paths[k % self.paths.len()]
    }

    fn token(&self, k: usize) -> &str {
        &self.tokens[k % self.tokens.len()]
    }

    /// The node socket `k` goes to.
    fn node(&self, k: usize) -> SocketAddr {
        match k % (1 + self.also.len()) {
            0 => self.server,
            i => self.also[i - 1],
        }
    }

    /// Socket `k`, connected (within the ramp) and authenticated with its token.
    async fn open_authenticated(&self, k: usize, ramp: &Semaphore) -> anyhow::Result<Conn> {
        let mut conn = {
            let _permit = ramp.acquire().await?;
            Conn::connect_from(self.node(k), next_source(), self.path(k), "").await?
        };
        conn.auth(self.token(k)).await?;
        Ok(conn)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    pub name: String,
    pub n: usize,
    pub ok: usize,
    pub wall: Duration,
    pub cpu: Option<Duration>,
    pub per_unit: Option<f64>,
    pub unit: &'static str,
    pub latencies: Vec<Duration>,
    pub rss_per_socket: Option<f64>,
}

impl Report {
    fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut v = self.latencies.clone();
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        Some(v[i])
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: n={} ok={} lost={} wall={:.3}s",
            self.name,
            self.n,
            self.ok,
            self.n - self.ok,
            self.wall.as_secs_f64()
        )?;
        if let Some(cpu) = self.cpu {
            write!(f, " server_cpu={:.3}s", cpu.as_secs_f64())?;
        }
        if let Some(u) = self.per_unit {
            write!(f, " {}={u:.2}", self.unit)?;
        }
        if let (Some(p50), Some(p99)) = (self.percentile(0.5), self.percentile(0.99)) {
            let max = self.latencies.iter().max().copied().unwrap_or_default();
            write!(
                f,
                " p50={:.1}ms p99={:.1}ms max={:.1}ms",
                ms(p50),
                ms(p99),
                ms(max)
            )?;
        }
        if let Some(r) = self.rss_per_socket {
            write!(f, " rss_per_socket={:.1}KB", r / 1024.0)?;
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The summed CPU time of `pids` (`None` without any).
fn cpu_of(pids: &[u32]) -> Option<Duration> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|p| proc_stats::cpu(*p).ok())
        .sum::<Option<Duration>>()
}

/// The CPU time `pids` have used since they had used `start`.
fn cpu_since(pids: &[u32], start: Option<Duration>) -> Option<Duration> {
    cpu_of(pids)
        .zip(start)
        .map(|(now, then)| now.saturating_sub(then))
}

/// `auth-storm`: N sockets connect and emit `auth` at once.
pub async fn auth_storm(target: &Target, n: usize) -> anyhow::Result<Report> {
    let ramp = Arc::new(Semaphore::new(target.ramp));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<bool>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let cpu0 = cpu_of(&target.pid);
    let t0 = Instant::now();
    for k in 0..n {
        let (target, ramp, done, mut stop) = (
            target.clone(),
            ramp.clone(),
            done_tx.clone(),
            stop_rx.clone(),
        );
        tokio::spawn(async move {
            let result = target.open_authenticated(k, &ramp).await;
            let _ = done.send(result.is_ok());
            if let Ok(conn) = result {
                let _ = stop.changed().await;
                conn.close().await;
            }
        });
    }
    drop(done_tx);
    let mut ok = 0;
    let deadline = tokio::time::sleep(Duration::from_secs(target.timeout_secs));
    tokio::pin!(deadline);
    for _ in 0..n {
        tokio::select! {
            r = done_rx.recv() => match r { Some(true) => ok += 1, Some(false) => {}, None => break },
            _ = &mut deadline => break,
        }
    }
    let wall = t0.elapsed();
    let cpu = cpu_since(&target.pid, cpu0);
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Report {
        name: format!("auth-storm {n}"),
        n,
        ok,
        wall,
        cpu,
        per_unit: cpu.map(|c| c.as_secs_f64() * 1e3 / n as f64),
        unit: "cpu_ms_per_socket",
        ..Default::default()
    })
}

/// Holds `n` authenticated sockets; each reports arrivals of `event` (whose argument is
/// `r<round>`) as (round, instant). Returns the indices of the sockets that authenticated.
async fn hold(
    target: &Target,
    n: usize,
    event: &'static str,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(
    Vec<usize>,
    mpsc::UnboundedReceiver<(usize, Instant)>,
    mpsc::UnboundedReceiver<()>,
)> {
    let ramp = Arc::new(Semaphore::new(target.ramp));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<(usize, bool)>();
    let (arrive_tx, arrive_rx) = mpsc::unbounded_channel();
    let (died_tx, died_rx) = mpsc::unbounded_channel();
    for k in 0..n {
        let (target, ramp, ready, arrive, died, mut stop) = (
            target.clone(),
            ramp.clone(),
            ready_tx.clone(),
            arrive_tx.clone(),
            died_tx.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let conn = target.open_authenticated(k, &ramp).await;
            let Ok(mut conn) = conn else {
                let _ = ready.send((k, false));
                return;
            };
            let _ = ready.send((k, true));
            loop {
                tokio::select! {
                    ev = conn.next_event() => match ev {
                        Ok(ev) if ev.name == event => {
                            let round = ev.args.first().and_then(Value::as_str).and_then(|s| s.strip_prefix('r')).and_then(|s| s.parse().ok());
                            if let Some(round) = round {
                                let _ = arrive.send((round, Instant::now()));
                            }
                        }
                        Ok(_) => {}
                        Err(_) => {
                            if !*stop.borrow() {
                                let _ = died.send(());
                            }
                            return;
                        }
                    },
                    _ = stop.changed() => {
                        conn.close().await;
                        return;
                    }
                }
            }
        });
    }
    drop(ready_tx);
    let mut ok = Vec::new();
    let deadline = tokio::time::sleep(Duration::from_secs(target.timeout_secs));
    tokio::pin!(deadline);
    for _ in 0..n {
        tokio::select! {
            r = ready_rx.recv() => match r { Some((k, true)) => ok.push(k), Some(_) => {}, None => break },
            _ = &mut deadline => break,
        }
    }
    Ok((ok, arrive_rx, died_rx))
}

/// Waits (20 s at most) for `expected` arrivals of `round`; whether they all came, and the time
/// from `sent` to the last one.
async fn await_round(
    arrivals: &mut mpsc::UnboundedReceiver<(usize, Instant)>,
    round: usize,
    expected: usize,
    sent: Instant,
) -> (bool, Duration) {
    let (mut got, mut last) = (0, sent);
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    while got < expected {
        tokio::select! {
            a = arrivals.recv() => match a {
                Some((r, at)) if r == round => { got += 1; last = last.max(at); }
                Some(_) => {}
                None => break,
            },
            _ = &mut deadline => break,
        }
    }
    (got == expected, last - sent)
}

/// `fanout`: an admin sends `message_all_users`; time until the last `admin_message` arrives.
pub async fn fanout(
    target: &Target,
    n: usize,
    rounds: usize,
    admin_token: &str,
) -> anyhow::Result<Report> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let ok = hold(target, n, "admin_message", stop_rx).await?;
    let (ok, mut arrivals) = (ok.0.len(), ok.1);
    let mut admin = Conn::connect_from(target.server, next_source(), target.path(0), "").await?;
    admin.auth(admin_token).await?;
    let cpu0 = cpu_of(&target.pid);
    let t0 = Instant::now();
    let mut latencies = Vec::new();
    let mut complete = 0;
    for round in 0..rounds {
        let sent = Instant::now();
        admin
            .emit(
                "message_all_users",
                &[json!({ "message": format!("r{round}") })],
            )
            .await?;
        // The sender gets its own admin_message too.
        loop {
            let ev = admin.next_event().await?;
            if ev.name == "admin_message" {
                break;
            }
        }
        let (all, latency) = await_round(&mut arrivals, round, ok, sent).await;
        complete += usize::from(all);
        latencies.push(latency);
    }
    let wall = t0.elapsed();
    let cpu = cpu_since(&target.pid, cpu0);
    let _ = stop_tx.send(true);
    admin.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recipients = (ok + 1) * rounds;
    Ok(Report {
        name: format!("fanout {n} x{rounds}"),
        n: rounds,
        ok: complete,
        wall,
        cpu,
        per_unit: cpu.map(|c| c.as_secs_f64() * 1e6 / recipients as f64),
        unit: "cpu_us_per_recipient",
        latencies,
        ..Default::default()
    })
}

/// One publishing-API target: its name, the `to` of the request, and how many of the held
/// sockets it reaches.
#[derive(Clone)]
pub struct ApiTarget {
    pub name: String,
    pub to: Value,
    /// Which held sockets (by index) it reaches: every one of them, without this.
    pub reaches: Option<Arc<dyn Fn(usize) -> bool + Send + Sync>>,
}

/// `POST /api/socket/emit` over a fresh connection; the response's status code.
async fn post_emit(server: SocketAddr, token: &str, body: &Value) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let mut stream = tokio::net::TcpStream::connect(server).await?;
    let request = format!(
        "POST /api/socket/emit HTTP/1.1\r\nHost: {server}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let head = String::from_utf8_lossy(&response[..response.len().min(32)]).into_owned();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP response: {head:?}"))
}

/// `api-fanout`: `n` authenticated sockets; for each target, `rounds` publishing-API requests
/// (`POST /api/socket/emit`, as the library server would send them), each timed from the request
/// until the last expected socket has the event. One report per target.
pub async fn api_fanout(
    target: &Target,
    n: usize,
    rounds: usize,
    admin_token: &str,
    targets: &[ApiTarget],
) -> anyhow::Result<Vec<Report>> {
    let (stop_tx, stop_rx) = watch::channel(false);
    // A server that lost sockets in the storm is measured on the ones it kept.
    let (ok, mut arrivals, _died) = hold(target, n, "bench_event", stop_rx).await?;
    if ok.len() < n {
        eprintln!("api-fanout: {} of {n} sockets authenticated", ok.len());
    }
    let mut reports = Vec::new();
    let mut round_id = 0;
    for t in targets {
        let expected = ok
            .iter()
            .filter(|&&k| t.reaches.as_ref().is_none_or(|r| r(k)))
            .count();
        let cpu0 = cpu_of(&target.pid);
        let t0 = Instant::now();
        let mut latencies = Vec::new();
        let mut complete = 0;
        for _ in 0..rounds {
            round_id += 1;
            let sent = Instant::now();
            let body =
                json!({ "event": "bench_event", "data": format!("r{round_id}"), "to": t.to });
            let status = post_emit(target.server, admin_token, &body).await?;
            if status != 200 {
                bail!("publishing API answered {status} for {}", t.name);
            }
            let (all, latency) = await_round(&mut arrivals, round_id, expected, sent).await;
            complete += usize::from(all);
            latencies.push(latency);
        }
        let wall = t0.elapsed();
        let cpu = cpu_since(&target.pid, cpu0);
        let recipients = (expected * rounds).max(1);
        reports.push(Report {
            name: format!("api {} x{rounds}", t.name),
            n: rounds,
            ok: complete,
            wall,
            cpu,
            per_unit: cpu.map(|c| c.as_secs_f64() * 1e6 / recipients as f64),
            unit: "cpu_us_per_recipient",
            latencies,
            ..Default::default()
        });
    }
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(reports)
}

/// `idle`: N authenticated sockets answering pings for `secs`; memory before and after.
pub async fn idle(
    target: &Target,
    n: usize,
    secs: u64,
    baseline: Option<u64>,
) -> anyhow::Result<Report> {
    let rss_of = |pids: &[u32]| -> Option<u64> {
        let first = *pids.first()?;
        proc_stats::rss(first).ok()
    };
    let rss0 = baseline.or_else(|| rss_of(&target.pid));
    let (stop_tx, stop_rx) = watch::channel(false);
    let t0 = Instant::now();
    let (ok, _arrivals, mut died) = hold(target, n, "admin_message", stop_rx).await?;
    let ok = ok.len();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let mut dead = 0;
    while died.try_recv().is_ok() {
        dead += 1;
    }
    let rss1 = rss_of(&target.pid);
    let wall = t0.elapsed();
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Report {
        name: format!("idle {n} for {secs}s"),
        n,
        ok: ok - dead,
        wall,
        rss_per_socket: rss0
            .zip(rss1)
            .map(|(a, b)| (b as f64 - a as f64) / ok.max(1) as f64),
        ..Default::default()
    })
}

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    #[arg(long, default_value = "target/release/abs-socket")]
    pub abs_socket: PathBuf,
    #[arg(long, default_value = "bench/reference/server.js")]
    pub reference: PathBuf,
    /// The database both servers run on (each on its own copy); tokens.json must sit beside it.
    #[arg(long, default_value = "../shared/fixtures/abs-2.36/absdatabase.sqlite")]
    pub database: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    pub storm: usize,
    /// Storms per server, each on a fresh server; the table shows the one of median CPU. One
    /// storm lasts two seconds, and this shared machine's speed drifts by more than the
    /// difference between two versions over such a span (the same binary measured 0.08 to 0.15
    /// ms per socket in one session).
    #[arg(long, default_value_t = 3)]
    pub storm_runs: usize,
    #[arg(long, default_value_t = 10_000)]
    pub fanout: usize,
    #[arg(long, default_value_t = 50)]
    pub rounds: usize,
    #[arg(long, default_value_t = 15_000)]
    pub idle: usize,
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
    /// Sizes of the publishing-API scenarios (`all`, one user, a `libraryItem`); `--api` with no
    /// value skips them.
    #[arg(long, default_value = "1000,10000", value_delimiter = ',', num_args = 0..)]
    pub api: Vec<usize>,
    /// Requests per publishing-API target.
    #[arg(long, default_value_t = 50)]
    pub api_rounds: usize,
    /// Run only one of the servers: abs-socket, reference or floor (`floor.rs`).
    #[arg(long)]
    pub only: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub ramp: usize,
}

struct Running {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start(kind: &str, args: &CompareArgs) -> anyhow::Result<Running> {
    start_on(
        kind,
        &args.abs_socket,
        &args.reference,
        &args.database,
        None,
        &[],
    )
    .await
}

/// Starts `kind` on a copy of `database` (or, with `shared`, on that very file, as several nodes
/// on one host share it), with `extra` flags for abs-socket.
async fn start_on(
    kind: &str,
    abs_socket: &Path,
    reference: &Path,
    database: &Path,
    shared: Option<&Path>,
    extra: &[String],
) -> anyhow::Result<Running> {
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "abs-bench-{kind}-{}-{}",
        std::process::id(),
        STARTED.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let db = match shared {
        Some(path) => path.to_owned(),
        None => {
            let db = dir.join("absdatabase.sqlite");
            std::fs::copy(database, &db).context("copying the database")?;
            db
        }
    };
    let port = free_port()?;
    let mut cmd = match kind {
        "abs-socket" => {
            let mut c = Command::new(abs_socket);
            c.arg("--database").arg(&db).args([
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ]);
            c.args(extra);
            c.env("RUST_LOG", "warn");
            c
        }
        "floor" => {
            let mut c = Command::new(std::env::current_exe()?);
            c.args(["floor-server", "--port", &port.to_string()]);
            c
        }
        _ => {
            let mut c = Command::new("node");
            c.arg(reference);
            c.env("PORT", port.to_string())
                .env("DATABASE", &db)
                .env("NODE_ENV", "production");
            c
        }
    };
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {kind}"))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let running = Running { child, dir, addr };
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Ok(running);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{kind} did not start")
}

fn fixture(database: &Path) -> anyhow::Result<Value> {
    let path = database.with_file_name("tokens.json");
    Ok(serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?)
}

/// The publishing-API targets for `n` sockets whose tokens go round-robin over tom, sara and
/// lena: everyone; tom alone (a third); an untagged, non-explicit item of the Audiobooks library,
/// which tom may not see (sara and lena: two thirds).
fn api_targets(fixture: &Value, n: usize) -> anyhow::Result<Vec<ApiTarget>> {
    // `n` only names the rows; who is reached follows from the socket's index.
    let tom = fixture["users"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["username"] == "tom"))
        .and_then(|u| u["id"].as_str())
        .context("no tom in tokens.json")?;
    let audiobooks = fixture["libraries"]["Audiobooks"]["id"]
        .as_str()
        .context("no Audiobooks library in tokens.json")?;
    Ok(vec![
        ApiTarget {
            name: format!("all {n}"),
            to: json!({ "all": true }),
            reaches: None,
        },
        ApiTarget {
            name: format!("one user {n}"),
            to: json!({ "users": [tom] }),
            reaches: Some(Arc::new(|k: usize| k.is_multiple_of(3))),
        },
        ApiTarget {
            name: format!("libraryItem {n}"),
            to: json!({ "libraryItem": { "libraryId": audiobooks, "tags": [], "explicit": false } }),
            reaches: Some(Arc::new(|k: usize| !k.is_multiple_of(3))),
        },
    ])
}

fn fixture_tokens(database: &Path) -> anyhow::Result<(Vec<String>, String)> {
    let v = fixture(database)?;
    let find = |label: &str| {
        v["tokens"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["label"] == label))
            .and_then(|t| t["jwt"].as_str())
            .map(str::to_owned)
    };
    let users = ["legacy_tom", "legacy_sara", "legacy_lena"]
        .iter()
        .filter_map(|l| find(l))
        .collect();
    let admin = find("legacy_admin").context("no admin token in tokens.json")?;
    Ok((users, admin))
}

pub async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let (tokens, admin) = fixture_tokens(&args.database)?;
    let fixture = fixture(&args.database)?;
    let kinds: Vec<&str> = match args.only.as_deref() {
        Some(k) => vec![k],
        None => vec!["abs-socket", "reference", "floor"],
    };
    let mut results: Vec<(String, Vec<Report>)> = Vec::new();
    for kind in kinds {
        let mut reports = Vec::new();
        for scenario in ["auth-storm", "fanout", "idle"] {
            let runs = if scenario == "auth-storm" {
                args.storm_runs.max(1)
            } else {
                1
            };
            let mut runs_done = Vec::with_capacity(runs);
            for _ in 0..runs {
                let server = start(kind, &args).await?;
                let target = Target::of(&server, &tokens, args.ramp);
                let report = match scenario {
                    "auth-storm" => auth_storm(&target, args.storm).await?,
                    "fanout" => fanout(&target, args.fanout, args.rounds, &admin).await?,
                    _ => idle(&target, args.idle, args.idle_secs, None).await?,
                };
                eprintln!("{kind}: {report}");
                runs_done.push(report);
                drop(server);
                // Let closed sockets leave TIME_WAIT behind on other source addresses.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            reports.push(median_by_cpu(runs_done));
        }
        // The floor has no publishing API.
        for &n in args.api.iter().filter(|_| kind != "floor") {
            let server = start(kind, &args).await?;
            let target = Target::of(&server, &tokens, args.ramp);
            let targets = api_targets(&fixture, n)?;
            for report in api_fanout(&target, n, args.api_rounds, &admin, &targets).await? {
                eprintln!("{kind}: {report}");
                reports.push(report);
            }
            drop(server);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        results.push((kind.to_owned(), reports));
    }
    print_table(&results);
    Ok(())
}

/// The run of median server CPU (every run is printed as it ends).
fn median_by_cpu(mut runs: Vec<Report>) -> Report {
    runs.sort_by_key(|r| r.cpu);
    runs.swap_remove(runs.len() / 2)
}

fn print_table(results: &[(String, Vec<Report>)]) {
    let get = |kind: &str, i: usize| {
        results
            .iter()
            .find(|(k, _)| k == kind)
            .and_then(|(_, r)| r.get(i))
    };
    println!(
        "| scenario | figure | abs-socket | reference | reference / abs-socket | floor | abs-socket / floor |"
    );
    println!("|---|---|---|---|---|---|---|");
    type Figure = Box<dyn Fn(&Report) -> Option<f64>>;
    let rows: Vec<(usize, &str, Figure, &str)> = vec![
        (
            0,
            "lost sockets",
            Box::new(|r: &Report| Some((r.n - r.ok) as f64)),
            "",
        ),
        (
            0,
            "server CPU per socket",
            Box::new(|r: &Report| r.per_unit),
            "ms",
        ),
        (
            0,
            "wall-clock until all init",
            Box::new(|r: &Report| Some(r.wall.as_secs_f64())),
            "s",
        ),
        (
            1,
            "server CPU per recipient per broadcast",
            Box::new(|r: &Report| r.per_unit),
            "µs",
        ),
        (
            1,
            "latency p50",
            Box::new(|r: &Report| r.percentile(0.5).map(ms)),
            "ms",
        ),
        (
            1,
            "latency p99",
            Box::new(|r: &Report| r.percentile(0.99).map(ms)),
            "ms",
        ),
        (
            1,
            "latency max",
            Box::new(|r: &Report| r.latencies.iter().max().map(|d| ms(*d))),
            "ms",
        ),
        (
            1,
            "rounds complete",
            Box::new(|r: &Report| Some(r.ok as f64)),
            "",
        ),
        (
            2,
            "sockets still connected",
            Box::new(|r: &Report| Some(r.ok as f64)),
            "",
        ),
        (
            2,
            "resident memory per socket",
            Box::new(|r: &Report| r.rss_per_socket.map(|b| b / 1024.0)),
            "KB",
        ),
    ];
    let api_reports = results
        .first()
        .map(|(_, r)| r.len().saturating_sub(3))
        .unwrap_or(0);
    let mut rows = rows;
    for i in 3..3 + api_reports {
        rows.push((
            i,
            "server CPU per recipient per request",
            Box::new(|r: &Report| r.per_unit),
            "µs",
        ));
        rows.push((
            i,
            "latency p99",
            Box::new(|r: &Report| r.percentile(0.99).map(ms)),
            "ms",
        ));
    }
    for (i, label, f, unit) in rows {
        let name = get("abs-socket", i)
            .or(get("reference", i))
            .map(|r| r.name.clone())
            .unwrap_or_default();
        let a = get("abs-socket", i).and_then(&f);
        let b = get("reference", i).and_then(&f);
        let show = |v: Option<f64>| {
            v.map(|v| format!("{v:.3} {unit}"))
                .unwrap_or_else(|| "-".into())
        };
        let floor = get("floor", i).and_then(&f);
        let ratio = |over: Option<f64>, under: Option<f64>| match (over, under) {
            (Some(o), Some(u)) if u > 0.0 && !unit.is_empty() => format!("{:.1}×", o / u),
            _ => "-".into(),
        };
        println!(
            "| {name} | {label} | {} | {} | {} | {} | {} |",
            show(a),
            show(b),
            ratio(b, a),
            show(floor),
            ratio(a, floor)
        );
    }
}

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    #[arg(long, default_value = "target/release/abs-socket")]
    pub abs_socket: PathBuf,
    #[arg(long, default_value = "../shared/fixtures/abs-2.36/absdatabase.sqlite")]
    pub database: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    pub fanout: usize,
    #[arg(long, default_value_t = 50)]
    pub rounds: usize,
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    #[arg(long, default_value = "redis-server")]
    pub redis_server: PathBuf,
    #[arg(long, default_value_t = 1000)]
    pub ramp: usize,
}

/// A redis-server without persistence, stopped on drop.
struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cluster`: the `fanout` scenario on one abs-socket node, then with the sockets spread over
/// `nodes` nodes on one Redis (the admin on the first), all on one SQLite file. CPU is the sum
/// over the nodes (Redis's own is reported apart).
pub async fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    let (tokens, admin) = fixture_tokens(&args.database)?;
    let port = free_port()?;
    let redis = Redis(
        Command::new(&args.redis_server)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server")?,
    );
    let redis_url = format!("redis://127.0.0.1:{port}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let work = std::env::temp_dir().join(format!("abs-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let db = work.join("absdatabase.sqlite");
    std::fs::copy(&args.database, &db)?;
    let mut reports = Vec::new();
    for nodes in [1, args.nodes] {
        let mut running = Vec::new();
        for _ in 0..nodes {
            let extra = if nodes > 1 {
                vec!["--redis-url".to_owned(), redis_url.clone()]
            } else {
                Vec::new()
            };
            running.push(
                start_on(
                    "abs-socket",
                    &args.abs_socket,
                    Path::new(""),
                    &db,
                    Some(&db),
                    &extra,
                )
                .await?,
            );
        }
        let redis_cpu0 = proc_stats::cpu(redis.0.id()).ok();
        let target = Target {
            also: running[1..].iter().map(|r| r.addr).collect(),
            pid: running.iter().map(|r| r.child.id()).collect(),
            ..Target::of(&running[0], &tokens, args.ramp)
        };
        let mut report = fanout(&target, args.fanout, args.rounds, &admin).await?;
        report.name = format!("fanout {} x{} on {nodes} node(s)", args.fanout, args.rounds);
        let redis_cpu = proc_stats::cpu(redis.0.id())
            .ok()
            .zip(redis_cpu0)
            .map(|(a, b)| a.saturating_sub(b));
        eprintln!("{report} redis_cpu={:?}", redis_cpu);
        reports.push((report, redis_cpu));
        drop(running);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let _ = std::fs::remove_dir_all(&work);
    println!(
        "| figure | one node | {} nodes on Redis | {} nodes / one node |",
        args.nodes, args.nodes
    );
    println!("|---|---|---|---|");
    let (one, many) = (&reports[0].0, &reports[1].0);
    let row = |label: &str, a: Option<f64>, b: Option<f64>, unit: &str| {
        let show = |v: Option<f64>| {
            v.map(|v| format!("{v:.3} {unit}"))
                .unwrap_or_else(|| "-".into())
        };
        let ratio = match (a, b) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.2}×", b / a),
            _ => "-".into(),
        };
        println!("| {label} | {} | {} | {ratio} |", show(a), show(b));
    };
    row(
        "server CPU per recipient per broadcast (sum over nodes)",
        one.per_unit,
        many.per_unit,
        "µs",
    );
    row(
        "latency p50",
        one.percentile(0.5).map(ms),
        many.percentile(0.5).map(ms),
        "ms",
    );
    row(
        "latency p99",
        one.percentile(0.99).map(ms),
        many.percentile(0.99).map(ms),
        "ms",
    );
    row(
        "latency max",
        one.latencies.iter().max().map(|d| ms(*d)),
        many.latencies.iter().max().map(|d| ms(*d)),
        "ms",
    );
    row(
        "rounds complete",
        Some(one.ok as f64),
        Some(many.ok as f64),
        "",
    );
    row(
        "Redis CPU for the whole run",
        reports[0].1.map(|d| d.as_secs_f64()),
        reports[1].1.map(|d| d.as_secs_f64()),
        "s",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_takes_the_storm_of_median_cpu() {
        let run = |ms: u64| Report {
            cpu: Some(Duration::from_millis(ms)),
            ..Default::default()
        };
        let median = median_by_cpu(vec![run(1500), run(800), run(950)]);
        assert_eq!(median.cpu, Some(Duration::from_millis(950)));
        assert_eq!(
            median_by_cpu(vec![run(7)]).cpu,
            Some(Duration::from_millis(7))
        );
    }
}
