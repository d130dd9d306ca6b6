//! Throwaway `redis-server`s for the Redis tests: each on a free port (and a Unix socket)
//! in its own directory, stopped when dropped. The tests talk to them with coffer's own
//! protocol client, so they need no `redis-cli`.

use super::free_port;
use coffer::sources::redis::conn::{Conn, ConnOptions, Reply, Target};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    tls_ca: Option<PathBuf>,
    /// The harness's own client certificate and key, for servers that ask for one.
    tls_client: Option<(PathBuf, PathBuf)>,
    password: Option<String>,
    args: Vec<String>,
}

/// The `redis-server` program (the test script installs it).
pub fn redis_server() -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", "command -v redis-server"])
        .output()
        .unwrap();
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !p.is_empty(),
        "redis-server is not installed (scripts/test installs it)"
    );
    PathBuf::from(p)
}

impl RedisServer {
    /// A server with the tests' defaults (no persistence, DEBUG allowed, diskless sync
    /// without delay).
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server with more configuration (`("requirepass", "pw")`, …).
    pub fn start_with(extra: &[(&str, &str)]) -> RedisServer {
        RedisServer::launch(extra, None, None)
    }

    /// A server that speaks only TLS, with the certificates of `pki`; `clients` makes it
    /// ask clients for a certificate.
    pub fn start_tls(pki: &super::tls::Pki, clients: bool, extra: &[(&str, &str)]) -> RedisServer {
        RedisServer::launch(extra, Some(pki), Some(clients))
    }

    /// A server on an existing directory (e.g. one holding a dump.rdb to load).
    pub fn start_in(dir: tempfile::TempDir, extra: &[(&str, &str)]) -> RedisServer {
        RedisServer::in_dir(dir, extra, None, None)
    }

