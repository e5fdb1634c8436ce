//! Reading `/proc`: one process's figures, the process tree, memory and CPU of the machine.
//!
//! Every parser takes the file's text, so that tests can feed it hostile input (a command
//! name with spaces and parentheses, truncated lines); the readers only add the file access.

use std::collections::{HashMap, HashSet, VecDeque};

/// One process's figures from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// The state letter: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Parent pid.
    pub ppid: u32,
    /// Process group.
    pub pgrp: u32,
    /// Session.
    pub session: u32,
    /// User CPU time, in clock ticks.
    pub utime: u64,
    /// System CPU time, in clock ticks.
    pub stime: u64,
    /// User CPU time of reaped children, in clock ticks.
    pub cutime: u64,
    /// System CPU time of reaped children, in clock ticks.
    pub cstime: u64,
    /// Threads.
    pub threads: u32,
    /// Resident set size, in pages.
    pub rss_pages: u64,
}

impl ProcStat {
    /// User plus system CPU time in clock ticks (not counting reaped children).
    pub fn cpu_ticks(&self) -> u64 {
        self.utime.saturating_add(self.stime)
    }

    /// True unless the process is a zombie or dead (`Z`, `X`, `x`).
    pub fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/<pid>/stat`; `None` if it is malformed.
///
/// The command name (field 2) is in parentheses and may itself contain spaces and
/// parentheses, so the fields after it are found from the *last* `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    // Index 0 here is field 3 of proc(5) (state).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| -> Option<u64> { f.get(field.checked_sub(3)?)?.parse().ok() };
    let small = |field: usize| -> Option<u32> { u32::try_from(num(field)?).ok() };
    let state = f.first()?;
    let mut chars = state.chars();
    let letter = chars.next()?;
    if chars.next().is_some() {
        return None;
    }
    Some(ProcStat {
        state: letter,
        ppid: small(4)?,
        pgrp: small(5)?,
        session: small(6)?,
        utime: num(14)?,
        stime: num(15)?,
        cutime: num(16)?,
        cstime: num(17)?,
        threads: small(20)?,
        rss_pages: num(24)?,
    })
}

/// Reads `/proc/<pid>/stat`; `None` if the process is gone.
pub fn stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// True if `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.is_running())
}

/// Every process in `/proc` with its figures (one scan).
pub fn all_stats() -> HashMap<u32, ProcStat> {
    pids().filter_map(|pid| Some((pid, stat(pid)?))).collect()
}

/// The pids listed in `/proc` (nothing if it cannot be read).
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
}

/// `(process group, session)` of `pid` by two system calls, or `None` once it is gone. Much
/// cheaper than reading its `stat` (an open, a read of 52 fields the kernel formats, a close:
/// 4–12 µs a process on the development VM), which is what makes the scans for a group's or
/// a session's members cheap.
fn group_and_session(pid: u32) -> Option<(u32, u32)> {
    let pid = libc::pid_t::try_from(pid).ok().filter(|&p| p > 0)?;
    // SAFETY: getpgid and getsid only read the process table.
    let (g, s) = unsafe { (libc::getpgid(pid), libc::getsid(pid)) };
    Some((u32::try_from(g).ok()?, u32::try_from(s).ok()?))
}

/// Parses a `/proc/<pid>/task/<tid>/children` file: pids separated by spaces.
pub fn parse_children(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .filter_map(|s| s.parse::<u32>().ok())
        .collect()
}

/// The children of `pid` from `/proc/<pid>/task/*/children`; `None` when the kernel lacks
/// that file (`CONFIG_PROC_CHILDREN`) or the process is gone.
pub fn children_of(pid: u32) -> Option<Vec<u32>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut kids = Vec::new();
    let mut any = false;
    for t in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(t.path().join("children")) else {
            continue;
        };
        any = true;
        kids.extend(parse_children(&text));
    }
    any.then_some(kids)
}

/// Every descendant of `root` by parent link, breadth first (not `root` itself). Uses the
/// `children` files where the kernel has them, else one scan of `/proc`. Pid 0 is not a
/// process (it would make `init` and every process a "descendant"): it has none.
pub fn descendants(root: u32) -> Vec<u32> {
    if root == 0 {
        return Vec::new();
    }
    if children_of(root).is_none() {
        if !process_exists(root) {
            // Gone: its children were re-parented, it has no descendants by parent link. (A
            // scan here made every sweep after a worker's exit read all of `/proc`.)
            return Vec::new();
        }
        let stats = all_stats();
        return descendants_in(&children_map(&stats), root);
    }
    let mut out = Vec::new();
    let mut seen = HashSet::from([root]);
    let mut queue = VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        for k in children_of(pid).unwrap_or_default() {
            if seen.insert(k) {
                out.push(k);
                queue.push_back(k);
            }
        }
    }
    out
}

