//! A throwaway MariaDB server for the command-source tests: `mariadb-install-db` into a
//! temporary data directory, then `mariadbd` on a free port of 127.0.0.1 and on a socket of
//! its own, stopped when dropped (SIGTERM, then SIGKILL), also when a test panics.
//!
//! MariaDB refuses to run as root, so when the tests run as root the server runs as the
//! `mysql` user (`--user=mysql`, with its directories chowned to it). The harness talks to
//! it as an administrator over the socket with `unix_socket` authentication: MariaDB's
//! `root` when the tests run as root, else an account named after the current user. No
//! password is ever on a command line: accounts made with [`MariaDb::create_user`] are used
//! with `MYSQL_PWD` in the environment.

use super::free_port;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The OS user that runs the server when the tests run as root.
const SERVER_OS_USER: &str = "mysql";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct MariaDb {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    /// The administrator account (unix_socket authentication).
    admin: String,
}

/// A program of the MariaDB packages (the test script installs them).
pub fn program(name: &str) -> PathBuf {
    for d in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed (scripts/test installs mariadb-server and mariadb-client)");
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn server_user_ids() -> (u32, u32) {
    let out = Command::new("id")
        .arg("-u")
        .arg(SERVER_OS_USER)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "no {SERVER_OS_USER} user (the mariadb-server package makes it)"
    );
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let out = Command::new("id")
        .arg("-g")
        .arg(SERVER_OS_USER)
        .output()
        .unwrap();
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (uid, gid)
}

impl MariaDb {
    /// Initialise a data directory and start a server on it.
    pub fn start() -> MariaDb {
        let as_root = super::as_root();
        let dir = tempfile::Builder::new()
            .prefix("coffer-mariadb-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let run = dir.path().join("run");
        for d in [&data, &run] {
            fs::create_dir(d).unwrap();
        }
        let admin = if as_root {
            // The server user must reach the directory and own the data and socket ones.
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
            let (uid, gid) = server_user_ids();
            for d in [&data, &run] {
                std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
            }
            "root".to_string()
        } else {
            current_user()
        };
        let mut install = Command::new(program("mariadb-install-db"));
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=socket", "--skip-test-db"]);
        if as_root {
            install.arg(format!("--user={SERVER_OS_USER}"));
        } else {
            install.arg(format!("--auth-root-socket-user={admin}"));
        }
        let out = install.output().expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut db = MariaDb {
            dir,
            child: None,
            port: 0,
            admin,
        };
        db.launch(as_root);
        db
    }

    fn launch(&mut self, as_root: bool) {
        let data = self.dir.path().join("data");
        for _ in 0..5 {
            self.port = free_port();
            let mut c = Command::new(program("mariadbd"));
            c.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", self.socket().display()))
                .arg(format!(
                    "--pid-file={}",
                    self.run_dir().join("mariadbd.pid").display()
                ))
                .arg(format!("--log-error={}", self.log_path().display()))
                .arg(format!("--port={}", self.port))
                .args([
                    "--bind-address=127.0.0.1",
                    "--skip-name-resolve",
                    "--innodb-buffer-pool-size=16M",
                    "--innodb-flush-log-at-trx-commit=0",
                    "--max-connections=20",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if as_root {
                c.arg(format!("--user={SERVER_OS_USER}"));
            }
            let mut child = c.spawn().expect("start mariadbd");
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken, or it failed: retry (or report below)
                }
                if self.try_sql("SELECT 1").is_ok_and(|o| o.status.success()) {
                    self.child = Some(child);
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("mariadbd did not start:\n{}", self.log());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("mariadbd did not start:\n{}", self.log());
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn log_path(&self) -> PathBuf {
        self.run_dir().join("mariadbd.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("mariadbd.sock")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client options that reach the server as the administrator (for `mariadb`,
    /// `mariadb-dump`): no option files, the socket, the account.
    pub fn admin_args(&self) -> Vec<String> {
        vec![
            "--no-defaults".into(),
            format!("--socket={}", self.socket().display()),
            format!("--user={}", self.admin),
        ]
    }

    fn try_sql(&self, sql: &str) -> std::io::Result<Output> {
        Command::new(program("mariadb"))
            .args(self.admin_args())
            .args(["--batch", "--skip-column-names", "-e", sql])
            .env_remove("MYSQL_PWD")
            .stdin(Stdio::null())
            .output()
    }

    /// Run SQL as the administrator; an error fails the test. Its output, tab-separated.
    pub fn sql(&self, sql: &str) -> String {
        let out = self.try_sql(sql).unwrap();
        assert!(
            out.status.success(),
            "mariadb {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An account with a password, for programs given `MYSQL_PWD` in their environment.
    pub fn create_user(&self, user: &str, password: &str) {
        self.sql(&format!(
            "CREATE USER '{user}'@'localhost' IDENTIFIED BY '{password}'; \
             GRANT ALL PRIVILEGES ON *.* TO '{user}'@'localhost'"
        ));
    }

    /// `CHECKSUM TABLE` of each of `tables` (`db.table`), as "db.table checksum" lines.
    pub fn checksums(&self, tables: &[&str]) -> String {
        self.sql(&format!("CHECKSUM TABLE {}", tables.join(", ")))
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: a signal to our own child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
    }
}
