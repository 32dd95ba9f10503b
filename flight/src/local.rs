//! Worker processes on this machine: what `dirk cluster --local N` and the tests start.

use crate::protocol::TOKEN_ENV;
use dirk_engine::EngineError;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The first line a worker prints on standard output, once it listens.
pub fn listening_line(addr: SocketAddr) -> String {
    format!(
        "dirk worker listening on {addr} (protocol {})",
        crate::PROTOCOL_VERSION
    )
}

fn parse_listening_line(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("dirk worker listening on ")?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// The `dirk` binary of the build the running program belongs to: beside it in
/// `target/<profile>/`, or one level up for a test binary in `target/<profile>/deps/`.
pub fn dirk_binary_of_this_build() -> Result<PathBuf, EngineError> {
    let not_found = |message: String| EngineError::Remote {
        peer: "dirk binary".into(),
        message,
    };
    let exe = std::env::current_exe().map_err(|e| not_found(e.to_string()))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| not_found(format!("{} has no directory", exe.display())))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    let dirk = dir.join(format!("dirk{}", std::env::consts::EXE_SUFFIX));
    if dirk.exists() {
        Ok(dirk)
    } else {
        Err(not_found(format!(
            "{} does not exist: build it first (cargo build --bin dirk)",
            dirk.display()
        )))
    }
}

/// Worker processes started on loopback ports. Dropping it stops them; they also exit on their
/// own when the process that started them ends (their standard input closes).
pub struct LocalWorkers {
    children: Vec<Child>,
    addresses: Vec<String>,
    token: String,
    binary: PathBuf,
    threads: usize,
    args: Vec<String>,
}

impl LocalWorkers {
    /// Starts `n` workers by running `dirk_binary worker --listen 127.0.0.1:0`, each with
    /// `threads` CPU threads, all requiring one fresh random token.
    pub fn start(
        dirk_binary: &Path,
        n: usize,
        threads: usize,
    ) -> Result<LocalWorkers, EngineError> {
        Self::start_with_args(dirk_binary, n, threads, &[])
    }

    /// [`LocalWorkers::start`], passing each worker `args` too (`--memory-limit 64M`, ...);
    /// workers started later in place of one that died get them as well.
    pub fn start_with_args(
        dirk_binary: &Path,
        n: usize,
        threads: usize,
        args: &[String],
    ) -> Result<LocalWorkers, EngineError> {
        let token = random_token();
        let mut workers = LocalWorkers {
            children: Vec::new(),
            addresses: Vec::new(),
            token,
            binary: dirk_binary.to_path_buf(),
            threads,
            args: args.to_vec(),
        };
        for _ in 0..n {
            let (child, address) = workers.spawn()?;
            workers.children.push(child);
            workers.addresses.push(address);
        }
        Ok(workers)
    }

    fn spawn(&self) -> Result<(Child, String), EngineError> {
        let (dirk_binary, threads) = (&self.binary, self.threads);
        let failed = |message: String| EngineError::Remote {
            peer: format!("{} worker", dirk_binary.display()),
            message,
        };
        let mut child = Command::new(dirk_binary)
            .args(["worker", "--listen", "127.0.0.1:0", "--exit-with-stdin"])
            .args(["--threads", &threads.max(1).to_string()])
            .args(&self.args)
            .env(TOKEN_ENV, &self.token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| failed(format!("cannot start: {e}")))?;
        let stdout = child.stdout.take();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            if let Some(out) = stdout {
                let _ = BufReader::new(out).read_line(&mut line);
            }
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        match parse_listening_line(&line) {
            Some(address) => Ok((child, address)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(failed(format!(
                    "did not report its address (printed {:?})",
                    line.trim()
                )))
            }
        }
    }

    /// Their addresses, `127.0.0.1:PORT`.
    pub fn addresses(&self) -> Vec<String> {
        self.addresses.clone()
    }

    /// The token they require.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Stops worker `i` without closing its connections (SIGSTOP), as a hung machine or a
    /// network that drops packets would: nothing answers, and nothing resets.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Lets a paused worker go on (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        if let Some(c) = self.children.get(i) {
            let _ = Command::new("kill")
                .args([signal, &c.id().to_string()])
                .status();
        }
    }

    /// Starts a new worker process in the place of each one that has exited (killed, crashed);
    /// for each, its index and new address.
    pub fn replace_exited(&mut self) -> Result<Vec<(usize, String)>, EngineError> {
        let mut replaced = Vec::new();
        for i in 0..self.children.len() {
            if let Ok(Some(_)) = self.children[i].try_wait() {
                let (child, address) = self.spawn()?;
                self.children[i] = child;
                self.addresses[i] = address.clone();
                replaced.push((i, address));
            }
        }
        Ok(replaced)
    }

    /// The process id of each worker.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// Kills worker `i` at once (SIGKILL), as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(c) = self.children.get_mut(i) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LocalWorkers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// 128 random bits as hex.
pub fn random_token() -> String {
    format!("{:016x}{:016x}", random_u64(0), random_u64(1))
}

/// 64 random bits, from the standard library's per-process random hash keys, the clock and the
/// process id (`salt` tells draws in the same instant apart).
pub(crate) fn random_u64(salt: u8) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(salt);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}
