//! Unmapping the resident code pages of an idle process: its program's and its shared
//! libraries'.
//!
//! Code and read-only data are mapped from their files. The kernel maps more of them than the
//! code touches: each fault also maps the neighbouring pages already in the page cache
//! ("fault-around", 64 KiB by default). A worker that has served a few calls thus has most of
//! its 6–7 MiB of program code resident, though an idle worker runs none of it.
//!
//! [`release`] drops the page-table entries (`MADV_DONTNEED`) of the mappings that are
//! private, not writable, hold no copied-on-write page, and belong to a file the process maps
//! executable somewhere (its program and its libraries: a data file mapped read-only, a
//! model's weights say, is never touched, as mapping it again could cost seconds). Nothing is
//! lost: the pages stay in the page cache, shared with every other process using the file, and
//! the next access maps them again from there (a minor fault per 64 KiB touched, no disk read
//! while the cache holds them). Mappings with an anonymous page are left alone: they hold
//! relocated data (`RELRO`) or a debugger's breakpoint, which the file does not have. And only
//! mappings inside objects loaded at start ([`LoadedCode`]) are released: those are never
//! unloaded, so a range read from `smaps` still maps the same file when it is released.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader};

use crate::proc::kb_field;

/// One mapping that [`release`] would unmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// Its resident bytes when read.
    pub rss: u64,
}

/// One mapping as `smaps` describes it.
#[derive(Debug)]
struct Mapping {
    region: Region,
    /// `major:minor` and inode of the file mapped (inode 0: none).
    file: (String, u64),
    private_read_only: bool,
    executable: bool,
    anon: Option<u64>,
}

/// The mappings in `smaps` (`/proc/<pid>/smaps`, read a line at a time) that can be unmapped without
/// losing data: private, not writable, with no anonymous page and something resident, of a
/// file the process maps executable somewhere (its program and its shared libraries; a data
/// file a plugin maps, a model say, is never touched). Lines it does not understand are
/// skipped; a mapping whose `Anonymous:` line is missing is not returned.
pub fn parse_releasable(smaps: impl BufRead) -> Vec<Region> {
    // Only file mappings are kept while reading: a process may have many thousands of
    // mappings, and `smaps` about twenty lines for each, so it is read a line at a time.
    let mut files: Vec<Mapping> = Vec::new();
    let mut current: Option<Mapping> = None;
    for line in smaps.split(b'\n') {
        // A path need not be UTF-8; the fields read here are.
        let Ok(line) = line else { break };
        let line = String::from_utf8_lossy(&line);
        if let Some(m) = header(&line) {
            files.extend(current.take().filter(|c| c.file.1 != 0));
            current = Some(m);
            continue;
        }
        let Some(m) = current.as_mut() else { continue };
        if let Some(kb) = kb_field(&line, "Rss:") {
            m.region.rss = kb.saturating_mul(1024);
        } else if let Some(kb) = kb_field(&line, "Anonymous:") {
            m.anon = Some(kb);
        }
    }
    files.extend(current.take().filter(|c| c.file.1 != 0));
    let code: HashSet<&(String, u64)> = files
        .iter()
        .filter(|m| m.executable)
        .map(|m| &m.file)
        .collect();
    files
        .iter()
        .filter(|m| {
            m.private_read_only && m.anon == Some(0) && m.region.rss > 0 && code.contains(&m.file)
        })
        .map(|m| m.region)
        .collect()
}

/// A mapping's header line; `None` for any other line.
fn header(line: &str) -> Option<Mapping> {
    let mut parts = line.split_ascii_whitespace();
    let (start, end) = parts.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = parts.next()?.as_bytes();
    let _offset = parts.next()?;
    let dev = parts.next()?;
    let inode: u64 = parts.next()?.parse().ok()?;
    if perms.len() != 4 || end <= start {
        return None;
    }
    Some(Mapping {
        region: Region { start, end, rss: 0 },
        file: (dev.to_owned(), inode),
        private_read_only: perms[1] != b'w' && perms[3] == b'p',
        executable: perms[2] == b'x',
        anon: None,
    })
}

