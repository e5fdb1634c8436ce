//! `cjm ui`: the settings web page on the discovered plugins.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use cjm_core::PluginError;
use cjm_host::PluginManager;
use cjm_ui::AppState;

/// Serves the settings page on `addr` until Ctrl-C, with configurations in
/// `<data_dir>/configs` (where `cjm config` keeps them). Nothing is loaded at start; the page's
/// Load buttons load plugins, and everything loaded is unloaded on the way out.
pub async fn run(
    manager: &PluginManager,
    data_dir: &Path,
    addr: SocketAddr,
) -> Result<ExitCode, PluginError> {
    let state = AppState::from_manager(manager.clone(), data_dir.join("configs"))
        .await
        .map_err(|e| PluginError::fatal(e.to_string()))?;
    let plugins = state.registry().plugins().len();
    eprintln!("cjm: settings page for {plugins} plugin(s) on http://{addr}/ (Ctrl-C to stop)");
    let served = cjm_ui::serve(state, addr).await;
    manager.unload_all().await;
    served.map_err(|e| PluginError::fatal(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}