/// Parent pid → children, from one scan.
pub fn children_map(stats: &HashMap<u32, ProcStat>) -> HashMap<u32, Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, s) in stats {
        children.entry(s.ppid).or_default().push(pid);
    }
    children
}

/// The descendants of `root` in a parent → children map, breadth first (cycle-safe).
pub fn descendants_in(children: &HashMap<u32, Vec<u32>>, root: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut seen = HashSet::from([root]);
    let mut queue = VecDeque::from([root]);
    while let Some(p) = queue.pop_front() {
        for &c in children.get(&p).into_iter().flatten() {
            if seen.insert(c) {
                out.push(c);
                queue.push_back(c);
            }
        }
    }
    out
}

/// Every live process that belongs to the worker `root`: its descendants by parent link, plus
/// any process still in its session or process group (which catches descendants whose parent
/// died and that were re-parented). Sorted; excludes `root` itself and zombies.
pub fn subtree(root: u32) -> Vec<u32> {
    if root == 0 {
        return Vec::new();
    }
    // The descendants from the `children` files; the session and group members by system
    // call; only the few found have their `stat` read (for the zombie check). The same answer
    // as `subtrees`, without reading every process's `stat`.
    let mut seen: HashSet<u32> = descendants(root).into_iter().collect();
    seen.extend(pids().filter(|&p| {
        p != root && group_and_session(p).is_some_and(|(g, s)| g == root || s == root)
    }));
    let mut out: Vec<u32> = seen
        .into_iter()
        .filter(|&p| stat(p).is_some_and(|s| s.is_running()))
        .collect();
    out.sort_unstable();
    out
}

/// [`subtree`] of each of `roots`, from one scan of `/proc`.
pub fn subtrees(roots: &[u32]) -> HashMap<u32, Vec<u32>> {
    if roots.is_empty() {
        return HashMap::new();
    }
    let stats = all_stats();
    let children = children_map(&stats);
    roots
        .iter()
        .map(|&root| (root, subtree_in(&stats, &children, root)))
        .collect()
}

/// [`subtree`] over a given scan.
pub fn subtree_in(
    stats: &HashMap<u32, ProcStat>,
    children: &HashMap<u32, Vec<u32>>,
    root: u32,
) -> Vec<u32> {
    let mut seen: HashSet<u32> = descendants_in(children, root).into_iter().collect();
    for (&pid, s) in stats {
        if pid != root && (s.session == root || s.pgrp == root) {
            seen.insert(pid);
        }
    }
    let mut out: Vec<u32> = seen
        .into_iter()
        .filter(|p| stats.get(p).is_some_and(ProcStat::is_running))
        .collect();
    out.sort_unstable();
    out
}

/// The members of process group `pgid`, zombies included (one listing of `/proc`, a system
/// call per process).
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut out: Vec<u32> = pids()
        .filter(|&p| group_and_session(p).is_some_and(|(g, _)| g == pgid))
        .collect();
    out.sort_unstable();
    out
}

/// Resident bytes and CPU ticks (user + system) of `pids` together.
pub fn usage(pids: &[u32]) -> (u64, u64) {
    let page = page_size();
    pids.iter()
        .filter_map(|&p| stat(p))
        .fold((0u64, 0u64), |(rss, cpu), s| {
            (
                rss.saturating_add(s.rss_pages.saturating_mul(page)),
                cpu.saturating_add(s.cpu_ticks()),
            )
        })
}

/// The time a thread has run on a CPU, in nanoseconds, from the text of its
/// `/proc/<pid>/task/<tid>/schedstat` (the first of its three numbers).
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The CPU time of every thread of `pid` together, in nanoseconds, from each thread's
/// `schedstat`: finer than [`usage`]'s clock ticks (10 ms), for measuring short spells.
/// Threads that ended are not counted. `None` if the process is gone or the kernel keeps no
/// such figures.
pub fn cpu_time_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    let mut any = false;
    for t in tasks.flatten() {
        let text = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        if let Some(ns) = parse_schedstat(&text) {
            total = total.saturating_add(ns);
            any = true;
        }
    }
    any.then_some(total)
}

