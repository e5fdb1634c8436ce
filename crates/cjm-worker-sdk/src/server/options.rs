//! [`Options`]: how a worker serves (limits, authentication, shutdown), set through builder
//! methods only.

use std::time::Duration;

/// Default largest JSON request body: 64 MiB.
pub const DEFAULT_MAX_JSON_BODY: u64 = 64 << 20;
/// Default largest frame request body: 4 GiB.
pub const DEFAULT_MAX_FRAME_BODY: u64 = 4 << 30;
/// Default time in-flight calls get to finish after `SIGTERM` before they are cancelled.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// Default time a worker stays idle after calls before it gives memory back: 1 s.
pub const DEFAULT_IDLE_RELEASE: Duration = Duration::from_secs(1);

/// How a worker serves: limits, authentication, shutdown.
///
/// [`Options::new`] gives the defaults; each builder method sets one thing (the
/// [`main!`](crate::main) macro calls them by name: `main!(W, name = "w", plugin_threads = 4)`).
/// The worker program then fills in what the host passes through the environment
/// ([`runtime::options_from_env`](crate::runtime::options_from_env)). There is no other way to
/// set an option: the fields are private, so the builders' rules (at least one call at once, at
/// least one plugin thread) always hold.
///
/// ```compile_fail
/// let mut o = cjm_worker_sdk::Options::new("p", "1.0.0");
/// o.max_concurrency = 0; // private: use `.max_concurrency(n)`
/// ```
#[derive(Clone)]
pub struct Options {
    /// The plugin's name (default: the crate's name). Used by typed workers.
    pub(crate) name: String,
    /// The plugin's version (default: the crate's version). Used by typed workers.
    pub(crate) version: String,
    /// What the plugin does, for `--describe` (default: the crate's description).
    pub(crate) description: String,
    /// Declared resources, for `--describe`.
    pub(crate) resources: cjm_core::Resources,
    /// Calls that run at once; more wait in a queue. At least 1.
    pub(crate) max_concurrency: u32,
    /// Largest JSON request body, in bytes.
    pub(crate) max_json_body: u64,
    /// Largest frame request body, in bytes.
    pub(crate) max_frame_body: u64,
    /// How long in-flight calls may finish after a shutdown request before they are cancelled.
    pub(crate) shutdown_grace: Duration,
    /// The bearer token every request must carry; `None`: no auth.
    pub(crate) auth_token: Option<String>,
    /// The host's pid: the worker shuts down when that process is gone.
    pub(crate) host_pid: Option<u32>,
    /// Worker threads of the plugin runtime (`None`: `max_concurrency` clamped to 2..=cores).
    pub(crate) plugin_threads: Option<usize>,
    /// How long the worker idles after calls before it gives memory back (`None`: never).
    pub(crate) idle_release: Option<Duration>,
    /// Serve HTTPS with this identity (TCP listeners only).
    pub(crate) tls: Option<crate::runtime::TlsIdentity>,
    /// The blob channel the host handed over (`CJM_BLOB_FD`): blobs travel as memfds.
    pub(crate) blob_channel: Option<std::sync::Arc<cjm_sys::blob_channel::BlobChannel>>,
    /// The calls socket the host handed over (`CJM_CALLS_FD`), served on the plugin runtime.
    pub(crate) calls_listener: Option<std::sync::Arc<std::os::unix::net::UnixListener>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("max_concurrency", &self.max_concurrency)
            .field("max_json_body", &self.max_json_body)
            .field("max_frame_body", &self.max_frame_body)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "<set>"))
            .field("host_pid", &self.host_pid)
            .field("plugin_threads", &self.plugin_threads)
            .field("idle_release", &self.idle_release)
            .field("tls", &self.tls.is_some())
            .field("blob_channel", &self.blob_channel.is_some())
            .field("calls_listener", &self.calls_listener.is_some())
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self::new("unknown", "unknown")
    }
}

