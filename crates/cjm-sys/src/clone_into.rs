//! Spawning a worker created inside its cgroup: `clone3` with `CLONE_INTO_CGROUP`.
//!
//! A child that joins its cgroup by writing `cgroup.procs` makes the kernel wait for an RCU
//! grace period, milliseconds, unless another join happened just before (the bench's
//! `cold_start_spaced_s`). A child created inside the cgroup waits for nothing.
//!
//! [`spawn`] is `std::process::Command::spawn` for the commands the host builds: the program
//! (searched in the child's `PATH` when it has no `/`), the arguments, the environment changes
//! and the working directory of a [`Command`]; standard input from `/dev/null`, standard
//! output and error as pipes; [`ChildSetup`] in the child. Where the kernel has no `clone3` or
//! no `CLONE_INTO_CGROUP`, it answers [`io::ErrorKind::Unsupported`], and the caller spawns
//! the usual way.
//!
//! On x86-64 the child shares the host's memory until its `exec` (`CLONE_VM | CLONE_VFORK`, on
//! a stack of its own, the calling thread waiting), as `posix_spawn` does, so a start does not
//! grow with the host: a `fork` copies every page table and marks every page copy-on-write, and
//! `exec` then tears that copy down (a host holding 1 GiB started a worker in 25–38 ms so,
//! 4.0–4.8 ms now; `cold_start_big_host_s` in the bench). Signals are blocked in the calling
//! thread meanwhile, and the child sets every handled signal back to its default before it
//! unblocks them, so no handler of the host runs on the host's memory in the child.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};

use crate::child::ChildSetup;

/// `CLONE_INTO_CGROUP` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// A child [`spawn`] started.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid.
    pub pid: u32,
    /// The read end of its standard output.
    pub stdout: OwnedFd,
    /// The read end of its standard error.
    pub stderr: OwnedFd,
}

/// Everything the child needs, built before the clone: the child allocates nothing.
struct Prepared {
    /// Where to try `execve`, in order.
    paths: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    dir: Option<CString>,
}

fn c_string(s: &OsStr, what: &str) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} `{}` contains a NUL byte", s.to_string_lossy()),
        )
    })
}

fn prepare(cmd: &Command) -> io::Result<Prepared> {
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => env.insert(k.to_owned(), v.to_owned()),
            None => env.remove(k),
        };
    }
    let envp = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            c_string(&kv, "the environment entry")
        })
        .collect::<io::Result<Vec<_>>>()?;
    let program = cmd.get_program();
    let mut argv = vec![c_string(program, "the program")?];
    for a in cmd.get_args() {
        argv.push(c_string(a, "the argument")?);
    }
    let paths = if program.as_bytes().contains(&b'/') {
        vec![c_string(program, "the program")?]
    } else {
        let search = env
            .get(OsStr::new("PATH"))
            .cloned()
            .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
        std::env::split_paths(&search)
            .map(|d| c_string(d.join(program).as_os_str(), "the program path"))
            .collect::<io::Result<Vec<_>>>()?
    };
    let dir = cmd
        .get_current_dir()
        .map(|d| c_string(d.as_os_str(), "the working directory"))
        .transpose()?;
    Ok(Prepared {
        paths,
        argv,
        envp,
        dir,
    })
}

