//! The demo host (`cargo xtask demo`): runs the built-in sample plugins through every step of
//! a host's life and narrates it. The sample worker binaries are found next to this program
//! (the same `target/<profile>` directory) or in the directory given as the first argument.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use cjm_host::{Call, PluginError, PluginManager};
use futures::StreamExt;
use serde_json::{json, Value};

/// The sample plugins this demo knows, with the manifest fields beyond `command`.
fn samples() -> Vec<(&'static str, Value)> {
    vec![
        (
            "echo",
            json!({"category": "demo", "description": "Echoes its input; sleeps on demand."}),
        ),
        (
            "transcriber",
            json!({"category": "transcription", "description": "A simulated transcriber that streams words."}),
        ),
    ]
}

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::args_os().nth(1) {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), PluginError> {
    let bins = bin_dir();
    let scratch = tempfile::tempdir()
        .map_err(|e| PluginError::fatal(format!("cannot create a scratch directory: {e}")))?;
    let manifests = scratch.path().join("manifests");
    std::fs::create_dir_all(&manifests)
        .map_err(|e| PluginError::fatal(format!("cannot create {}: {e}", manifests.display())))?;

    step(1, "Writing manifests for the sample plugins");
    let mut names = Vec::new();
    for (name, extra) in samples() {
        let bin = bins.join(name);
        if !bin.is_file() {
            println!("    (skipping {name}: {} is not built)", bin.display());
            continue;
        }
        let mut m = json!({"name": name, "version": "0.1.0", "command": bin});
        if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        let file = manifests.join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_string_pretty(&m).unwrap_or_default())
            .map_err(|e| PluginError::fatal(format!("cannot write {}: {e}", file.display())))?;
        println!("    {}", file.display());
        names.push(name);
    }
    if names.is_empty() {
        return Err(PluginError::fatal(format!(
            "no sample plugin binaries in {}; run `cargo xtask demo`",
            bins.display()
        )));
    }

    step(2, "Discovering");
    let manager = PluginManager::builder()
        .search_paths([&manifests])
        .data_dir(scratch.path().join("data"))
        .build()?;
    for m in manager.discovered() {
        println!(
            "    {} {} [{}] {} — {}",
            m.name,
            m.version,
            m.category,
            m.effective_execution_mode().label(),
            m.description
        );
    }

    step(3, "Loading every plugin at once (each in its own process)");
    let t = Instant::now();
    for (name, result) in manager.load_all(Default::default()).await {
        match result {
            Ok(()) => println!(
                "    {name}: ready, pid {}",
                manager.stats(&name).await?.pid.unwrap_or(0)
            ),
            Err(e) => println!("    {name}: failed: {e}"),
        }
    }
    println!("    all ready in {:.1} ms", t.elapsed().as_secs_f64() * 1e3);

    if manager.loaded().contains(&"echo".to_owned()) {
        step(4, "Calling echo");
        let call = Call::new(vec![json!("echo")]).kwarg("text", json!("hello, plugins"));
        let out = manager.execute("echo", call).await?;
        println!("    -> {}", out.value);
        let t = Instant::now();
        let n = 1000;
        for i in 0..n {
            let call = Call::new(vec![json!("echo")]).kwarg("i", json!(i));
            manager.execute("echo", call).await?;
        }
        println!(
            "    {n} more calls: {:.1} µs per round trip",
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        );
        let bad = manager
            .execute("echo", Call::new(vec![json!("no-such-op")]))
            .await;
        if let Err(e) = bad {
            println!("    a bad call is a typed error: {} ({})", e, e.category);
        }
    }

    let streamer = if manager.loaded().contains(&"transcriber".to_owned()) {
        "transcriber"
    } else {
        "echo"
    };
    step(5, &format!("Streaming from {streamer}"));
    let call =
        Call::new(vec![json!("transcribe")]).kwarg("text", json!("the quick brown fox jumps"));
    let mut stream = manager.execute_stream(streamer, call).await?;
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        println!("    chunk: {}", chunk?);
        chunks += 1;
    }
    println!("    {chunks} chunks");

    step(6, "Configuration: schema, hot update, rejected update");
    let name = if manager.loaded().contains(&"transcriber".to_owned()) {
        "transcriber"
    } else {
        names[0]
    };
    let schema = manager.config_schema(name)?;
    println!("    schema of {name}: {schema}");
    println!("    config in force: {}", manager.config(name)?);
    if name == "transcriber" {
        manager
            .update_config(name, json!({"language": "de", "word_delay_ms": 5}))
            .await?;
        println!("    updated hot (same process): {}", manager.config(name)?);
        match manager.update_config(name, json!({"language": "xx"})).await {
            Ok(()) => println!("    (unexpected: the plugin accepted language xx)"),
            Err(e) => println!("    refused as expected: {e}"),
        }
        println!("    config still in force: {}", manager.config(name)?);
    }

    step(7, "Stats");
    for n in manager.loaded() {
        let s = manager.stats(&n).await?;
        let w = s.worker.as_ref();
        println!(
            "    {n}: {} calls, {} errors, p50 {} µs, RSS {:.1} MB, CPU {:.1} %",
            s.calls,
            s.errors,
            s.latency_p50_us.unwrap_or(0),
            w.map_or(0.0, |w| w.memory_rss_mb),
            w.map_or(0.0, |w| w.cpu_percent),
        );
    }

    step(8, "Unloading everything");
    let pids: Vec<u32> = {
        let mut v = Vec::new();
        for n in manager.loaded() {
            v.extend(manager.stats(&n).await?.pid);
        }
        v
    };
    let t = Instant::now();
    manager.unload_all().await;
    println!("    done in {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let alive: Vec<u32> = pids
        .into_iter()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    if alive.is_empty() {
        println!("    no worker process is left");
        Ok(())
    } else {
        Err(PluginError::fatal(format!(
            "processes left behind: {alive:?}"
        )))
    }
}