impl Options {
    /// Defaults for a plugin called `name` at `version`: one call at once, bodies up to
    /// [`DEFAULT_MAX_JSON_BODY`] / [`DEFAULT_MAX_FRAME_BODY`], [`DEFAULT_SHUTDOWN_GRACE`], no
    /// auth, no host to watch, memory given back after [`DEFAULT_IDLE_RELEASE`] idle.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            resources: cjm_core::Resources::default(),
            max_concurrency: 1,
            max_json_body: DEFAULT_MAX_JSON_BODY,
            max_frame_body: DEFAULT_MAX_FRAME_BODY,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            auth_token: None,
            blob_channel: None,
            calls_listener: None,
            host_pid: None,
            plugin_threads: None,
            idle_release: Some(DEFAULT_IDLE_RELEASE),
            tls: None,
        }
    }

    /// Sets the plugin's name (default: the crate's name). Used by typed workers.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the plugin's version (default: the crate's version). Used by typed workers.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Sets what the plugin does, as `--describe` reports it (`main!` defaults it to the
    /// crate's `description`).
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Declares the resources the plugin needs, as `--describe` reports them (and so as a
    /// manifest written by `cjm manifest` carries them).
    pub fn resources(mut self, resources: cjm_core::Resources) -> Self {
        self.resources = resources;
        self
    }

    /// Sets how many calls run at once (at least 1); more wait in a queue. For a typed worker
    /// [`run_worker`](crate::runtime::run_worker) sets it from
    /// [`Worker::MAX_CONCURRENCY`](crate::Worker::MAX_CONCURRENCY).
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.max_concurrency = n.max(1);
        self
    }

    /// Sets the largest JSON request body, in bytes (default 64 MiB).
    pub fn max_json_body(mut self, bytes: u64) -> Self {
        self.max_json_body = bytes;
        self
    }

    /// Sets the largest frame request body, in bytes (default 4 GiB).
    pub fn max_frame_body(mut self, bytes: u64) -> Self {
        self.max_frame_body = bytes;
        self
    }

    /// Sets how long in-flight calls may finish after a shutdown request before they are
    /// cancelled (default 1.5 s, below the host's 2 s before `SIGKILL`).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Requires `Authorization: Bearer <token>` on every request (`CJM_AUTH_TOKEN`).
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.auth_token = Some(token.into());
        self
    }

    /// Serves HTTPS with `identity` (`--tls-cert` / `--tls-key`); TCP listeners only.
    pub fn tls(mut self, identity: crate::runtime::TlsIdentity) -> Self {
        self.tls = Some(identity);
        self
    }

    /// Passes blobs as sealed memfds over `channel`, the host's end of which made the call
    /// (`CJM_BLOB_FD`; see PROTOCOL.md, "Blobs as memfds"). Adds `blob_memfd` to `/health`.
    pub fn blob_channel(mut self, channel: cjm_sys::blob_channel::BlobChannel) -> Self {
        self.blob_channel = Some(std::sync::Arc::new(channel));
        self
    }

    /// Also serves `listener`, a listening Unix socket, with its connections on the plugin
    /// runtime (`CJM_CALLS_FD`; see PROTOCOL.md, "The calls socket"): a call sent there runs
    /// where it was read, without the hop from the HTTP thread. The main socket keeps serving
    /// every endpoint on the HTTP thread, so `/health`, `/progress`, `/cancel` and `/stats`
    /// still answer while plugin code blocks. Adds `calls_socket` to `/health`.
    pub fn calls_listener(mut self, listener: std::os::unix::net::UnixListener) -> Self {
        self.calls_listener = Some(std::sync::Arc::new(listener));
        self
    }

    /// Shuts the worker down when the process `pid` is gone (`CJM_HOST_PID`).
    pub fn host_pid(mut self, pid: u32) -> Self {
        self.host_pid = Some(pid);
        self
    }

    /// Sets the plugin runtime's worker threads (at least 1; default: the concurrency limit
    /// clamped to 2..=cores).
    pub fn plugin_threads(mut self, n: usize) -> Self {
        self.plugin_threads = Some(n.max(1));
        self
    }

    /// Sets how long the worker stays idle (no call running, none started) after calls before
    /// it gives memory back; `None`: never. Default [`DEFAULT_IDLE_RELEASE`].
    ///
    /// It then returns the allocator's free memory and the large-body buffers it kept, and
    /// unmaps the resident pages of its program and of the libraries loaded with it
    /// ([`cjm_sys::code_pages`]): they stay in the page cache, and the next call maps what it
    /// runs again (a few hundred microseconds once, on a worker that has idled for at least
    /// this long).
    pub fn idle_release(mut self, after: Option<Duration>) -> Self {
        self.idle_release = after;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builders_keep_their_rules() {
        let o = Options::new("p", "1")
            .max_concurrency(0)
            .plugin_threads(0)
            .host_pid(7)
            .auth_token("t");
        assert_eq!(o.max_concurrency, 1);
        assert_eq!(o.plugin_threads, Some(1));
        assert_eq!(o.host_pid, Some(7));
        assert_eq!(o.auth_token.as_deref(), Some("t"));
        assert_eq!(o.idle_release, Some(DEFAULT_IDLE_RELEASE));
        assert_eq!(o.clone().idle_release(None).idle_release, None);
        assert!(
            !format!("{o:?}").contains("\"t\""),
            "the token is not printed"
        );
    }
}