/// The address ranges (whole pages) of the segments of loaded objects: the program, and the
/// libraries that were loaded when it was taken.
///
/// Only mappings inside these ranges are ever released. An object loaded at start is never
/// unloaded, so its ranges keep mapping it: a mapping read from `smaps` cannot turn into
/// something else (a library closed, its addresses reused for data) before it is released.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedCode {
    ranges: Vec<(usize, usize)>,
}

impl LoadedCode {
    /// Every object loaded now. Take it before any plugin code runs (worker start), when the
    /// loaded objects are the program and the libraries it was linked with.
    pub fn now() -> Self {
        Self::collect(false)
    }

    /// The program's own segments only: always safe, whenever taken.
    pub fn program() -> Self {
        Self::collect(true)
    }

    /// Whether `r` lies wholly inside one of the ranges.
    pub fn contains(&self, r: &Region) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| lo <= r.start && r.end <= hi)
    }

    fn collect(program_only: bool) -> Self {
        struct Walk {
            program_only: bool,
            page: usize,
            ranges: Vec<(usize, usize)>,
        }
        unsafe extern "C" fn each(
            info: *mut libc::dl_phdr_info,
            _size: libc::size_t,
            data: *mut libc::c_void,
        ) -> libc::c_int {
            // SAFETY: `data` is the `Walk` passed to `dl_iterate_phdr` below, alive and not
            // otherwise borrowed during the walk; `info` is valid for this call, and its
            // `dlpi_phdr` points to `dlpi_phnum` program headers (the loader's contract).
            let (walk, info) = unsafe { (&mut *data.cast::<Walk>(), &*info) };
            if !info.dlpi_phdr.is_null() {
                // SAFETY: as above.
                let phdrs =
                    unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
                for ph in phdrs.iter().filter(|ph| ph.p_type == libc::PT_LOAD) {
                    let lo = (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize);
                    let hi = lo.wrapping_add(ph.p_memsz as usize);
                    let page = walk.page;
                    walk.ranges
                        .push((lo / page * page, hi.div_ceil(page).saturating_mul(page)));
                }
            }
            // The first object is the program: stop there when only it is wanted.
            libc::c_int::from(walk.program_only)
        }
        let mut walk = Walk {
            program_only,
            page: usize::try_from(crate::proc::page_size())
                .unwrap_or(4096)
                .max(1),
            ranges: Vec::new(),
        };
        // SAFETY: `each` only reads what the loader hands it and writes to `walk`, which
        // outlives the call; it does not unwind.
        unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut walk).cast()) };
        Self {
            ranges: walk.ranges,
        }
    }
}

