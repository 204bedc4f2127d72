//! A `jnlp-lender serve` process (the real binary) on port 0: its address
//! read from its log, its log kept for assertions, killed (SIGKILL) on drop.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// A running `serve`.
#[derive(Debug)]
pub struct ServeProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl ServeProcess {
    /// `bin serve --listen 127.0.0.1:0 --name NAME --db DB`, with
    /// `RUST_LOG=info`; returns once it listens. Panics (it is for tests)
    /// when it cannot start or exits first, with its log.
    pub fn start(bin: &Path, db: &str, name: &str) -> ServeProcess {
        let mut child = Command::new(bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--name",
                name,
                "--db",
                db,
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", bin.display()));
        let stderr = child
            .stderr
            .take()
            .unwrap_or_else(|| panic!("{name}: no stderr"));
        let mut lines = BufReader::new(stderr).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let addr = loop {
            let line = match lines.next() {
                Some(Ok(line)) => line,
                Some(Err(err)) => panic!("{name}: reading its log: {err}"),
                None => panic!("{name} exited before listening: {}", log_of(&log)),
            };
            push(&log, &line);
            if let Some(addr) = line.strip_prefix("jnlp-lender: listening on ") {
                break addr
                    .trim()
                    .parse::<SocketAddr>()
                    .unwrap_or_else(|err| panic!("{name}: address {addr:?}: {err}"));
            }
        };
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                push(&keep, &line);
            }
        });
        ServeProcess { child, addr, log }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `kill -9`, and reaped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        log_of(&self.log)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn push(log: &Mutex<String>, line: &str) {
    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
    log.push_str(line);
    log.push('\n');
}

fn log_of(log: &Mutex<String>) -> String {
    log.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
