//! A host killed with SIGKILL leaves no worker and no worker child behind.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{alive, wait_gone, Scratch};
use serde_json::{json, Value};

#[test]
fn a_host_killed_with_sigkill_leaves_nothing_behind() {
    let s = Scratch::new();
    s.worker_manifest("a", json!({}));
    s.worker_manifest("b", json!({}));
    let mut host = Command::new(env!("CARGO_BIN_EXE_host-harness"))
        .arg(s.manifests())
        .arg(s.data())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the harness");
    let mut line = String::new();
    BufReader::new(host.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the harness's report");
    let report: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        let _ = host.kill();
        let _ = host.wait();
        panic!("bad report {line:?}: {e}")
    });
    let mut pids: Vec<u32> = report["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect();
    pids.push(report["child"].as_u64().unwrap() as u32);
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");

    host.kill().expect("SIGKILL the host");
    host.wait().expect("reap the host");
    let left = wait_gone(&pids, Duration::from_secs(10));
    let described: Vec<String> = left
        .iter()
        .map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            format!(
                "{p}: {} [{}]",
                String::from_utf8_lossy(&cmd).replace('\0', " "),
                stat.trim()
            )
        })
        .collect();
    for &p in &left {
        // Do not leak them into the rest of the run, whatever the verdict.
        unsafe_kill(p);
    }
    assert!(left.is_empty(), "left behind: {described:#?}");
}

fn unsafe_kill(pid: u32) {
    let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
}