/// Unmaps the resident pages of this process's program and libraries that can be had again
/// from their files and lie within `within` (see the [module docs](self)). Returns the
/// resident bytes released.
pub fn release(within: &LoadedCode) -> io::Result<u64> {
    let smaps = BufReader::new(std::fs::File::open("/proc/self/smaps")?);
    let mut released = 0;
    for r in parse_releasable(smaps)
        .into_iter()
        .filter(|r| within.contains(r))
    {
        // SAFETY: the range is one whole mapping of this process, as `smaps` listed it: a
        // private, read-only mapping of a code file with no anonymous (copied) page, inside
        // an object that was loaded at start and is never unloaded, so the range still maps
        // it. Its contents are the file's, so dropping its page-table entries loses nothing;
        // any thread touching it next faults the same bytes back in from the page cache. No
        // Rust reference can observe a difference.
        let rc = unsafe {
            libc::madvise(
                r.start as *mut libc::c_void,
                r.end - r.start,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        released += r.rss;
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55a4058e7000-55a405f57000 r-xp 002b9000 fd:01 1234 /opt/w/echo
Size:               6592 kB
Rss:                5304 kB
Anonymous:             0 kB
55a405f57000-55a405fb8000 r--p 00927000 fd:01 1234 /opt/w/echo
Rss:                 388 kB
Anonymous:           388 kB
55a405fb8000-55a405fbb000 rw-p 00988000 fd:01 1234 /opt/w/echo
Rss:                  12 kB
Anonymous:            12 kB
55a40562e000-55a4058e7000 r--p 00000000 fd:01 1234 /opt/w/echo
Rss:                1224 kB
Anonymous:             0 kB
7f0012248000-7f001239e000 r-xp 00026000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 980 kB
Anonymous:             0 kB
7f0011000000-7f0011800000 r--p 00000000 fd:01 555 /models/weights.bin
Rss:                8192 kB
Anonymous:             0 kB
7f0012000000-7f0012001000 r-xs 00000000 fd:01 1234 /opt/w/echo
Rss:                   4 kB
Anonymous:             0 kB
7f0013000000-7f0013010000 r-xp 00000000 fd:01 1234 /opt/w/echo
Rss:                   0 kB
Anonymous:             0 kB
7f0014000000-7f0014010000 r-xp 00000000 fd:01 1234 /opt/w/echo
Rss:                  64 kB
garbage line
7f0015000000-7f0015001000 r-xp 00000000 00:00 0
Rss:                   4 kB
Anonymous:             0 kB
7f000c000000-7f000c098000 rw-p 00000000 00:00 0
Rss:                 568 kB
Anonymous:           568 kB
";

    #[test]
    fn only_clean_private_read_only_mappings_of_code_files_are_releasable() {
        let got = parse_releasable(SMAPS.as_bytes());
        let region = |start, end, kb: u64| Region {
            start,
            end,
            rss: kb * 1024,
        };
        assert_eq!(
            got,
            vec![
                region(0x55a4058e7000, 0x55a405f57000, 5304),
                region(0x55a40562e000, 0x55a4058e7000, 1224),
                region(0x7f0012248000, 0x7f001239e000, 980),
            ],
            "RELRO and writable data, data files, shared, anonymous, empty and unreadable \
             mappings are kept"
        );
        assert!(parse_releasable(&b""[..]).is_empty());
        let odd_path = b"7f0016000000-7f0016001000 r-xp 00000000 fd:01 77 /opt/\xffw\nRss: 4 kB\nAnonymous: 0 kB\n";
        assert_eq!(
            parse_releasable(&odd_path[..]),
            vec![region(0x7f0016000000, 0x7f0016001000, 4)],
            "a path that is not UTF-8 is read past"
        );
        assert!(parse_releasable("not smaps at all\n\u{0}\n-".as_bytes()).is_empty());
    }

    #[test]
    fn the_program_is_among_the_loaded_objects_and_holds_its_own_code() {
        let (program, all) = (LoadedCode::program(), LoadedCode::now());
        assert!(!program.ranges.is_empty());
        assert!(
            all.ranges.len() > program.ranges.len(),
            "libc is loaded too"
        );
        assert!(program.ranges.iter().all(|r| all.ranges.contains(r)));
        let here = the_program_is_among_the_loaded_objects_and_holds_its_own_code as fn() as usize;
        let one_page = Region {
            start: here & !4095,
            end: (here & !4095) + 4096,
            rss: 0,
        };
        assert!(program.contains(&one_page));
        assert!(!LoadedCode::default().contains(&one_page));
        let wild = Region {
            start: 0x10,
            end: 0x20,
            rss: 0,
        };
        assert!(!all.contains(&wild));
    }

    fn rss_file_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
        kb_field(line, "RssFile:").unwrap()
    }

    #[test]
    fn releasing_unmaps_the_programs_pages_and_the_program_runs_on() {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let ours = parse_releasable(smaps.as_bytes());
        assert!(
            !ours.is_empty(),
            "this test's own code is mapped from its file"
        );
        assert_eq!(
            release(&LoadedCode::default()).unwrap(),
            0,
            "nothing outside the given objects"
        );
        let before = rss_file_kb();
        let released = release(&LoadedCode::now()).unwrap();
        let after = rss_file_kb();
        assert!(released > 0);
        assert!(
            after < before,
            "RssFile {before} kB before, {after} kB after releasing {released} bytes"
        );
        // The code runs on: it faults back in from the page cache.
        let v: Vec<u64> = (0..1000).map(|i| i * i).collect();
        assert_eq!(v.iter().sum::<u64>(), 332_833_500);
    }
}
