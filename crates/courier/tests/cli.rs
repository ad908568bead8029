//! The command-line client (`courier emit|publish|listen|streams`) against a `courier serve`
//! started by each test on 127.0.0.1:0.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_courier");

/// A command with none of the shell's COURIER_* settings.
fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("COURIER_") || k == "RUST_BACKTRACE" || k == "RUST_LIB_BACKTRACE" {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Lines of a child's pipe, read on a thread.
fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; returns it.
fn wait_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("no line with {needle:?} in time"),
        }
    }
}

/// A `courier serve` with its own data directory.
struct Hub {
    child: Child,
    addr: String,
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Hub {
    fn start(env: &[(&str, &str)]) -> Hub {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "courier-cli-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, addr) = Self::spawn(&dir, "127.0.0.1:0", &env);
        Hub {
            child,
            addr,
            dir,
            env,
        }
    }

    fn spawn(dir: &PathBuf, listen: &str, env: &[(String, String)]) -> (Child, String) {
        let mut cmd = command();
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(dir)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting courier serve");
        let rx = lines(child.stderr.take().unwrap());
        let line = wait_line(&rx, "listening on http://");
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || for _ in rx {});
        let addr = line.split("listening on http://").nth(1).unwrap().trim();
        (child, addr.to_owned())
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the hub (SIGKILL) and starts it again on the same address and data.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, addr) = Self::spawn(&self.dir, &self.addr, &self.env);
        assert_eq!(addr, self.addr);
        self.child = child;
    }

    /// Runs `courier ARGS` against this hub (through COURIER_URL) and waits for it.
    fn run(&self, args: &[&str]) -> Output {
        run_with(args, &[("COURIER_URL", &self.url())])
    }

    /// Like `run`, expecting success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "courier {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Like `ok`, parsing stdout as one JSON value.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.ok(&args);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Starts `courier listen ARGS`; returns the child and its stdout lines once it listens.
    fn listen(&self, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
        let mut child = command()
            .arg("listen")
            .args(args)
            .env("COURIER_URL", self.url())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = lines(child.stdout.take().unwrap());
        let err = lines(child.stderr.take().unwrap());
        wait_line(&err, "listening on");
        std::thread::spawn(move || {
            for line in err {
                if std::env::var_os("COURIER_TEST_VERBOSE").is_some() {
                    eprintln!("[listen] {line}");
                }
            }
        });
        (child, out)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = command()
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("courier {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Waits for a child to exit by itself; returns its success.
fn exits(child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the child did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn next_json(rx: &mpsc::Receiver<String>) -> Value {
    let line = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("a line in time");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn listen_stream_receives_what_publish_sent() {
    let hub = Hub::start(&[]);
    let out = hub.ok(&["publish", "orders", "order", r#"{"n":1}"#, "--id", "o-1"]);
    assert_eq!(out.trim(), "published to orders as #1");
    let out = hub.ok(&["publish", "orders", "order", r#"{"n":1}"#, "--id", "o-1"]);
    assert!(out.contains("duplicate"), "{out}");
    let v = hub.json(&["publish", "orders", "order", r#"{"n":2}"#]);
    assert_eq!(v, json!({"seq": 2, "duplicate": false}));
    let v = hub.json(&["publish", "orders", "bulk", "[true]", "--count", "3"]);
    assert_eq!(v["published"], json!(3));
    assert_eq!(
        (v["first_seq"].clone(), v["last_seq"].clone()),
        (json!(3), json!(5))
    );
    let file = hub.dir.join("entries.jsonl");
    std::fs::write(&file, "{\"line\":1}\n\n\"two\"\n").unwrap();
    let v = hub.json(&[
        "publish",
        "orders",
        "line",
        "--file",
        file.to_str().unwrap(),
        "--id",
        "f",
    ]);
    assert_eq!(v["published"], json!(2));
    assert_eq!(v["last_seq"], json!(7));

    let (mut child, out) = hub.listen(&[
        "--stream",
        "orders",
        "--consumer",
        "cli",
        "--from",
        "all",
        "--count",
        "7",
    ]);
    let got: Vec<Value> = (0..7).map(|_| next_json(&out)).collect();
    assert!(exits(&mut child));
    let seqs: Vec<u64> = got.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(
        got[0],
        json!({"stream": "orders", "seq": 1, "id": "o-1", "deliveries": 1, "event": "order", "data": {"n": 1}})
    );
    assert_eq!(got[5]["id"], json!("f-1"));
    assert_eq!(got[6]["data"], json!("two"));

    // Each line was acknowledged after it was printed.
    let v = hub.json(&["streams", "consumers", "orders"]);
    let c = &v["consumers"][0];
    assert_eq!(
        (c["name"].clone(), c["ack_floor"].clone()),
        (json!("cli"), json!(7))
    );
    assert_eq!(c["pending"], json!(0));

    // The consumer goes on from where it was.
    hub.ok(&["publish", "orders", "order", r#"{"n":8}"#]);
    let (mut child, out) = hub.listen(&["--stream", "orders", "--consumer", "cli", "--count", "1"]);
    assert_eq!(next_json(&out)["seq"], json!(8));
    assert!(exits(&mut child));
}

#[test]
fn listen_prints_events_and_reconnects() {
    let mut hub = Hub::start(&[]);
    let (mut child, out) = hub.listen(&["--room", "news", "--count", "3"]);
    let v = hub.json(&["emit", "headline", r#""hello""#, "42", "--http"]);
    assert_eq!(v, json!({"recipients": 1}));
    let v = next_json(&out);
    assert!(v["offset"].is_string(), "{v}");
    assert_eq!(
        v,
        json!({"namespace": "/", "event": "headline", "offset": v["offset"], "args": ["hello", 42]})
    );
    // Through a socket: the hub relays to the room the emitter joins.
    let text = hub.ok(&["emit", "headline", r#"{"a":1}"#, "--room", "news"]);
    assert_eq!(text.trim(), "sent headline to 1 recipient");
    let v = next_json(&out);
    assert_eq!(v["event"], json!("headline"));
    assert_eq!(v["args"][0], json!({"a": 1}));

    // The hub goes away and comes back: listen reconnects on its own and, its session
    // recovered, gets what was sent to its room meanwhile (or live, if it was back first).
    hub.restart();
    hub.ok(&["emit", "headline", r#""again""#, "--room", "news", "--http"]);
    let v = next_json(&out);
    assert_eq!(v["args"], json!(["again"]), "{v}");
    assert!(exits(&mut child));
}

#[test]
fn durable_listen_survives_a_restart() {
    let mut hub = Hub::start(&[]);
    let (mut child, out) = hub.listen(&["--stream", "jobs", "--consumer", "w", "--count", "2"]);
    hub.ok(&["publish", "jobs", "job", "1"]);
    assert_eq!(next_json(&out)["seq"], json!(1));
    std::thread::sleep(Duration::from_millis(300));
    hub.restart();
    // Publishing works once the hub is back; the listener resumes its subscription.
    hub.ok(&["publish", "jobs", "job", "2"]);
    let v = next_json(&out);
    assert_eq!((v["seq"].clone(), v["data"].clone()), (json!(2), json!(2)));
    assert!(exits(&mut child));
}

#[test]
fn streams_commands() {
    let hub = Hub::start(&[]);
    assert_eq!(hub.ok(&["streams", "list"]).trim(), "no streams");
    hub.ok(&["publish", "audit", "entry", "{}", "--count", "4"]);
    let list = hub.ok(&["streams", "list"]);
    let mut rows = list.lines();
    assert!(rows.next().unwrap().starts_with("STREAM"));
    let row: Vec<&str> = rows.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], &["audit", "4", "#1..#4"]);

    let v = hub.json(&["streams", "info", "audit"]);
    assert_eq!(
        (v["entries"].clone(), v["last_seq"].clone()),
        (json!(4), json!(4))
    );
    let info = hub.ok(&["streams", "info", "audit"]);
    assert!(info.contains("entries    4"), "{info}");
    assert_eq!(
        hub.ok(&["streams", "consumers", "audit"]).trim(),
        "audit has no consumers"
    );

    assert_eq!(
        hub.ok(&["streams", "purge", "audit"]).trim(),
        "purged 4 entries from audit"
    );
    let v = hub.json(&["streams", "info", "audit"]);
    assert_eq!(
        (v["entries"].clone(), v["last_seq"].clone()),
        (json!(0), json!(4))
    );
    let v = hub.json(&["streams", "list"]);
    assert_eq!(v["streams"][0]["name"], json!("audit"));
}

#[test]
fn errors_are_clear_and_fail() {
    let hub = Hub::start(&[]);
    let fails = |args: &[&str], env: &[(&str, &str)], needle: &str| {
        let out = run_with(args, env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "courier {args:?} succeeded");
        assert!(err.contains(needle), "courier {args:?}: {err}");
        assert!(out.stdout.is_empty(), "courier {args:?} printed on stdout");
    };
    let url = hub.url();
    let here = [("COURIER_URL", url.as_str())];
    fails(
        &["streams", "info", "nope"],
        &here,
        "stream \"nope\" not found",
    );
    fails(&["streams", "consumers", "nope"], &here, "not found");
    fails(&["emit", "x", "not-json"], &here, "argument 1 is not JSON");
    fails(&["publish", "s", "e"], &here, "data is missing");
    fails(
        &["listen", "--from", "all", "--stream", "s"],
        &here,
        "--consumer",
    );

    // Nobody listens there.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead = format!("http://{free}");
    fails(
        &["streams", "list", "--url", &dead],
        &[],
        "Connection refused",
    );
    fails(&["emit", "x", "--url", &dead], &[], "cannot connect");
    fails(&["listen", "--url", &dead], &[], "cannot connect");
    fails(&["streams", "list", "--url", "nope"], &[], "invalid URL");
    fails(&["listen", "--url", "ftp://x"], &[], "invalid URL");
}

#[test]
fn api_token() {
    let hub = Hub::start(&[("COURIER_API_TOKEN", "t0k")]);
    let out = hub.run(&["streams", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    assert_eq!(
        hub.ok(&["streams", "list", "--token", "t0k"]).trim(),
        "no streams"
    );
    let out = run_with(
        &["publish", "s", "e", "1"],
        &[("COURIER_URL", &hub.url()), ("COURIER_TOKEN", "t0k")],
    );
    assert!(out.status.success());
}

#[test]
fn listen_joins_its_rooms_again_without_recovery() {
    let mut hub = Hub::start(&[("COURIER_RECOVERY_ENABLED", "false")]);
    let (mut child, out) = hub.listen(&["--room", "news", "--count", "1"]);
    hub.restart();
    // Nothing is replayed without recovery: emit until the listener is back in its room.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = hub.json(&["emit", "headline", r#""back""#, "--room", "news", "--http"]);
        if v["recipients"] == json!(1) {
            break;
        }
        assert!(Instant::now() < deadline, "listen did not rejoin its room");
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = next_json(&out);
    assert_eq!(
        (v["args"].clone(), v.get("offset")),
        (json!(["back"]), None)
    );
    assert!(exits(&mut child));
}
