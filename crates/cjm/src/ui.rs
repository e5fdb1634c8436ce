//! `cjm ui`: the settings web page on the discovered plugins.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use cjm_core::PluginError;
use cjm_host::PluginManager;
use cjm_ui::{Access, AppState};

/// Who may use the page: `--allow-host` names and the token in `--token-file`. A non-loopback
/// address without a token is refused here, before anything starts (a usage error).
pub(crate) fn access(
    addr: SocketAddr,
    allow_hosts: Vec<String>,
    token_file: Option<&Path>,
) -> Result<Access, String> {
    let mut access = allow_hosts
        .into_iter()
        .fold(Access::new(addr), Access::allow_host);
    if let Some(file) = token_file {
        let token = std::fs::read_to_string(file)
            .map_err(|e| format!("--token-file: cannot read {}: {e}", file.display()))?;
        access = access
            .with_token(&token)
            .map_err(|e| format!("--token-file {}: {e}", file.display()))?;
    }
    access.check().map_err(|e| e.to_string())?;
    Ok(access)
}

/// Serves the settings page on `addr` until Ctrl-C, with configurations in
/// `<data_dir>/configs` (where `cjm config` keeps them). Nothing is loaded at start; the page's
/// Load buttons load plugins, and everything loaded is unloaded on the way out.
pub(crate) async fn run(
    manager: &PluginManager,
    data_dir: &Path,
    addr: SocketAddr,
    access: Access,
) -> Result<ExitCode, PluginError> {
    let state = AppState::from_manager(manager.clone(), data_dir.join("configs"))
        .await
        .map_err(|e| PluginError::fatal(e.to_string()))?;
    let plugins = state.registry().plugins().len();
    // Bind first, so a busy port fails before any URL is printed.
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        PluginError::fatal(format!(
            "cannot listen on {addr}: {e} (another program uses it? choose one with --addr)"
        ))
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    eprintln!("cjm: settings page for {plugins} plugin(s) on http://{bound}/ (Ctrl-C to stop)");
    if !bound.ip().is_loopback() {
        eprintln!(
            "cjm: open it once as http://HOST:{}/?token=TOKEN (the token in --token-file)",
            bound.port()
        );
    }
    let served = cjm_ui::serve_listener(state, listener, access, async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
    .await;
    manager.unload_all().await;
    served.map_err(|e| PluginError::fatal(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}
