//! # cjm-sys
//!
//! The Linux process plumbing shared by the cjm host (`cjm-host`) and the worker SDK
//! (`cjm-worker-sdk`), in one place so that it is written, reviewed and tested once. `cjm-core`
//! stays free of processes; everything here is about them:
//!
//! - [`proc`]: `/proc` parsing (`stat`, `children`, `meminfo`, CPU times), process-tree walks,
//!   page size, clock ticks, ids. The parsers take text, so hostile input is unit-tested.
//! - [`signal`]: signals to processes and process groups, TERM-then-KILL, exit descriptions.
//! - [`fd`]: handing a listening socket over to a child by number, pidfds.
//! - [`child`]: what happens in a worker between `fork` and `exec` (session, parent-death
//!   signal, inherited descriptor, cgroup, subreaper).
//! - [`clone_into`]: spawning a worker created inside its cgroup (`clone3` with
//!   `CLONE_INTO_CGROUP`), which spares it the kernel's wait on joining one.
//! - [`cgroup`]: cgroup v2 discovery, creation, `cgroup.kill`, waiting until empty, removal.
//! - [`contain`]: the containment design that keeps every worker descendant from outliving
//!   the host (per-worker cgroups plus a watchdog, or a process-group fallback). Its module
//!   docs are the reference for what is guaranteed.
//! - [`oom`]: whether a worker that died by `SIGKILL` was the kernel's OOM killer's victim
//!   (cgroup events, the kernel log, the system's OOM-kill count).
//! - [`blob`]: sealed memfds mapped as `&[u8]` and passed over `SCM_RIGHTS` (zero-copy blobs).
//! - [`shared_blob`]: such blobs as `Bytes`, built in place ([`shared_blob::BlobBuf`]), and the
//!   way back from a `Bytes` to its memfd.
//! - [`bufpool`]: large receive buffers that keep their pages between uses.
//! - [`body_writer`]: JSON bodies written into such buffers once they are large.
//! - [`code_pages`]: an idle process unmapping its program file's resident pages (they stay
//!   in the page cache).
//! - [`blob_channel`]: the socket pair that carries a call's memfds beside its HTTP request.
//! - [`quiet_stream`]: a Unix stream socket that does not wake its reactor each time the peer
//!   reads (watched for reading only; for writability only while a write waits for room).
//! - [`rundir`]: the private runtime directory (0700, checked) and the sweep of dead hosts'.
//!
//! `unsafe` lives only here (each block says why it is sound) and in nothing that takes
//! pointers from callers. Linux is the platform.

#![warn(missing_docs)]
// Library code never unwraps, panics or prints; tests may.
#![cfg_attr(
    not(test),
    warn(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::print_stdout
    )
)]
// The one crate where `unsafe` is allowed (the workspace denies it elsewhere).
#![allow(unsafe_code)]

pub mod blob;
pub mod blob_channel;
pub mod body_writer;
pub mod bufpool;
pub mod cgroup;
pub mod child;
pub mod clone_into;
pub mod code_pages;
pub mod contain;
pub mod fd;
pub mod oom;
pub mod proc;
pub mod quiet_stream;
pub mod rundir;
pub mod shared_blob;
pub mod signal;
