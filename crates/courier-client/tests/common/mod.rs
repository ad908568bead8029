//! Servers for the client's tests: `courier serve` (built beforehand, as target/debug/courier)
//! and the Node reference server, each started on 127.0.0.1:0 and stopped with the test.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use courier_client::{Client, Config, Reconnect, Socket, Status};

/// The `courier` binary: `$COURIER_BIN`, or target/debug/courier of this workspace.
pub fn courier_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("COURIER_BIN") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let bin = target.join("debug/courier");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p courier`",
        bin.display()
    );
    bin
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "courier-client-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server process that printed `listening on http://ADDR`.
pub struct Server {
    child: Child,
    pub addr: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: Option<PathBuf>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spawn(
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        dir: Option<&Path>,
    ) -> (Child, String) {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        // The shell's COURIER_* settings must not leak into the server under test.
        for (k, _) in std::env::vars() {
            if k.starts_with("COURIER_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(i) = line.find("listening on http://") {
                    let addr = line[i + "listening on http://".len()..].trim().to_owned();
                    let _ = tx.send(addr);
                    sent = true;
                } else if std::env::var_os("COURIER_TEST_VERBOSE").is_some() {
                    eprintln!("[server] {line}");
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{} did not print its address", program.display()));
        (child, addr)
    }

    /// `courier serve` on a free port with `data_dir` and extra `COURIER_*` settings.
    pub fn courier(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let program = courier_bin();
        let args = vec![
            "serve".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
        ];
        let (child, addr) = Self::spawn(&program, &args, &env, None);
        Server {
            child,
            addr,
            program,
            args,
            env,
            dir: None,
        }
    }

    /// The Node reference server (npm `socket.io`), or `None` when node or the npm packages
    /// are missing.
    pub fn reference() -> Option<Server> {
        let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e");
        if !e2e.join("node_modules/socket.io").exists() {
            eprintln!(
                "SKIPPED: {} has no node_modules (run `npm ci` there)",
                e2e.display()
            );
            return None;
        }
        if Command::new("node").arg("--version").output().is_err() {
            eprintln!("SKIPPED: node is not installed");
            return None;
        }
        let program = PathBuf::from("node");
        let args = vec![
            "reference/conformance.mjs".to_owned(),
            "socketio".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        let (child, addr) = Self::spawn(&program, &args, &[], Some(&e2e));
        Some(Server {
            child,
            addr,
            program,
            args,
            env: Vec::new(),
            dir: Some(e2e),
        })
    }

    /// Kills the process at once (SIGKILL): connections drop without a goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the process to stop (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Starts the same server again on the same address.
    pub fn restart(&mut self) {
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| {
                if a == "127.0.0.1:0" {
                    self.addr.clone()
                } else {
                    a.clone()
                }
            })
            .collect();
        let (child, addr) = Self::spawn(&self.program, &args, &self.env, self.dir.as_deref());
        assert_eq!(addr, self.addr);
        self.child = child;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Client settings for tests: quick reconnection.
pub fn quick_config() -> Config {
    Config {
        reconnect: Reconnect {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            ..Reconnect::default()
        },
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

/// A connected socket of namespace `nsp`.
pub async fn socket(url: &str, nsp: &str) -> Socket {
    let client = Client::connect_with(url, quick_config()).await.unwrap();
    let s = client.socket(nsp);
    s.connect().await.unwrap();
    s
}

/// Waits until `f(status)` holds.
pub async fn wait_status(socket: &Socket, f: impl Fn(&Status) -> bool) -> Status {
    let mut rx = socket.status();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| f(s)))
        .await
        .expect("status in time")
        .expect("status channel")
        .clone()
}

/// Receives from `rx` within a few seconds.
pub async fn recv<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("received in time")
        .expect("channel open")
}
