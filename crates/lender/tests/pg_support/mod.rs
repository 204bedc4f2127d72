//! A throwaway PostgreSQL cluster for the tests: Debian's `postgresql`
//! binaries (`/usr/lib/postgresql/*/bin`), `initdb` in a directory under
//! /tmp, `postgres` on its own unix socket there and a free TCP port on
//! loopback; stopped and removed on drop. Run as `nobody` when the tests
//! run as root (PostgreSQL refuses root), which is why the cluster is not
//! under the checkout (it may sit in a 0700 directory).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a cluster may take to come up or go down.
const READY_WITHIN: Duration = Duration::from_secs(60);

static NEXT: AtomicU32 = AtomicU32::new(1);

/// The newest installed PostgreSQL's `bin` directory, if any.
pub fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

/// A running cluster.
pub struct TestPg {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    fsync: bool,
    /// `ssl=on` with these certificate and key files.
    tls: Option<(PathBuf, PathBuf)>,
}

impl TestPg {
    /// A new cluster (fsync off: a test's data need not survive a power cut).
    pub fn start() -> Self {
        Self::start_with(false).unwrap_or_else(|err| panic!("{err}"))
    }

    /// A new cluster; `fsync` on for benchmarks that must pay for
    /// durability like SQLite's `synchronous=FULL`. `Err`: no PostgreSQL
    /// installed, or it would not start (the message says which).
    pub fn start_with(fsync: bool) -> Result<Self, String> {
        let bin = bin_dir().ok_or(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): \
             apt-get install postgresql",
        )?;
        let dir = PathBuf::from(format!(
            "/tmp/jnlp-lender-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
        if is_root() {
            nix::unistd::chown(&dir, Some(nobody().0), Some(nobody().1))
                .map_err(|err| format!("chown {}: {err}", dir.display()))?;
        }
        let mut pg = TestPg {
            bin,
            dir,
            port: free_port()?,
            child: None,
            fsync,
            tls: None,
        };
        let status = pg
            .command("initdb")
            .args([
                "-U",
                "lender",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(pg.data())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|err| format!("initdb: {err}"))?;
        if !status.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&status.stderr)
            ));
        }
        pg.run()?;
        Ok(pg)
    }

    /// A cluster with TLS on (`ssl=on`, a server certificate for
    /// `localhost` and 127.0.0.1 signed by a test CA) that accepts TCP
    /// connections over TLS only; the CA's PEM file.
    pub fn start_tls() -> (Self, PathBuf) {
        let mut pg = Self::start();
        pg.stop();
        let ca_key = ok(rcgen::KeyPair::generate());
        let mut ca_params = ok(rcgen::CertificateParams::new(Vec::<String>::new()));
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ok(ca_params.self_signed(&ca_key));
        let key = ok(rcgen::KeyPair::generate());
        let params = ok(rcgen::CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ]));
        let cert = ok(params.signed_by(&key, &ca, &ca_key));
        let write = |name: &str, text: String| {
            use std::os::unix::fs::PermissionsExt as _;
            let path = pg.dir.join(name);
            ok(std::fs::write(&path, text));
            ok(std::fs::set_permissions(
                &path,
                std::fs::Permissions::from_mode(0o600),
            ));
            if is_root() {
                let (uid, gid) = nobody();
                ok(nix::unistd::chown(&path, Some(uid), Some(gid)));
            }
            path
        };
        let cert_file = write("server.crt", cert.pem());
        let key_file = write("server.key", key.serialize_pem());
        let ca_file = write("ca.crt", ca.pem());
        pg.tls = Some((cert_file, key_file));
        // TCP only over TLS: a plain connection is refused.
        ok(std::fs::write(
            pg.data().join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        ));
        ok(pg.run());
        (pg, ca_file)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if is_root() {
            use std::os::unix::process::CommandExt as _;
            let (uid, gid) = nobody();
            command.uid(uid.as_raw()).gid(gid.as_raw());
        }
        command.env("LC_ALL", "C").current_dir(&self.dir);
        command
    }

    /// Starts the server (again, after [`TestPg::stop`]) and waits until
    /// it accepts connections.
    pub fn run(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.join("log"))
            .map_err(|err| format!("postgres log: {err}"))?;
        if is_root() {
            let (uid, gid) = nobody();
            let _ = nix::unistd::chown(&self.dir.join("log"), Some(uid), Some(gid));
        }
        let fsync = if self.fsync { "on" } else { "off" };
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .arg("-k")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", &format!("fsync={fsync}")])
            .args(["-c", "max_connections=200"])
            .args(self.tls.iter().flat_map(|(cert, key)| {
                [
                    "-c".to_owned(),
                    "ssl=on".to_owned(),
                    "-c".to_owned(),
                    format!("ssl_cert_file={}", cert.display()),
                    "-c".to_owned(),
                    format!("ssl_key_file={}", key.display()),
                ]
            }))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|err| format!("postgres: {err}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("postgres exited ({status}): {}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("postgres not ready in time: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: clients are disconnected), keeping
    /// its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let deadline = Instant::now() + READY_WITHIN;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new, empty database; its `--db` URL.
    pub fn database(&self, name: &str) -> String {
        let status = self
            .command("createdb")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "lender",
            ])
            .arg(name)
            .output();
        match status {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!("createdb {name}: {}", String::from_utf8_lossy(&out.stderr)),
            Err(err) => panic!("createdb {name}: {err}"),
        }
        self.url(name)
    }

    /// The `--db` URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://lender@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        )
    }

    /// Where the cluster lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ok<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|err| panic!("{err}"))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn nobody() -> (nix::unistd::Uid, nix::unistd::Gid) {
    match nix::unistd::User::from_name("nobody") {
        Ok(Some(user)) => (user.uid, user.gid),
        _ => (
            nix::unistd::Uid::from_raw(65534),
            nix::unistd::Gid::from_raw(65534),
        ),
    }
}

fn free_port() -> Result<u16, String> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|err| format!("free port: {err}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|err| format!("free port: {err}"))
}