fn null_terminated(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two descriptors for the kernel to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fd`, moved to a number above 2 if it is one of them (a host started with its standard
/// streams closed): the child's `dup2` onto 0, 1 and 2 must not overwrite its own sources.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: duplicating a descriptor we own; the new one is owned by nobody else.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `moved` was just created.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// Spawns `cmd` (see the module docs for what of it counts) with `setup`, created inside the
/// cgroup whose directory `cgroup_dir` is open. `setup.cgroup_procs` must be `None`: the
/// child is in its cgroup from its first instruction.
///
/// The parent-death signal fires when the calling *thread* ends, as with `fork`.
pub fn spawn(cmd: &Command, setup: ChildSetup, cgroup_dir: BorrowedFd<'_>) -> io::Result<Spawned> {
    if setup.cgroup_procs.is_some() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a child created in its cgroup does not join one",
        ));
    }
    let p = prepare(cmd)?;
    let argv = null_terminated(&p.argv);
    let envp = null_terminated(&p.envp);
    let null = above_stdio(std::fs::File::open("/dev/null")?.into())?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    let (out_w, err_w, report_w) = (
        above_stdio(out_w)?,
        above_stdio(err_w)?,
        above_stdio(report_w)?,
    );
    let child = Child {
        p: &p,
        argv: &argv,
        envp: &envp,
        stdio: [null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
        report: report_w.as_raw_fd(),
        setup: &setup,
        parent: std::process::id(),
    };
    let pid = match clone_child(&child, cgroup_dir) {
        Ok(pid) => pid,
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP) => {
                    io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("clone3 with CLONE_INTO_CGROUP: {e}"),
                    )
                }
                _ => e,
            })
        }
    };
    drop((null, out_w, err_w, report_w));
    // The child closes its end by `exec` (close-on-exec) or writes why it could not.
    let mut errno = [0u8; 4];
    let mut got = 0;
    while got < errno.len() {
        // SAFETY: reading into the unfilled rest of `errno`.
        let n = unsafe {
            libc::read(
                report_r.as_raw_fd(),
                errno[got..].as_mut_ptr().cast(),
                errno.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    if got == 0 {
        return Ok(Spawned {
            pid: pid as u32,
            stdout: out_r,
            stderr: err_r,
        });
    }
    let _ = wait(pid as u32);
    let e = io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
    Err(io::Error::new(
        e.kind(),
        format!("cannot run `{}`: {e}", cmd.get_program().to_string_lossy()),
    ))
}

/// What the child needs, all prepared by the parent: the child allocates nothing.
struct Child<'a> {
    p: &'a Prepared,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    stdio: [RawFd; 3],
    report: RawFd,
    setup: &'a ChildSetup,
    parent: u32,
}

/// Creates the child in the cgroup whose directory is `cgroup_dir`, running [`exec_child`];
/// its pid.
///
/// On x86-64 the child shares this address space until its `exec` (`CLONE_VM`), on a stack
/// of its own, while this thread waits (`CLONE_VFORK`), as `posix_spawn` does: nothing of the
/// host is copied, so a start costs the same in a host of 10 MB and one of 10 GB (a `fork`
/// copies every page table and marks every page copy-on-write, then `exec` tears it all
/// down). Elsewhere the child gets a copy of the address space, like `fork`.
fn clone_child(child: &Child<'_>, cgroup_dir: BorrowedFd<'_>) -> io::Result<libc::pid_t> {
    #[cfg(target_arch = "x86_64")]
    {
        shared::clone(child, cgroup_dir)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: cgroup_dir.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: `args` is a valid `clone_args` of the size passed; without `CLONE_VM` the
        // child gets a copy of this address space, like `fork`.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                std::ptr::addr_of!(args),
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if pid == 0 {
            // SAFETY: this is the child, with its own copy of the memory `child` points into;
            // `exec_child` calls only async-signal-safe functions and never returns.
            unsafe { exec_child(child) }
        }
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(pid as libc::pid_t)
    }
}

/// The child sharing the parent's memory (x86-64).
#[cfg(target_arch = "x86_64")]
mod shared {
    use super::*;

    /// The child's stack: what `exec_child` needs, several times over, above a guard page.
    const STACK: usize = 64 * 1024;

    /// A stack mapping with its lowest page inaccessible.
    struct Stack {
        ptr: *mut libc::c_void,
        len: usize,
    }

    impl Stack {
        fn new() -> io::Result<Self> {
            let guard = crate::proc::page_size() as usize;
            let len = STACK + guard;
            // SAFETY: a fresh private anonymous mapping; the kernel picks the address.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                    -1,
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let stack = Self { ptr, len };
            // SAFETY: the first page of the mapping made above.
            if unsafe { libc::mprotect(ptr, guard, libc::PROT_NONE) } < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(stack)
        }
    }

    impl Drop for Stack {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`, unmapped once, after the child left it.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }

    /// Blocks every signal in this thread until dropped: a handler of the host must not run
    /// in the child, on the host's memory, before the child has reset it.
    struct Blocked(libc::sigset_t);

    impl Blocked {
        fn all() -> Self {
            // SAFETY: plain signal-set calls on sets owned here.
            unsafe {
                let mut all: libc::sigset_t = std::mem::zeroed();
                let mut old: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
                Self(old)
            }
        }
    }

    impl Drop for Blocked {
        fn drop(&mut self) {
            // SAFETY: restores the mask saved in `all`.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
        }
    }

    pub(super) fn clone(child: &Child<'_>, cgroup_dir: BorrowedFd<'_>) -> io::Result<libc::pid_t> {
        let stack = Stack::new()?;
        let args = CloneArgs {
            flags: CLONE_INTO_CGROUP | libc::CLONE_VM as u64 | libc::CLONE_VFORK as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.ptr as u64,
            stack_size: stack.len as u64,
            cgroup: cgroup_dir.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        let _blocked = Blocked::all();
        let ret: libc::c_long;
        // SAFETY: `clone3` with `args`, a valid `clone_args` of the size passed. The child
        // starts after the `syscall` with `rax` 0 and `rsp` at the top of `stack` (16-byte
        // aligned, so that after the `call` it is aligned as a function expects), and calls
        // `entry(child)`, which never returns; it touches only `child` and that stack. This
        // thread waits until the child has called `execve` or exited (`CLONE_VFORK`), so
        // neither the stack nor anything `child` points to goes away while the child uses
        // it. The parent's path clobbers only `rax` (the result), `rcx` and `r11`.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "mov rdi, r12",
                "call r13",
                "ud2",
                "2:",
                inlateout("rax") libc::SYS_clone3 => ret,
                in("rdi") std::ptr::addr_of!(args),
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") std::ptr::from_ref(child),
                in("r13") entry as unsafe extern "C" fn(*const Child<'_>) -> !,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        drop(stack);
        if ret < 0 {
            // The raw syscall answers `-errno`.
            return Err(io::Error::from_raw_os_error((-ret) as i32));
        }
        Ok(ret as libc::pid_t)
    }

    /// The child's first function, on its own stack.
    ///
    /// # Safety
    /// Only as the entry of a child made by [`clone`], with `child` valid.
    unsafe extern "C" fn entry(child: *const Child<'_>) -> ! {
        // Handlers of the host would run on its memory: back to the defaults first (the
        // child's handler table is its own copy, as `CLONE_SIGHAND` is not set).
        for sig in 1..=libc::SIGRTMAX() {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
                && old.sa_sigaction != libc::SIG_IGN
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        exec_child(&*child)
    }
}

/// The child's side: standard streams, `setup`, working directory, `execve`; on failure,
/// reports the errno on `report` and exits 127. The signal mask is emptied here.
///
/// # Safety
///
/// Only in a child made by [`clone_child`] (async-signal-safe calls only).
unsafe fn exec_child(child: &Child<'_>) -> ! {
    let Child {
        p,
        argv,
        envp,
        stdio,
        report,
        setup,
        parent,
    } = *child;
    let fail = |errno: i32| -> ! {
        let b = errno.to_ne_bytes();
        libc::write(report, b.as_ptr().cast(), b.len());
        libc::_exit(127)
    };
    let last = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // What `exec` keeps: an empty signal mask and `SIGPIPE` at its default, as std does.
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    for (target, fd) in stdio.into_iter().enumerate() {
        if libc::dup2(fd, target as RawFd) < 0 {
            fail(last());
        }
    }
    if let Err(e) = crate::child::apply(setup, parent) {
        fail(e.raw_os_error().unwrap_or(libc::EIO));
    }
    if let Some(dir) = &p.dir {
        if libc::chdir(dir.as_ptr()) < 0 {
            fail(last());
        }
    }
    let mut errno = libc::ENOENT;
    for path in &p.paths {
        libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        // Like `execvp`: a candidate that exists but fails says more than "not found".
        let e = last();
        if e != libc::ENOENT && e != libc::ENOTDIR {
            errno = e;
        }
    }
    fail(errno)
}

/// Waits for child `pid` to exit and reaps it.
pub fn wait(pid: u32) -> io::Result<ExitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid place for the kernel to write.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if r >= 0 {
            return Ok(ExitStatus::from_raw(status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::{own_cgroup_dir, Cgroup};
    use std::io::Read;
    use std::os::fd::AsFd;

    fn cgroup(name: &str) -> Option<Cgroup> {
        let own = own_cgroup_dir()?;
        Cgroup::create(
            &own,
            &format!("cjm-clone-into-{}-{name}", std::process::id()),
        )
        .ok()
    }

    #[test]
    fn the_child_starts_inside_its_cgroup_with_the_commands_environment() {
        let Some(cg) = cgroup("a") else {
            eprintln!("no writable cgroup v2 here: the host's tests cover the usual spawn");
            return;
        };
        let dir = std::fs::File::open(cg.path()).unwrap();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "cat /proc/self/cgroup; echo \"$CJM_T\"; pwd; echo oops >&2",
        ])
        .env("CJM_T", "v 1")
        .env_remove("HOME")
        .current_dir("/tmp");
        let setup = ChildSetup {
            new_session: true,
            ..Default::default()
        };
        let s = match spawn(&cmd, setup, dir.as_fd()) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                eprintln!("{e}: the usual spawn is used here");
                return;
            }
            r => r.unwrap(),
        };
        let mut out = String::new();
        std::fs::File::from(s.stdout)
            .read_to_string(&mut out)
            .unwrap();
        let mut err = String::new();
        std::fs::File::from(s.stderr)
            .read_to_string(&mut err)
            .unwrap();
        assert!(wait(s.pid).unwrap().success());
        let name = cg
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("0::") && l.ends_with(&name)),
            "{out}"
        );
        assert!(lines.contains(&"v 1"), "{out}");
        assert_eq!(lines.last(), Some(&"/tmp"), "{out}");
        assert_eq!(err, "oops\n");
        cg.remove().unwrap();
    }

    /// This thread's signal mask.
    fn mask() -> libc::sigset_t {
        // SAFETY: reads the mask into a set owned here.
        unsafe {
            let mut m: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut m);
            m
        }
    }

    #[test]
    fn the_child_starts_with_no_signal_blocked_and_the_callers_mask_is_kept() {
        let Some(cg) = cgroup("c") else {
            return;
        };
        let dir = std::fs::File::open(cg.path()).unwrap();
        // SAFETY: blocks SIGUSR2 in this test's own thread.
        unsafe {
            let mut usr2: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut usr2);
            libc::sigaddset(&mut usr2, libc::SIGUSR2);
            libc::pthread_sigmask(libc::SIG_BLOCK, &usr2, std::ptr::null_mut());
        }
        let before = mask();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "grep SigBlk /proc/self/status"]);
        let s = match spawn(&cmd, ChildSetup::default(), dir.as_fd()) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => return,
            r => r.unwrap(),
        };
        let after = mask();
        // SAFETY: reads membership in sets owned here.
        let (was, is) = unsafe {
            (
                libc::sigismember(&before, libc::SIGUSR2),
                libc::sigismember(&after, libc::SIGUSR2),
            )
        };
        assert_eq!((was, is), (1, 1));
        // SAFETY: as above; every signal but SIGUSR2 was unblocked before and still is.
        assert!((1..32).all(|sig| unsafe {
            libc::sigismember(&after, sig) == libc::sigismember(&before, sig)
        }));
        let mut out = String::new();
        std::fs::File::from(s.stdout)
            .read_to_string(&mut out)
            .unwrap();
        assert!(wait(s.pid).unwrap().success());
        assert_eq!(
            out.split_whitespace().nth(1),
            Some("0000000000000000"),
            "{out}"
        );
        cg.remove().unwrap();
    }

    #[test]
    fn a_program_that_cannot_run_is_an_error_and_leaves_no_child() {
        let Some(cg) = cgroup("b") else {
            return;
        };
        let dir = std::fs::File::open(cg.path()).unwrap();
        let cmd = Command::new("/nonexistent/cjm-no-such-program");
        match spawn(&cmd, ChildSetup::default(), dir.as_fd()) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {}
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
                assert!(e.to_string().contains("cjm-no-such-program"), "{e}");
            }
            Ok(s) => panic!("spawned {}", s.pid),
        }
        assert!(cg.pids().is_empty());
        let bad = Command::new("sh");
        let joined = ChildSetup {
            cgroup_procs: Some(0),
            ..Default::default()
        };
        assert_eq!(
            spawn(&bad, joined, dir.as_fd()).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        cg.remove().unwrap();
    }
}
