//! Persistence across processes: a writer SIGKILLed mid-write never leaves a truncated file, and
//! two processes updating one configuration lose no update.
//!
//! The children are this test binary re-executed (`current_exe()`), running only
//! [`child_process_entry`] with an environment variable selecting what it does. Every child is
//! killed (if still running) and reaped by [`ChildGuard`], also when an assertion fails. A child
//! exits by itself when its stdin closes, so none outlives a parent that dies.

use std::io::{BufRead, BufReader, Lines, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use cjm_core::Manifest;
use cjm_registry::{Config, ConfigStore, PluginRegistry, StaticSource};
use serde_json::{json, Value};

const MODE_ENV: &str = "CJM_REGISTRY_TEST_CHILD";
const DIR_ENV: &str = "CJM_REGISTRY_TEST_DIR";
const COUNT_ENV: &str = "CJM_REGISTRY_TEST_COUNT";
/// Lines the children print for the parent carry this tag (libtest prints its own text too).
const TAG: &str = "CHILD ";
const ID: &str = "test.p";

/// The content written for generation `n`: large and `n`-dependent, so that a torn or mixed
/// write cannot pass for a whole one.
fn payload(n: u64) -> Config {
    let len = 20_000 + (n * 7_919 % 150_000) as usize;
    let pad = char::from(b'a' + (n % 26) as u8).to_string().repeat(len);
    let mut m = Config::new();
    m.insert("n".into(), json!(n));
    m.insert("pad".into(), json!(pad));
    m.insert("ünïcode".into(), json!(format!("génération {n} 🔁")));
    m
}

/// The generation `cfg` holds, after checking it is exactly what that generation wrote.
fn generation(cfg: &Config) -> u64 {
    let n = cfg
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no generation in {:?}", cfg.keys().collect::<Vec<_>>()));
    assert!(
        cfg == &payload(n),
        "generation {n} is not what its writer wrote"
    );
    n
}

fn manifest() -> Manifest {
    Manifest::from_value(
        json!({"name": "p", "command": "worker", "config_schema": {
            "type": "object", "properties": {"count": {"type": "integer", "minimum": 0}}}}),
        None,
    )
    .expect("valid manifest")
}

// ----- Child side ---------------------------------------------------------------------------

/// Not a test of its own: the entry point of the child processes. Without the environment
/// variable it does nothing.
#[test]
fn child_process_entry() {
    let Ok(mode) = std::env::var(MODE_ENV) else {
        return;
    };
    let dir = std::env::var(DIR_ENV).expect("child needs a directory");
    let go = exit_when_stdin_closes();
    match mode.as_str() {
        "writer" => writer(Path::new(&dir)),
        "incrementer" => {
            let count: u64 = std::env::var(COUNT_ENV)
                .ok()
                .and_then(|c| c.parse().ok())
                .expect("child needs a count");
            incrementer(Path::new(&dir), count, &go);
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{TAG}{line}").expect("stdout");
    out.flush().expect("stdout");
}

/// Reads stdin on a thread and returns a receiver of its `go` lines; on EOF the process exits,
/// so a child never outlives its parent.
fn exit_when_stdin_closes() -> Receiver<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if l == "go" => {
                    let _ = tx.send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        std::process::exit(0);
    });
    rx
}

/// Saves generation after generation until killed, reporting each one saved.
fn writer(dir: &Path) {
    let store = ConfigStore::new(dir).expect("store");
    let mut n = store
        .load(ID)
        .expect("readable")
        .map_or(0, |c| generation(&c));
    loop {
        n += 1;
        store.save(ID, &payload(n)).expect("save");
        say(&format!("saved {n}"));
    }
}

/// Waits for `go`, then increments `count` through the registry `count` times.
fn incrementer(dir: &Path, count: u64, go: &Receiver<()>) {
    let reg = PluginRegistry::new(dir).expect("registry");
    reg.add_plugin_manager("test", Arc::new(StaticSource::new([manifest()])), None)
        .expect("register");
    say("ready");
    go.recv().expect("the parent says go");
    for _ in 0..count {
        reg.update_plugin_config(ID, |cfg| {
            let c = cfg.get("count").and_then(Value::as_u64).unwrap_or(0);
            cfg.insert("count".into(), json!(c + 1));
        })
        .expect("update");
    }
    say("done");
}

// ----- Parent side --------------------------------------------------------------------------

/// A child process that is killed and reaped when dropped.
struct ChildGuard {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ChildGuard {
    fn spawn(mode: &str, dir: &Path, count: Option<u64>) -> Self {
        let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
        cmd.args([
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MODE_ENV, mode)
        .env(DIR_ENV, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        if let Some(c) = count {
            cmd.env(COUNT_ENV, c.to_string());
        }
        let mut child = cmd.spawn().expect("spawn the child");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next line the child tagged, without the tag; `None` at EOF.
    fn next_line(&mut self) -> Option<String> {
        for line in self.lines.by_ref() {
            let line = line.expect("child stdout");
            // libtest may have written `test child_process_entry ... ` on the same line.
            if let Some(at) = line.find(TAG) {
                return Some(line[at + TAG.len()..].to_owned());
            }
        }
        None
    }

    fn expect_line(&mut self, want: &str) {
        assert_eq!(self.next_line().as_deref(), Some(want));
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to child");
        stdin.flush().expect("flush to child");
    }

    /// SIGKILL (on Unix) and reap.
    fn kill(mut self) -> ExitStatus {
        self.child.kill().expect("kill the child");
        self.child.wait().expect("reap the child")
    }

    /// Waits for a normal exit.
    fn wait(mut self) -> ExitStatus {
        self.stdin.take(); // the child may exit now
        self.child.wait().expect("reap the child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Harmless after `kill`/`wait`: kill fails on a reaped child and wait returns the status.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_writer_killed_mid_write_leaves_the_old_or_the_new_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = ConfigStore::new(dir.path()).expect("store");
    store.save(ID, &payload(0)).expect("initial save");
    let mut last_reported = 0;
    // Kill after a varying number of completed saves, while the next one is in flight.
    for (round, kill_after) in [1u64, 2, 3, 5, 8, 13, 21, 34].into_iter().enumerate() {
        let mut child = ChildGuard::spawn("writer", dir.path(), None);
        for _ in 0..kill_after {
            let line = child.next_line().expect("the writer reports its saves");
            let n: u64 = line
                .strip_prefix("saved ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {line:?}"));
            assert!(n > last_reported, "generations only grow");
            last_reported = n;
            // A concurrent, lock-free reader only ever sees whole generations.
            let seen = generation(&store.load(ID).expect("valid JSON").expect("present"));
            assert!(seen >= n, "round {round}: saw {seen} after {n} was saved");
        }
        let status = child.kill();
        assert!(!status.success(), "the writer was killed, not finished");
        // The file is one whole generation (it parsed), and never older than what the writer
        // reported. It may be newer: the writer keeps saving while its reports wait to be read.
        let after = generation(&store.load(ID).expect("valid JSON").expect("present"));
        assert!(
            after >= last_reported,
            "round {round}: file holds generation {after}, older than the reported {last_reported}"
        );
        last_reported = after;
    }
    // A later write cleans up temporaries the killed writers left.
    store.save(ID, &payload(last_reported + 1)).expect("save");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(store.ids().expect("list"), [ID]);
}

#[test]
fn two_processes_incrementing_lose_no_update() {
    let dir = tempfile::tempdir().expect("temp dir");
    let per_child = 150;
    let mut a = ChildGuard::spawn("incrementer", dir.path(), Some(per_child));
    let mut b = ChildGuard::spawn("incrementer", dir.path(), Some(per_child));
    a.expect_line("ready");
    b.expect_line("ready");
    // Start both at once.
    a.send("go");
    b.send("go");
    a.expect_line("done");
    b.expect_line("done");
    assert!(a.wait().success());
    assert!(b.wait().success());
    let store = ConfigStore::new(dir.path()).expect("store");
    let cfg = store.load(ID).expect("valid").expect("present");
    assert_eq!(cfg["count"], json!(2 * per_child));
}
