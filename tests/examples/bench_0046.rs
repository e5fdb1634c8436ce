//! Host → 0.0.46 worker round trip, p50, beside the original's own host (its PluginManager,
//! from Python in the same venv) in one run. Same plugin (tests/python/cjm_test_plugins_0046),
//! same call (`action="state"`), same machine, one after the other.
//!
//! ```text
//! cargo run --release -p cjm-tests --example bench_0046 [-- CALLS]
//! ```
//! Needs `target/py312-v0046` (created by `cargo xtask test`) or `CJM_TEST_PYTHON_0046`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use cjm_host::{Call, PluginManager};
use serde_json::{json, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("CJM_TEST_PYTHON_0046")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../target/py312-v0046/bin/python"));
    if !python.is_file() {
        return Err(format!(
            "no 0.0.46 venv at {}: run `cargo xtask test`",
            python.display()
        )
        .into());
    }
    let dir = tempfile::tempdir()?;
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let manifest = json!({
        "name": "gen46", "version": "0.0.46-test", "category": "python",
        "module": "cjm_test_plugins_0046.plugins", "class": "Gen46Plugin",
        "python_path": python,
        "env_vars": {"PYTHONPATH": root.join("python")},
    });
    std::fs::write(manifests.join("gen46.json"), manifest.to_string())?;

    let rt = tokio::runtime::Runtime::new()?;
    let ours = rt.block_on(async {
        let m = PluginManager::builder()
            .search_paths([&manifests])
            .data_dir(dir.path().join("cjm"))
            .build()?;
        m.load("gen46", None).await?;
        let call = || {
            Call::new(vec![]).with_kwargs(
                json!({"action": "state"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            )
        };
        for _ in 0..50 {
            m.execute("gen46", call()).await?;
        }
        let mut times = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t0 = Instant::now();
            m.execute("gen46", call()).await?;
            times.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        m.unload_all().await;
        times.sort_by(f64::total_cmp);
        Ok::<f64, cjm_host::PluginError>(times[times.len() / 2])
    })?;

    let out = Command::new(&python)
        .arg(root.join("python/bench/original_host_p50.py"))
        .arg(&manifests)
        .arg("gen46")
        .arg(calls.to_string())
        .env("PYTHONPATH", root.join("python"))
        .env("CJM_DATA_DIR", dir.path().join("orig"))
        .current_dir(dir.path())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "the original's host failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let theirs: Value = serde_json::from_str(line.lines().last().unwrap_or("{}"))?;
    println!("host -> 0.0.46 worker round trip, p50 over {calls} calls (action=\"state\"):");
    println!("  cjm host:               {ours:8.0} µs");
    println!(
        "  original PluginManager: {:6.0} µs",
        theirs["p50_us"].as_f64().unwrap_or(f64::NAN)
    );
    Ok(())
}
