//! A host process for tests that need to kill the host itself: loads every plugin found in the
//! directory given as the first argument, asks the plugin `a` to start a child process, prints
//! one JSON line `{"workers": [...], "child": pid}` and then waits to be killed.

use cjm_host::{Call, PluginManager};
use serde_json::json;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: host-harness MANIFEST_DIR [DATA_DIR]");
        return std::process::ExitCode::from(2);
    };
    let data = std::env::args_os().nth(2).unwrap_or_else(|| dir.clone());
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
    let mut workers = Vec::new();
    for (name, r) in m.load_all(Default::default()).await {
        if let Err(e) = r {
            eprintln!("{name}: {e}");
            return std::process::ExitCode::FAILURE;
        }
        if let Ok(s) = m.stats(&name).await {
            workers.extend(s.pid);
        }
    }
    let child = match m.execute("a", Call::new(vec![json!("spawn_child")])).await {
        Ok(out) => out.value,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("{}", json!({"workers": workers, "child": child}));
    futures::future::pending::<()>().await;
    std::process::ExitCode::SUCCESS
}