/// The number on a `/proc` line of the form `Name:   123 kB` (`meminfo`, `status`, `smaps`),
/// if `line` is that field's.
pub(crate) fn kb_field(line: &str, name: &str) -> Option<u64> {
    line.strip_prefix(name)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `(MemTotal, MemAvailable)` in kB from the text of `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| text.lines().find_map(|l| kb_field(l, name));
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// `(MemTotal, MemAvailable)` from `/proc/meminfo`, in kB; `None` if unreadable.
pub fn meminfo_kb() -> Option<(u64, u64)> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// `(busy, total)` CPU time over all cores since boot, in clock ticks, from the text of
/// `/proc/stat` (busy excludes idle and iowait; guest time is already in user).
pub fn parse_cpu_times(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    // user nice system idle iowait irq softirq steal.
    let total = v.iter().fold(0u64, |a, &b| a.saturating_add(b));
    let idle = v[3].saturating_add(v[4]);
    Some((total.saturating_sub(idle), total))
}

/// `(busy, total)` CPU ticks from `/proc/stat`; `None` if unreadable.
pub fn cpu_times() -> Option<(u64, u64)> {
    parse_cpu_times(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The memory page size in bytes (4096 if unknown).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).ok().filter(|p| *p > 0).unwrap_or(4096)
}

/// How many CPUs this process may run on (its affinity mask), or `None` if unknown. One system
/// call: unlike `std::thread::available_parallelism`, it does not read the cgroup's CPU quota
/// (`/proc/self/cgroup`, `/proc/self/mountinfo` and the quota files, about 0.15 ms at a worker's
/// start), which can only lower this number.
pub fn affinity_cpus() -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most
    // `size_of::<cpu_set_t>()` bytes into it, and CPU_COUNT only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        usize::try_from(libc::CPU_COUNT(&set))
            .ok()
            .filter(|&n| n > 0)
    }
}

/// Clock ticks per second, the unit of the CPU times above (100 if unknown).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// The real user id of this process.
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// This process's parent pid.
pub fn parent_pid() -> u32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    let ppid = unsafe { libc::getppid() };
    u32::try_from(ppid).unwrap_or(0)
}

/// This process's process group.
pub fn process_group() -> u32 {
    // SAFETY: getpgrp has no preconditions and cannot fail.
    let g = unsafe { libc::getpgrp() };
    u32::try_from(g).unwrap_or(0)
}

/// True when a process `pid` exists (possibly as a zombie), even one we may not signal.
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission checks.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_gives_its_first_number() {
        assert_eq!(parse_schedstat("367240700 830365 44\n"), Some(367_240_700));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn a_busy_process_is_seen_running() {
        // A one-thread child that spins: its figure can only grow (a multi-threaded process's
        // sum drops when a thread ends, as this test binary's do). The kernel adds a running
        // thread's time at its ticks and switches: read until it moves, at most 10 s.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let first = cpu_time_ns(pid).unwrap();
        let start = std::time::Instant::now();
        let mut later = first;
        while later == first && start.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::yield_now();
            later = cpu_time_ns(pid).unwrap_or(first);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(later > first, "{first} -> {later}");
        assert_eq!(cpu_time_ns(u32::MAX), None);
    }

    const ODD: &str = "42 (a) b (c)) S 1 40 41 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 5 0 \
                       1000 10000000 300 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0";

    #[test]
    fn a_command_name_with_spaces_and_parentheses_parses() {
        let s = parse_stat(ODD).unwrap();
        assert_eq!(
            s,
            ProcStat {
                state: 'S',
                ppid: 1,
                pgrp: 40,
                session: 41,
                utime: 250,
                stime: 50,
                cutime: 7,
                cstime: 3,
                threads: 5,
                rss_pages: 300,
            }
        );
        assert_eq!(s.cpu_ticks(), 300);
        assert!(s.is_running());
        // A name that looks like fields: `) Z 9 9 9 ...` inside the parentheses.
        let tricky = "7 () Z 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9) R 2 3 4 0 -1 0 0 0 0 0 1 2 3 4 \
                      20 0 1 0 5 6 7";
        let s = parse_stat(tricky).unwrap();
        assert_eq!((s.state, s.ppid, s.pgrp, s.session), ('R', 2, 3, 4));
        assert_eq!((s.utime, s.stime, s.threads, s.rss_pages), (1, 2, 1, 7));
    }

    #[test]
    fn hostile_stat_text_is_rejected_not_panicked_on() {
        for bad in [
            "",
            "garbage",
            ")",
            "1 (x)",
            "1 (x) S",
            "1 (x) SS 1 2 3",
            "1 (x) S -1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22",
            "1 (x) S 1 2 3 4 5 6 7 8 9 10 abc 12 13 14 15 16 17 18 19 20 21 22",
            "1 (x) S 99999999999 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22",
            "1 (\u{1F600}) \u{1F600} 1",
        ] {
            assert_eq!(parse_stat(bad), None, "{bad:?}");
        }
        let zombie = ODD.replacen(") S ", ") Z ", 1);
        assert!(!parse_stat(&zombie).unwrap().is_running());
    }

    #[test]
    fn meminfo_cpu_and_children_parse() {
        let mem = "MemTotal:       16318480 kB\nMemFree:  1 kB\nMemAvailable:   8000000 kB\n";
        assert_eq!(parse_meminfo(mem), Some((16_318_480, 8_000_000)));
        assert_eq!(parse_meminfo("MemTotal: x kB\nMemAvailable: 1 kB"), None);
        assert_eq!(parse_meminfo("MemAvailable: 1 kB"), None);
        let cpu = "cpu  10 20 30 400 50 6 7 8 9 10\ncpu0 1 2 3 4 5 6 7 8\n";
        assert_eq!(parse_cpu_times(cpu), Some((81, 531)));
        assert_eq!(parse_cpu_times("cpu  1 2 x 4 5"), None);
        assert_eq!(parse_cpu_times("cpu0 1 2 3 4 5"), None);
        assert_eq!(
            parse_cpu_times("cpu  18446744073709551615 1 1 0 0"),
            Some((u64::MAX, u64::MAX))
        );
        assert_eq!(parse_children("12 13  x 14\n"), vec![12, 13, 14]);
    }

    /// Starts `sh` running `script`, which must print one line of pids; returns the shell and them.
    fn shell(script: &str) -> (std::process::Child, Vec<u32>) {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", script])
            .stdout(std::process::Stdio::piped());
        // Its own session and group, as a worker has.
        crate::child::prepare(
            &mut cmd,
            crate::child::ChildSetup {
                new_session: true,
                ..Default::default()
            },
        );
        let mut c = cmd.spawn().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        (c, parse_children(&line))
    }

    #[test]
    fn subtree_walks_find_children_grandchildren_and_setsid_leftovers() {
        // A child, a grandchild, and (in the same process group, re-parented) an orphan.
        let (mut sh, pids) = shell(
            "sleep 100 & a=$!; sh -c 'sleep 100 & echo $!; wait' > /tmp/cjm-sys-gc-$$ & b=$!; \
             (sleep 100 & echo $! > /tmp/cjm-sys-orphan-$$) ; \
             while [ ! -s /tmp/cjm-sys-gc-$$ ] || [ ! -s /tmp/cjm-sys-orphan-$$ ]; do :; done; \
             g=$(cat /tmp/cjm-sys-gc-$$); o=$(cat /tmp/cjm-sys-orphan-$$); \
             rm -f /tmp/cjm-sys-gc-$$ /tmp/cjm-sys-orphan-$$; echo $a $b $g $o; wait",
        );
        let root = sh.id();
        assert_eq!(pids.len(), 4, "{pids:?}");
        let (child, inner_sh, grandchild, orphan) = (pids[0], pids[1], pids[2], pids[3]);
        let desc = descendants(root);
        for p in [child, inner_sh, grandchild] {
            assert!(desc.contains(&p), "{p} not in {desc:?}");
        }
        // The orphan's parent exited: not a descendant, but still in the shell's group.
        assert!(!desc.contains(&orphan) || stat(orphan).is_some_and(|s| s.ppid != root));
        let tree = subtree(root);
        for p in [child, inner_sh, grandchild, orphan] {
            assert!(tree.contains(&p), "{p} not in {tree:?}");
        }
        assert!(!tree.contains(&root));
        assert_eq!(subtrees(&[root])[&root], tree);
        let members = group_members(root);
        assert!(members.contains(&orphan) && members.contains(&root));
        // The same as a scan of every process's `stat`.
        let mut scanned: Vec<u32> = all_stats()
            .into_iter()
            .filter(|(_, s)| s.pgrp == root)
            .map(|(p, _)| p)
            .collect();
        scanned.sort_unstable();
        assert_eq!(members, scanned);
        let (rss, _) = usage(&tree);
        assert!(rss > 0);
        crate::signal::terminate(&tree, std::time::Duration::from_secs(2), false);
        crate::signal::kill(root, crate::signal::SIGKILL);
        sh.wait().unwrap();
        // Reaped: nothing descends from it by parent link any more.
        assert_eq!(descendants(root), Vec::<u32>::new());
        // Death of a non-child has no event: a bounded poll.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while tree.iter().any(|&p| is_alive(p)) && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(tree.iter().all(|&p| !is_alive(p)), "{tree:?}");
    }

    #[test]
    fn own_process_reads() {
        let me = std::process::id();
        let s = stat(me).unwrap();
        assert!(s.rss_pages > 0 && s.threads >= 1 && s.is_running());
        assert!(is_alive(me) && process_exists(me));
        assert!(!descendants(me).contains(&me));
        assert!(meminfo_kb().is_some_and(|(t, a)| t >= a && t > 0));
        assert!(cpu_times().is_some_and(|(b, t)| t >= b && t > 0));
        assert!(page_size() >= 4096 && clock_ticks() > 0);
        // The quota std reads can only lower the affinity count.
        let cpus = affinity_cpus().unwrap();
        let allowed = std::thread::available_parallelism().unwrap().get();
        assert!(cpus >= allowed, "{cpus} < {allowed}");
        assert_eq!(parent_pid(), s.ppid);
        assert_eq!(process_group(), s.pgrp);
        assert!(!process_exists(0) && !process_exists(u32::MAX));
    }
}
