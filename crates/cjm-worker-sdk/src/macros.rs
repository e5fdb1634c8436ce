//! The [`main!`](crate::main) macro.

/// Makes the worker binary's `main` from a [`Worker`](crate::Worker) value.
///
/// ```text
/// cjm_worker_sdk::main!(MyWorker::default());
/// cjm_worker_sdk::main!(MyWorker::new(), name = "whisper", shutdown_grace = Duration::from_secs(1));
/// ```
///
/// The name, version and description default to the crate's (`CARGO_PKG_NAME`,
/// `CARGO_PKG_VERSION`, `CARGO_PKG_DESCRIPTION`);
/// every `key = value` calls the [`Options`](crate::Options) builder method of that name:
/// `name`, `version`, `description`, `resources`, `max_json_body`, `max_frame_body`, `shutdown_grace`, `plugin_threads`,
/// `idle_release`.
/// The concurrency limit is the worker's [`MAX_CONCURRENCY`](crate::Worker::MAX_CONCURRENCY).
#[macro_export]
macro_rules! main {
    ($worker:expr $(, $option:ident = $value:expr)* $(,)?) => {
        fn main() -> ::std::process::ExitCode {
            let options = $crate::Options::new(
                ::core::env!("CARGO_PKG_NAME"),
                ::core::env!("CARGO_PKG_VERSION"),
            )
            .description(::core::env!("CARGO_PKG_DESCRIPTION"))
            $( .$option($value) )*;
            $crate::runtime::run_worker_with(|| $worker, options)
        }
    };
}
