//! The relay floor: what moving the bytes costs any relay on this machine,
//! before the agent does anything of its own.
//!
//! Issue 10 asks for at most 0.5 CPU-seconds per GiB in the agent. The agent
//! is a relay between the engine's pipes and a TLS connection, so whatever
//! it does, it pays for (a) taking the bytes out of one kernel object and
//! putting them into the other, and (b) the TLS record protection. This
//! measures both, each on its own, in the thread that does it:
//!
//! - **pipe → TCP** (engine → controller) and **TCP → pipe** (controller →
//!   engine), on loopback, with no TLS and no framing, two ways: `read` and
//!   `write` through a buffer the size of the bridge's, and `splice`, the
//!   kernel's zero-copy move (what a relay with kernel TLS would use);
//! - **TLS 1.3 seal and open** with rustls and ring, the agent's own stack,
//!   in memory, with the cipher suite a controller picks (AES-256-GCM);
//!   and the bare AEAD, in place, with no record layer around it.
//!
//! The other end of each move (the writer into the pipe, the reader of the
//! socket, ...) is a thread of its own, whose CPU is not counted, as the
//! engine's and the controller's are not counted in the agent's. On
//! loopback, sending charges the receiver's protocol work to the sender,
//! exactly as it does for the agent in the windowed benchmark.
//!
//! Two floors follow for each direction. A relay that encrypts in user space
//! must see the bytes: `read` + `write` plus the bare AEAD. One with kernel
//! TLS can `splice`, and the kernel encrypts in its name: `splice` plus the
//! same AEAD (taking the kernel's AES-GCM to be no faster than ring's).
//!
//! `cargo bench -p jnlp-agent --bench relay_floor` (Linux). Environment:
//! `BENCH_BYTES` (default 1 GiB per measurement), `BENCH_RUNS` (default 5;
//! the median is reported, with the range).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(target_os = "linux")]
fn main() {
    linux::run();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("relay_floor measures Linux pipes and splice; nothing to do here");
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::{self, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};
    use std::thread;

    use nix::fcntl::{fcntl, splice, FcntlArg, SpliceFFlags};
    use nix::time::{clock_gettime, ClockId};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConnection, ServerConnection};
    use testkit::identity::TestIdentity;

    /// The bridge's buffer: what one `read` may take, one `write` may give.
    const BUFFER: usize = 256 * 1024;
    /// The agent's pipe sizes (engine/mod.rs): the engine's stdout, its stdin.
    const FROM_ENGINE_PIPE: i32 = 128 * 1024;
    const TO_ENGINE_PIPE: i32 = 1024 * 1024;
    const GIB: f64 = (1u64 << 30) as f64;
    /// Issue 10's goal for the agent's CPU, seconds per GiB.
    const GOAL: f64 = 0.5;

    use test_support::bench::env_number as env_u64;

    /// CPU seconds this thread has used, user and system.
    fn thread_cpu() -> f64 {
        let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("thread CPU clock");
        t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
    }

    fn pipe(size: i32) -> (OwnedFd, OwnedFd) {
        let (read, write) = nix::unistd::pipe().expect("pipe");
        fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(size)).expect("pipe size");
        (read, write)
    }

    fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    /// Writes `bytes` into `to` from a buffer of the bridge's size.
    fn produce(mut to: impl Write + Send + 'static, bytes: u64) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let buf = vec![0x5a_u8; BUFFER];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(BUFFER as u64) as usize;
                to.write_all(&buf[..n]).expect("produce");
                left -= n as u64;
            }
        })
    }

    /// Reads `from` to its end and checks that `bytes` came.
    fn consume(mut from: impl Read + Send + 'static, bytes: u64) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let mut buf = vec![0_u8; BUFFER];
            let mut seen = 0_u64;
            loop {
                match from.read(&mut buf).expect("consume") {
                    0 => break,
                    n => seen += n as u64,
                }
            }
            assert_eq!(seen, bytes, "the relay lost or invented bytes");
        })
    }

    /// Moves everything from `from` to `to` with `read` and `write`.
    fn copy_relay(mut from: impl Read, mut to: impl Write) -> u64 {
        let mut buf = vec![0_u8; BUFFER];
        let mut moved = 0;
        loop {
            match from.read(&mut buf).expect("relay read") {
                0 => return moved,
                n => {
                    to.write_all(&buf[..n]).expect("relay write");
                    moved += n as u64;
                }
            }
        }
    }

    /// Moves everything from `from` to `to` with `splice` (one side a pipe).
    fn splice_relay(from: impl AsFd, to: impl AsFd) -> u64 {
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_MORE;
        let mut moved = 0;
        loop {
            match splice(from.as_fd(), None, to.as_fd(), None, BUFFER, flags).expect("splice") {
                0 => return moved,
                n => moved += n as u64,
            }
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Move {
        Copy,
        Splice,
    }

    /// Engine → controller: a writer fills the pipe, the relay moves it to
    /// a loopback socket, a reader drains it. The relay thread's CPU.
    fn pipe_to_tcp(how: Move, bytes: u64) -> f64 {
        let (pipe_read, pipe_write) = pipe(FROM_ENGINE_PIPE);
        let (relay_side, far_side) = tcp_pair();
        let writer = produce(std::fs::File::from(pipe_write), bytes);
        let reader = consume(far_side, bytes);
        let start = thread_cpu();
        let moved = match how {
            Move::Copy => copy_relay(std::fs::File::from(pipe_read), &relay_side),
            Move::Splice => splice_relay(pipe_read, &relay_side),
        };
        let cpu = thread_cpu() - start;
        relay_side
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        writer.join().expect("writer");
        reader.join().expect("reader");
        assert_eq!(moved, bytes);
        cpu
    }

    /// Controller → engine: a writer sends into a loopback socket, the relay
    /// moves it into the pipe, a reader drains the pipe. The relay's CPU.
    fn tcp_to_pipe(how: Move, bytes: u64) -> f64 {
        let (pipe_read, pipe_write) = pipe(TO_ENGINE_PIPE);
        let (far_side, relay_side) = tcp_pair();
        let writer = produce(far_side, bytes);
        let reader = consume(std::fs::File::from(pipe_read), bytes);
        let start = thread_cpu();
        let moved = match how {
            Move::Copy => copy_relay(&relay_side, std::fs::File::from(pipe_write)),
            Move::Splice => {
                let moved = splice_relay(&relay_side, &pipe_write);
                drop(pipe_write);
                moved
            }
        };
        let cpu = thread_cpu() - start;
        writer.join().expect("writer");
        reader.join().expect("reader");
        assert_eq!(moved, bytes);
        cpu
    }

    /// A TLS 1.3 session between the agent's client configuration, pinned to
    /// the test identity, and the test controller's server configuration.
    fn tls_pair() -> (ClientConnection, ServerConnection) {
        let identity = TestIdentity::shared();
        let client_config =
            remoting_protocol::tls::client_config(identity.identity()).expect("client config");
        let name = ServerName::try_from("controller").expect("server name");
        let mut client = ClientConnection::new(client_config, name).expect("client");
        let mut server = ServerConnection::new(identity.server_config()).expect("server");
        while client.is_handshaking() || server.is_handshaking() {
            let mut flight = Vec::new();
            client.write_tls(&mut flight).expect("client flight");
            server.read_tls(&mut &flight[..]).expect("server reads");
            server.process_new_packets().expect("server handshake");
            flight.clear();
            server.write_tls(&mut flight).expect("server flight");
            client.read_tls(&mut &flight[..]).expect("client reads");
            client.process_new_packets().expect("client handshake");
        }
        (client, server)
    }

    /// The CPU to seal `bytes` of plaintext into TLS records and hand them
    /// to a writer that keeps nothing (a socket's copy is the kernel's, and
    /// is counted in the moves above).
    fn tls_seal(bytes: u64) -> (f64, String) {
        let (mut client, _server) = tls_pair();
        let suite = format!(
            "{:?}",
            client.negotiated_cipher_suite().expect("suite").suite()
        );
        let plain = vec![0x5a_u8; BUFFER];
        let start = thread_cpu();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(BUFFER as u64) as usize;
            let mut offered = &plain[..n];
            while !offered.is_empty() {
                let taken = client.writer().write(offered).expect("seal");
                offered = &offered[taken..];
                while client.wants_write() {
                    client.write_tls(&mut io::sink()).expect("records out");
                }
            }
            left -= n as u64;
        }
        (thread_cpu() - start, suite)
    }

    /// The CPU to open `bytes` of TLS records into plaintext in a buffer of
    /// the bridge's size. The records are sealed by the other end between
    /// the measured stretches, so only opening is counted.
    fn tls_open(bytes: u64) -> f64 {
        let (mut client, mut server) = tls_pair();
        let plain = vec![0x5a_u8; BUFFER];
        let mut out = vec![0_u8; BUFFER];
        let mut records = Vec::with_capacity(2 * BUFFER);
        let mut cpu = 0.0;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(BUFFER as u64) as usize;
            records.clear();
            let mut offered = &plain[..n];
            while !offered.is_empty() {
                let taken = server.writer().write(offered).expect("seal");
                offered = &offered[taken..];
                while server.wants_write() {
                    server.write_tls(&mut records).expect("records");
                }
            }
            let start = thread_cpu();
            let mut arrived = &records[..];
            let mut opened = 0;
            while opened < n {
                if !arrived.is_empty() {
                    client.read_tls(&mut arrived).expect("records in");
                }
                client.process_new_packets().expect("open");
                loop {
                    match client.reader().read(&mut out) {
                        Ok(0) => break,
                        Ok(got) => opened += got,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("open: {e}"),
                    }
                }
            }
            cpu += thread_cpu() - start;
            left -= n as u64;
        }
        cpu
    }

    /// TLS 1.3 record payload at most: what one AEAD call protects.
    const RECORD: usize = 16 * 1024;

    /// The bare AEAD, AES-256-GCM in place over full records, with no
    /// record layer around it: what a relay that decrypts in its own buffer
    /// (rustls's unbuffered API) or kernel TLS would spend at least, taking
    /// the kernel's AES-GCM to be no faster than ring's. `open` seals a
    /// batch unmeasured, then measures opening it.
    fn aead(open: bool, bytes: u64) -> f64 {
        use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).expect("key"));
        let nonce = |seq: u64| {
            let mut n = [0_u8; NONCE_LEN];
            n[NONCE_LEN - 8..].copy_from_slice(&seq.to_be_bytes());
            Nonce::assume_unique_for_key(n)
        };
        let tag_len = AES_256_GCM.tag_len();
        let records = BUFFER / RECORD;
        let mut batch = vec![vec![0x5a_u8; RECORD + tag_len]; records];
        let mut seq = 0_u64;
        let mut cpu = 0.0;
        let mut left = bytes;
        while left > 0 {
            let start = thread_cpu();
            for record in &mut batch {
                let (data, tag) = record.split_at_mut(RECORD);
                let sealed = key
                    .seal_in_place_separate_tag(nonce(seq), Aad::from([23_u8; 5]), data)
                    .expect("seal");
                tag.copy_from_slice(sealed.as_ref());
                seq += 1;
            }
            if open {
                let start = thread_cpu();
                for (i, record) in batch.iter_mut().enumerate() {
                    let seq = seq - records as u64 + i as u64;
                    key.open_in_place(nonce(seq), Aad::from([23_u8; 5]), record)
                        .expect("open");
                }
                cpu += thread_cpu() - start;
                for record in &mut batch {
                    record.truncate(RECORD);
                    record.resize(RECORD + tag_len, 0);
                }
            } else {
                cpu += thread_cpu() - start;
            }
            left = left.saturating_sub(BUFFER as u64);
        }
        cpu
    }

    /// Median and range of `runs` measurements, in CPU seconds per GiB.
    struct Figure {
        median: f64,
        low: f64,
        high: f64,
    }

    fn measure(runs: u64, bytes: u64, mut once: impl FnMut() -> f64) -> Figure {
        let mut per_gib: Vec<f64> = (0..runs).map(|_| once() * GIB / bytes as f64).collect();
        per_gib.sort_by(f64::total_cmp);
        Figure {
            median: per_gib[per_gib.len() / 2],
            low: per_gib[0],
            high: per_gib[per_gib.len() - 1],
        }
    }

    fn row(what: &str, f: &Figure) {
        println!(
            "| {what} | {:.2} s ({:.2}–{:.2}) |",
            f.median, f.low, f.high
        );
    }

    pub fn run() {
        let bytes = env_u64("BENCH_BYTES", 1 << 30).max(BUFFER as u64);
        let runs = env_u64("BENCH_RUNS", 5).max(1);
        // A short first session warms the caches and names the suite.
        let (_, suite) = tls_seal(BUFFER as u64);
        println!(
            "relay floor: {} MiB per measurement, median of {runs} (range)\n",
            bytes >> 20
        );
        println!("| move (the relay thread's CPU per GiB) | CPU |");
        println!("|---|---|");
        let copy_out = measure(runs, bytes, || pipe_to_tcp(Move::Copy, bytes));
        row("pipe → TCP, read + write", &copy_out);
        let splice_out = measure(runs, bytes, || pipe_to_tcp(Move::Splice, bytes));
        row("pipe → TCP, splice", &splice_out);
        let copy_in = measure(runs, bytes, || tcp_to_pipe(Move::Copy, bytes));
        row("TCP → pipe, read + write", &copy_in);
        let splice_in = measure(runs, bytes, || tcp_to_pipe(Move::Splice, bytes));
        row("TCP → pipe, splice", &splice_in);
        let seal = measure(runs, bytes, || tls_seal(bytes).0);
        row(&format!("TLS seal, {suite}"), &seal);
        let open = measure(runs, bytes, || tls_open(bytes));
        row(&format!("TLS open, {suite}"), &open);
        let bare_seal = measure(runs, bytes, || aead(false, bytes));
        row(
            "AES-256-GCM seal in place, 16 KiB records (ring)",
            &bare_seal,
        );
        let bare_open = measure(runs, bytes, || aead(true, bytes));
        row(
            "AES-256-GCM open in place, 16 KiB records (ring)",
            &bare_open,
        );

        // A relay that encrypts in user space cannot splice (it must see the
        // bytes); one with kernel TLS can, and encrypts in the kernel.
        let user_space = [
            copy_out.median + bare_seal.median,
            copy_in.median + bare_open.median,
        ];
        let kernel_tls = [
            splice_out.median + bare_seal.median,
            splice_in.median + bare_open.median,
        ];
        println!();
        println!("| floor of a relay that encrypts, CPU per GiB | engine → controller | controller → engine |");
        println!("|---|---|---|");
        for (how, floor) in [
            ("TLS in user space: read + write, bare AEAD", user_space),
            ("kernel TLS: splice, bare AEAD", kernel_tls),
        ] {
            println!("| {how} | {:.2} s | {:.2} s |", floor[0], floor[1]);
        }
        println!();
        let verdict = |floor: f64| if floor <= GOAL { "within" } else { "above" };
        for (i, direction) in ["engine → controller", "controller → engine"]
            .into_iter()
            .enumerate()
        {
            println!(
                "goal ≤ {GOAL:.2} s per GiB, {direction}: the user-space TLS floor is {} it, \
                 the kernel TLS floor {} it",
                verdict(user_space[i]),
                verdict(kernel_tls[i]),
            );
        }
    }
}