    fn launch(
        extra: &[(&str, &str)],
        pki: Option<&super::tls::Pki>,
        clients: Option<bool>,
    ) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("coffer-redis-")
            .tempdir()
            .unwrap();
        RedisServer::in_dir(dir, extra, pki, clients)
    }

    fn in_dir(
        dir: tempfile::TempDir,
        extra: &[(&str, &str)],
        pki: Option<&super::tls::Pki>,
        clients: Option<bool>,
    ) -> RedisServer {
        let mut s = RedisServer {
            child: None,
            dir,
            port: 0,
            tls_ca: None,
            tls_client: None,
            password: None,
            args: Vec::new(),
        };
        s.configure(extra, pki, clients);
        s.spawn();
        s
    }

    fn configure(
        &mut self,
        extra: &[(&str, &str)],
        pki: Option<&super::tls::Pki>,
        clients: Option<bool>,
    ) {
        let d = self.dir.path().to_path_buf();
        let mut conf: Vec<(String, String)> = [
            ("bind", "127.0.0.1"),
            ("save", ""),
            ("appendonly", "no"),
            ("enable-debug-command", "yes"),
            ("repl-diskless-sync-delay", "0"),
            ("unixsocketperm", "700"),
            ("daemonize", "no"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        conf.push(("dir".into(), d.display().to_string()));
        conf.push((
            "unixsocket".into(),
            d.join("redis.sock").display().to_string(),
        ));
        conf.push(("logfile".into(), d.join("redis.log").display().to_string()));
        if let Some(pki) = pki {
            let p = pki.dir();
            conf.push((
                "tls-cert-file".into(),
                p.join("server.crt").display().to_string(),
            ));
            conf.push((
                "tls-key-file".into(),
                p.join("server.key").display().to_string(),
            ));
            conf.push(("tls-ca-cert-file".into(), pki.ca().display().to_string()));
            conf.push((
                "tls-auth-clients".into(),
                if clients == Some(true) { "yes" } else { "no" }.into(),
            ));
            self.tls_ca = Some(pki.ca());
            self.tls_client = Some(pki.client_cert("harness"));
        }
        for (k, v) in extra {
            if *k == "requirepass" {
                self.password = Some(v.to_string());
            }
            conf.retain(|(ck, _)| ck != k);
            conf.push((k.to_string(), v.to_string()));
        }
        self.args = conf
            .into_iter()
            .flat_map(|(k, v)| [format!("--{k}"), v])
            .collect();
    }

    fn spawn(&mut self) {
        for _ in 0..5 {
            self.port = free_port();
            let mut c = Command::new(redis_server());
            if self.tls_ca.is_some() {
                c.args(["--port", "0", "--tls-port", &self.port.to_string()]);
            } else {
                c.args(["--port", &self.port.to_string()]);
            }
            c.args(&self.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = c.spawn().expect("start redis-server");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken, or the configuration is bad: retry
                }
                if let Ok(mut conn) = self.try_conn(None) {
                    match conn.command(&[b"PING"]) {
                        Ok(Reply::Status(s)) if s == "PONG" => {
                            self.child = Some(child);
                            return;
                        }
                        _ => {}
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "redis-server did not start:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(30));
            }
        }
        panic!("redis-server did not start:\n{}", self.log());
    }

    fn options(&self) -> ConnOptions {
        ConnOptions {
            password: self.password.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_client.as_ref().map(|c| c.0.clone()),
            tls_key: self.tls_client.as_ref().map(|c| c.1.clone()),
            timeout: Duration::from_secs(30),
        }
    }

    fn try_conn(&self, db: Option<u32>) -> anyhow::Result<Conn> {
        let mut url = self.url();
        if let Some(db) = db {
            url.push_str(&format!("/{db}"));
        }
        Conn::connect(&Target::parse(&url).unwrap(), &self.options())
    }

    /// A connection to database `db`.
    pub fn conn(&self, db: u32) -> Conn {
        self.try_conn(Some(db)).unwrap()
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` for a TLS server), without a password.
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// One command on database 0; an error reply fails the test.
    pub fn cmd(&self, args: &[&str]) -> Reply {
        self.cmd_db(0, args)
    }

    pub fn cmd_db(&self, db: u32, args: &[&str]) -> Reply {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        let r = self.conn(db).command(&a).unwrap();
        if let Reply::Error(e) = &r {
            panic!("redis {args:?}: {e}");
        }
        r
    }

    pub fn int(&self, args: &[&str]) -> i64 {
        match self.cmd(args) {
            Reply::Int(n) => n,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    /// `DEBUG DIGEST`: one hash of every database's keys, values and expiry times.
    pub fn digest(&self) -> String {
        self.cmd(&["DEBUG", "DIGEST"]).text().unwrap()
    }

    /// The keys in database `db`.
    pub fn dbsize(&self, db: u32) -> i64 {
        match self.cmd_db(db, &["DBSIZE"]) {
            Reply::Int(n) => n,
            other => panic!("DBSIZE: {other:?}"),
        }
    }

    /// Stop the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// Stop the server and keep its directory (to start another server on it).
    pub fn stop_keep_dir(mut self) -> tempfile::TempDir {
        self.kill();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run commands pipelined on one connection; any error reply fails the test.
pub fn pipeline(conn: &mut Conn, cmds: &[Vec<Vec<u8>>]) {
    for chunk in cmds.chunks(500) {
        for c in chunk {
            let a: Vec<&[u8]> = c.iter().map(|v| v.as_slice()).collect();
            conn.send(&a).unwrap();
        }
        conn.flush().unwrap();
        for c in chunk {
            if let Reply::Error(e) = conn.read_reply().unwrap() {
                panic!("{:?}: {e}", String::from_utf8_lossy(&c[0]));
            }
        }
    }
}

fn c(args: &[&[u8]]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.to_vec()).collect()
}

/// Every type in its small and large encodings, big and binary values, millisecond
/// expiries and streams with consumer groups and pending entries, in databases 0, 1 and
/// 5. Returns the keys per database.
pub fn fill_all_types(s: &RedisServer) -> Vec<(u32, i64)> {
    let mut conn = s.conn(0);
    let mut cmds = vec![
        c(&[b"SET", b"str:small", b"hello"]),
        c(&[b"SET", b"str:int", b"1234567"]),
        c(&[b"SET", b"str:binary\x00\xff\r\n", b"\x00\x01\x02\xff\r\n"]),
        c(&[b"SET", b"str:compressible", "abc".repeat(2000).as_bytes()]),
        c(&[b"SET", b"str:ttl", b"soon", b"PX", b"600000"]),
        c(&[b"RPUSH", b"list:small", b"a", b"b", b"c"]),
        c(&[b"SADD", b"set:intset", b"1", b"2", b"3", b"-40000"]),
        c(&[b"SADD", b"set:small", b"x", b"y"]),
        c(&[b"ZADD", b"zset:small", b"1", b"a", b"2.5", b"b"]),
        c(&[b"HSET", b"hash:small", b"f1", b"v1", b"f2", b"v2"]),
        c(&[b"PEXPIRE", b"hash:small", b"900000"]),
    ];
    // A multi-MiB value of noise (incompressible) and one of text.
    cmds.push(c(&[b"SET", b"str:big-noise", &super::noise(7, 3 << 20)]));
    cmds.push(c(&[
        b"SET",
        b"str:big-text",
        "line of text\n".repeat(300_000).as_bytes(),
    ]));
    let mut list = vec![b"RPUSH".to_vec(), b"list:big".to_vec()];
    let mut set = vec![b"SADD".to_vec(), b"set:big".to_vec()];
    let mut zset = vec![b"ZADD".to_vec(), b"zset:big".to_vec()];
    let mut hash = vec![b"HSET".to_vec(), b"hash:big".to_vec()];
    for i in 0..3000 {
        list.push(format!("element-{i}-{}", "x".repeat(i % 50)).into_bytes());
        set.push(format!("member-{i}").into_bytes());
        zset.push(format!("{}", i as f64 * 0.5).into_bytes());
        zset.push(format!("z-{i}").into_bytes());
        hash.push(format!("field-{i}").into_bytes());
        hash.push(format!("value-{i}").repeat(1 + i % 7).into_bytes());
    }
    cmds.extend([list, set, zset, hash]);
    cmds.push(c(&[
        b"RPUSH",
        b"list:big-elements",
        &vec![b'q'; 70_000],
        b"tail",
    ]));
    // Streams: entries, two groups, consumers with pending (read, unacknowledged) entries.
    for i in 0..500 {
        cmds.push(c(&[
            b"XADD",
            b"stream:events",
            b"*",
            b"n",
            i.to_string().as_bytes(),
            b"payload",
            format!("event {i}").as_bytes(),
        ]));
    }
    cmds.push(c(&[
        b"XGROUP",
        b"CREATE",
        b"stream:events",
        b"workers",
        b"0",
    ]));
    cmds.push(c(&[b"XGROUP", b"CREATE", b"stream:events", b"audit", b"$"]));
    cmds.push(c(&[
        b"XREADGROUP",
        b"GROUP",
        b"workers",
        b"alice",
        b"COUNT",
        b"10",
        b"STREAMS",
        b"stream:events",
        b">",
    ]));
    cmds.push(c(&[
        b"XREADGROUP",
        b"GROUP",
        b"workers",
        b"bob",
        b"COUNT",
        b"5",
        b"STREAMS",
        b"stream:events",
        b">",
    ]));
    cmds.push(c(&[b"XADD", b"stream:small", b"1-1", b"k", b"v"]));
    cmds.push(c(&[b"XADD", b"stream:small", b"2-1", b"k", b"w"]));
    cmds.push(c(&[b"XDEL", b"stream:small", b"1-1"]));
    pipeline(&mut conn, &cmds);
    // The replies of XREADGROUP were read and dropped; acknowledge one entry so the
    // pending list is not the whole read.
    let first = match conn
        .command(&[b"XRANGE", b"stream:events", b"-", b"+", b"COUNT", b"1"])
        .unwrap()
    {
        Reply::Array(Some(v)) => match &v[0] {
            Reply::Array(Some(e)) => e[0].text().unwrap(),
            o => panic!("{o:?}"),
        },
        o => panic!("{o:?}"),
    };
    conn.command(&[b"XACK", b"stream:events", b"workers", first.as_bytes()])
        .unwrap();
    conn.command(&[b"DEBUG", b"POPULATE", b"2000", b"pop", b"40"])
        .unwrap();

    let mut db1 = s.conn(1);
    let mut cmds = Vec::new();
    for i in 0..300 {
        cmds.push(c(&[
            b"SET",
            format!("db1:{i}").as_bytes(),
            format!("{i}").as_bytes(),
        ]));
        if i % 3 == 0 {
            cmds.push(c(&[b"PEXPIRE", format!("db1:{i}").as_bytes(), b"3600123"]));
        }
    }
    cmds.push(c(&[b"HSET", b"db1:hash", b"a", b"1"]));
    pipeline(&mut db1, &cmds);
    let mut db5 = s.conn(5);
    pipeline(
        &mut db5,
        &[
            c(&[b"SET", b"only-in-5", b"five"]),
            c(&[b"LPUSH", b"list-in-5", b"1", b"2"]),
        ],
    );
    [0, 1, 5].iter().map(|&db| (db, s.dbsize(db))).collect()
}
