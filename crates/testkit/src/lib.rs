//! Test support shared by Tollgate's test crates (the state crate's Redis tests and the
//! end-to-end suite): a `redis-server` of the test's own on a free port, the JWT fixtures
//! and tokens signed with them, and scratch directories. Only tests depend on it.

#![forbid(unsafe_code)]
// This whole crate is test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::{encode, EncodingKey, Header};

/// A `redis-server` of the test's own on a free port (no persistence), so a test can
/// kill it, freeze it and start it again; killed when dropped.
pub struct RedisServer {
    child: Child,
    port: u16,
    /// Serves TLS only, and only to clients with a certificate from the test CA.
    tls: bool,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_free(false)
    }

    /// On a given port: the restart after an outage.
    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::spawn(port, false)
            .unwrap_or_else(|| panic!("another process took port {port}"))
    }

    /// TLS only (`rediss://`), with the test CA's `server.pem`, and clients must present
    /// a certificate the test CA signed (`tls-auth-clients yes`).
    pub fn start_tls() -> RedisServer {
        RedisServer::start_free(true)
    }

    /// On a free port, another one if a test running beside took it meanwhile (a port
    /// is free when picked, not necessarily when the server binds it: a cluster test's
    /// node once answered for a plain server that never started).
    fn start_free(tls: bool) -> RedisServer {
        for _ in 0..5 {
            if let Some(server) = RedisServer::spawn(free_port(), tls) {
                return server;
            }
        }
        panic!("redis-server could not get a free port in five tries");
    }

    /// `None` when another process holds the port: ours exits, theirs answers.
    fn spawn(port: u16, tls: bool) -> Option<RedisServer> {
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        if tls {
            let f = |name: &str| tls_fixture(name).display().to_string();
            command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--tls-cert-file", &f("server.pem")])
                .args(["--tls-key-file", &f("server.key.pem")])
                .args(["--tls-ca-cert-file", &f("ca.pem")])
                .args(["--tls-auth-clients", "yes"]);
        } else {
            command.args(["--port", &port.to_string()]);
        }
        let child = command
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian: redis-server)");
        let mut server = RedisServer { child, port, tls };
        let ours = format!("process_id:{}", server.child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = server.child.try_wait() {
                return None;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && server.cli(&["INFO", "server"]).contains(&ours)
            {
                return Some(server);
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        match self.tls {
            // By name: the certificate is checked against it.
            true => format!("rediss://localhost:{}", self.port),
            false => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Stops it now (the outage); the port can be started on again.
    pub fn kill(mut self) -> u16 {
        self.stop();
        self.port
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes it (SIGSTOP): it accepts connections and answers nothing.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.args(["-p", &self.port.to_string()]);
        if self.tls {
            let f = |name: &str| tls_fixture(name).display().to_string();
            command.args(["--tls", "--cacert", &f("ca.pem")]).args([
                "--cert",
                &f("client.pem"),
                "--key",
                &f("client.key.pem"),
            ]);
        }
        let out = command.args(args).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of the test's own: three primaries with one replica each, six
/// `redis-server` processes on free ports (no persistence), a node timeout of one
/// second so a replica takes over a killed primary's slots within a few seconds.
pub struct RedisCluster {
    nodes: Vec<(u16, Child)>,
    _dir: TempDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = TempDir::new();
        let ports = cluster_ports(6);
        let mut nodes = Vec::new();
        for &port in &ports {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                // Replicas sync at once (not after the default 5 s wait for more), and may
                // take over whatever the age of their data.
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--cluster-replica-validity-factor", "0"])
                .arg("--cluster-config-file")
                .arg(dir.path().join(format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (Debian: redis-server)");
            nodes.push((port, child));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for &port in &ports {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_healthy(Duration::from_secs(20));
        // Every replica has its primary's data before a test kills one.
        let deadline = Instant::now() + Duration::from_secs(20);
        for (port, _) in &cluster.nodes {
            while cli_on(*port, &[], &["ROLE"]).starts_with("slave")
                && !cli_on(*port, &[], &["INFO", "replication"]).contains("master_link_status:up")
            {
                assert!(Instant::now() < deadline, "a replica never synced");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// A seed node's URL (the client discovers the others).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[0].0)
    }

    /// Every node as `127.0.0.1:port` (seeds for a client that must start while one is
    /// down).
    pub fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// `redis-cli -c` (following redirections) through a node still running.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.nodes.first().map(|(p, _)| *p).unwrap();
        cli_on(port, &["-c"], args)
    }

    /// The ports of the primaries, each with the number of keys it holds.
    pub fn primaries(&self) -> Vec<(u16, u64)> {
        self.nodes
            .iter()
            .filter(|(port, _)| cli_on(*port, &[], &["ROLE"]).starts_with("master"))
            .map(|(port, _)| (*port, cli_on(*port, &[], &["DBSIZE"]).parse().unwrap_or(0)))
            .collect()
    }

    /// Kills one node at once (`SIGKILL`): its replica takes its slots after the node
    /// timeout.
    pub fn kill(&mut self, port: u16) {
        let at = self.nodes.iter().position(|(p, _)| *p == port).unwrap();
        let (_, mut child) = self.nodes.remove(at);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits until every running node says the cluster is ok and every slot is served.
    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self.nodes.iter().all(|(port, _)| {
                let info = cli_on(*port, &[], &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never became healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn cli_on(port: u16, flags: &[&str], args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(flags)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Free ports whose cluster bus port (+10000) is free and valid too.
fn cluster_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    while ports.len() < n {
        let port = free_port();
        let bus = port.checked_add(10_000);
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if bus.is_some_and(free) && !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

/// A file of the test CA and its certificates (`tests/fixtures/tls`).
pub fn tls_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tls")
        .join(name)
}

/// A local port nothing listens on (for now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "tollgate-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The JWT fixtures: keys, and tokens made by PyJWT (`tests/fixtures/jwt`).
pub fn jwt_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/jwt")
}

/// `[jwt]` accepting HS256 tokens signed with the fixture secret (kid `hs-256`), issuer
/// `https://issuer.test`, audience `legacy-api`.
pub fn jwt_config() -> String {
    format!(
        "[jwt]\nissuer = \"https://issuer.test\"\naudience = \"legacy-api\"\n\n[[jwt.key]]\nid = \"hs-256\"\nalgorithm = \"HS256\"\nsecret_file = \"{}\"\n",
        jwt_fixtures().join("keys/hs256.secret").display()
    )
}

/// `Bearer` + a valid token for `client` (a JSON string claim).
pub fn bearer_for(client: &str) -> String {
    bearer_with(serde_json::json!({ "clientId": client }))
}

/// `Bearer` + a valid token whose claims are `extra` over the defaults (issuer,
/// audience, times, `sub`), signed as [`jwt_config`] accepts.
pub fn bearer_with(extra: serde_json::Value) -> String {
    let secret = std::fs::read(jwt_fixtures().join("keys/hs256.secret")).unwrap();
    let mut claims = serde_json::json!({
        "sub": "someone@test",
        "iss": "https://issuer.test",
        "aud": "legacy-api",
        "iat": 1_767_225_600u64,
        "exp": 4_102_444_800u64,
    });
    if let (Some(base), Some(more)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in more {
            base.insert(k.clone(), v.clone());
        }
    }
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("hs-256".into());
    let token = encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.trim_ascii_end()),
    )
    .unwrap();
    format!("Bearer {token}")
}
