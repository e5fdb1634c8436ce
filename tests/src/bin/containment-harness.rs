//! A host process for the containment tests: loads every plugin in the manifest directory
//! (first argument; the data directory is the second), asks each to start its process family
//! (`spawn_family` for test workers, any call for the Python `FamilyPlugin`), prints one JSON
//! line `{"runtime_dir", "plugins": {name: {"worker", "child", "daemon"}}}` and then follows
//! commands on standard input: `unload` unloads everything and answers `{"unloaded": true}`;
//! end-of-file ends the process (dropping the manager). Tests SIGKILL it to kill the host.

use std::io::BufRead;

use cjm_host::{Call, PluginManager};
use serde_json::{json, Map, Value};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), Some(data)) = (args.next(), args.next()) else {
        eprintln!("usage: containment-harness MANIFEST_DIR DATA_DIR");
        return std::process::ExitCode::from(2);
    };
    let m = match PluginManager::builder()
        .search_paths([&dir])
        .data_dir(data)
        .build()
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut plugins = Map::new();
    for (name, r) in m.load_all(Default::default()).await {
        if let Err(e) = r {
            eprintln!("{name}: {e}");
            return std::process::ExitCode::FAILURE;
        }
        let call = if name.starts_with("py") {
            Call::new(vec![])
        } else {
            Call::new(vec![json!("spawn_family")])
        };
        match m.execute(&name, call).await {
            Ok(out) => {
                plugins.insert(name, out.value);
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let report = json!({"runtime_dir": m.runtime_dir(), "plugins": Value::Object(plugins)});
    println!("{report}");
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        match line.as_deref().map(str::trim) {
            Ok("unload") => {
                m.unload_all().await;
                println!("{}", json!({"unloaded": true}));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    std::process::ExitCode::SUCCESS
}
