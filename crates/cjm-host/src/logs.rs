//! Worker output: every line becomes a `tracing` event tagged with the plugin, and is kept in a
//! per-plugin log file with a size cap (`<data_dir>/logs/<name>.log`, rotated once to `.log.1`).
//!
//! Output is bounded whatever a worker writes: a line ends at `\n` or `\r` (progress bars
//! redraw with `\r`; `\r\n` is one line end), a line longer than [`MAX_LINE_BYTES`] is cut
//! there with a [`CUT_MARKER`] and the rest of it is dropped unread into memory, and the log file
//! never grows past its cap (a line is written whole after a rotation, or shortened to fit a cap
//! smaller than one line).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Default size at which a log file is rotated.
pub(crate) const DEFAULT_LOG_CAP: u64 = 8 << 20;

/// Lines kept in memory for error reports.
const RECENT_LINES: usize = 50;

/// The longest line kept (16 KiB); the rest of a longer line is dropped.
pub(crate) const MAX_LINE_BYTES: usize = 16 << 10;

/// Appended to a line cut at [`MAX_LINE_BYTES`].
pub(crate) const CUT_MARKER: &str = " …[line cut at 16 KiB]";

/// Bytes read from a worker's pipe at a time.
const READ_CHUNK: usize = 16 << 10;

/// Splits a byte stream into lines ending at `\n`, `\r` or `\r\n`, holding at most
/// [`MAX_LINE_BYTES`] of the current line: the rest of a longer line is skipped until its end.
#[derive(Debug, Default)]
struct LineSplitter {
    line: Vec<u8>,
    /// The current line was cut; skip until its end.
    skipping: bool,
    /// The last byte seen ended a line with `\r` (so a `\n` right after ends nothing).
    after_cr: bool,
}

impl LineSplitter {
    /// Feeds `bytes`; `emit(line, cut)` receives each complete line (without its end).
    fn push(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        if self.line.capacity() < MAX_LINE_BYTES {
            // Once, so that the buffer never grows past the cap by doubling.
            self.line.reserve_exact(MAX_LINE_BYTES - self.line.len());
        }
        while !bytes.is_empty() {
            if self.after_cr && bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
            self.after_cr = false;
            let end = memchr::memchr2(b'\n', b'\r', bytes);
            let body = &bytes[..end.unwrap_or(bytes.len())];
            if !self.skipping {
                let room = MAX_LINE_BYTES - self.line.len();
                if body.len() > room {
                    self.line.extend_from_slice(&body[..room]);
                    emit(&self.line, true);
                    self.line.clear();
                    self.skipping = true;
                } else {
                    self.line.extend_from_slice(body);
                }
            }
            let Some(end) = end else { return };
            if !self.skipping {
                emit(&self.line, false);
                self.line.clear();
            }
            self.skipping = false;
            self.after_cr = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
        }
    }

    /// Ends the stream: emits an unfinished line.
    fn finish(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        if !self.line.is_empty() {
            emit(&self.line, false);
        }
        self.line = Vec::new();
    }

    /// Bytes of memory the splitter holds.
    fn held(&self) -> usize {
        self.line.capacity()
    }
}

/// One plugin's log: a capped file plus the most recent lines in memory.
#[derive(Debug)]
pub(crate) struct PluginLog {
    name: String,
    path: PathBuf,
    cap: u64,
    inner: Mutex<LogInner>,
}

#[derive(Debug)]
struct LogInner {
    file: Option<File>,
    written: u64,
    recent: VecDeque<String>,
}

impl PluginLog {
    /// A log for plugin `name` in `dir` (created if missing). A directory that cannot be used
    /// leaves only the in-memory tail and the `tracing` events.
    pub(crate) fn open(dir: &Path, name: &str, cap: u64) -> Arc<Self> {
        let path = dir.join(format!("{name}.log"));
        let file = std::fs::create_dir_all(dir)
            .and_then(|_| OpenOptions::new().create(true).append(true).open(&path));
        let (file, written) = match file {
            Ok(f) => {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                (Some(f), len)
            }
            Err(e) => {
                tracing::warn!(plugin = name, path = %path.display(), error = %e, "cannot open the plugin log file");
                (None, 0)
            }
        };
        Arc::new(Self {
            name: name.to_owned(),
            path,
            cap,
            inner: Mutex::new(LogInner {
                file,
                written,
                recent: VecDeque::with_capacity(RECENT_LINES),
            }),
        })
    }

    /// The log file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line (without its newline). The file never exceeds the cap: it is rotated
    /// first when the line would not fit, and a line longer than the cap itself is shortened.
    pub(crate) fn line(&self, line: &str) {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if g.recent.len() == RECENT_LINES {
            g.recent.pop_front();
        }
        g.recent.push_back(line.to_owned());
        let Some(room) = usize::try_from(self.cap)
            .ok()
            .and_then(|c| c.checked_sub(1))
        else {
            return;
        };
        let line = truncate_at_char(line, room);
        if g.written + line.len() as u64 + 1 > self.cap {
            self.rotate(&mut g);
        }
        if let Some(f) = g.file.as_mut() {
            if writeln!(f, "{line}").is_ok() {
                g.written += line.len() as u64 + 1;
            }
        }
    }

    fn rotate(&self, g: &mut LogInner) {
        g.file = None;
        let old = self.path.with_extension("log.1");
        let _ = std::fs::rename(&self.path, &old);
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(f) => {
                g.file = Some(f);
                g.written = 0;
            }
            Err(e) => {
                tracing::warn!(plugin = %self.name, error = %e, "cannot reopen the plugin log file")
            }
        }
    }

    /// The last `n` lines written in this process (at most 50 are kept in memory).
    pub(crate) fn recent(&self, n: usize) -> Vec<String> {
        let g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.recent
            .iter()
            .skip(g.recent.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// Reads `stream` until it closes, logging each line (see the [module docs](self) for how
    /// lines are split and bounded).
    pub(crate) async fn pump(self: Arc<Self>, stream: impl AsyncRead + Unpin, which: &'static str) {
        self.pump_counted(stream, which).await;
    }

    /// [`pump`](Self::pump), returning the most memory its line buffer held.
    async fn pump_counted(&self, mut stream: impl AsyncRead + Unpin, which: &'static str) -> usize {
        let mut splitter = LineSplitter::default();
        let mut chunk = vec![0u8; READ_CHUNK];
        let mut most_held = 0;
        let mut emit = |bytes: &[u8], cut: bool| {
            let text = String::from_utf8_lossy(bytes);
            let text = if cut {
                format!("{text}{CUT_MARKER}")
            } else {
                text.into_owned()
            };
            tracing::info!(target: "cjm::worker", plugin = %self.name, stream = which, "{text}");
            self.line(&text);
        };
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    splitter.push(&chunk[..n], &mut emit);
                    most_held = most_held.max(splitter.held());
                }
            }
        }
        splitter.finish(&mut emit);
        most_held
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The last `n` lines of the log at `path` (and its rotated `.log.1` when the current file has
/// fewer). A missing file gives no lines.
pub(crate) fn tail_file(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let read = |p: &Path| match std::fs::read(p) {
        Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    };
    let current = read(path)?;
    let mut lines: Vec<&str> = current.lines().collect();
    let older;
    if lines.len() < n {
        older = read(&path.with_extension("log.1"))?;
        let mut all: Vec<&str> = older.lines().collect();
        all.extend(lines);
        lines = all;
    }
    Ok(lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| (*s).to_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_rotated_and_tailed() {
        let dir = tempfile::tempdir().unwrap();
        let log = PluginLog::open(dir.path(), "p", 64);
        for i in 0..20 {
            log.line(&format!("line {i}"));
        }
        let tail = tail_file(log.path(), 3).unwrap();
        assert_eq!(tail, ["line 17", "line 18", "line 19"]);
        assert!(dir.path().join("p.log.1").exists(), "rotated at the cap");
        let size = std::fs::metadata(dir.path().join("p.log")).unwrap().len();
        assert!(size <= 64, "{size}");
        assert_eq!(log.recent(2), ["line 18", "line 19"]);
        assert!(tail_file(&dir.path().join("none.log"), 5)
            .unwrap()
            .is_empty());
    }

    fn split(chunks: &[&[u8]]) -> Vec<(String, bool)> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        let mut emit =
            |b: &[u8], cut: bool| out.push((String::from_utf8_lossy(b).into_owned(), cut));
        for c in chunks {
            s.push(c, &mut emit);
        }
        s.finish(&mut emit);
        out
    }

    /// Issue 13 point 5: `\r` ends a line (tqdm redraws), `\r\n` is one end, across chunks too.
    #[test]
    fn carriage_returns_end_lines() {
        let lines = split(&[b"10%|#  \r20%|## \r", b"\n", b"done\r\nlast"]);
        let texts: Vec<&str> = lines.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(texts, ["10%|#  ", "20%|## ", "done", "last"]);
        assert_eq!(split(&[b"a\n\nb\n"]).len(), 3, "empty lines stay");
    }

    #[test]
    fn long_lines_are_cut_once_and_the_rest_skipped() {
        let long = vec![b'x'; MAX_LINE_BYTES * 3 + 5];
        let lines = split(&[&long[..1000], &long[1000..], b"\nnext\n"]);
        assert_eq!(
            lines.len(),
            2,
            "{:?}",
            lines.iter().map(|l| l.0.len()).collect::<Vec<_>>()
        );
        assert_eq!(lines[0].0.len(), MAX_LINE_BYTES);
        assert!(lines[0].1, "marked as cut");
        assert_eq!(lines[1], ("next".to_owned(), false));
        let exact = vec![b'y'; MAX_LINE_BYTES];
        let lines = split(&[&exact, b"\n"]);
        assert_eq!(lines, [(String::from_utf8(exact).unwrap(), false)]);
    }

    /// Issue 13 point 5: 100 MB without a newline used to be kept whole in memory (and written
    /// whole to the log). The splitter's buffer stays at one line's cap, and the file under its
    /// cap.
    #[test]
    fn newline_free_output_is_bounded_in_memory_and_on_disk() {
        let mut s = LineSplitter::default();
        let chunk = vec![b'z'; 1 << 20];
        let mut lines = 0usize;
        for _ in 0..100 {
            s.push(&chunk, &mut |b: &[u8], cut: bool| {
                assert!(cut && b.len() == MAX_LINE_BYTES);
                lines += 1;
            });
            assert!(s.held() <= MAX_LINE_BYTES, "{}", s.held());
        }
        assert_eq!(lines, 1, "one cut line, the rest skipped");

        let dir = tempfile::tempdir().unwrap();
        let cap = 4096;
        let log = PluginLog::open(dir.path(), "p", cap);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let input = tokio::io::AsyncReadExt::chain(
            tokio::io::AsyncReadExt::take(tokio::io::repeat(b'z'), 100 << 20),
            &b"\rtail\n"[..],
        );
        let held = rt.block_on(log.pump_counted(input, "stderr"));
        assert!(held <= MAX_LINE_BYTES, "{held}");
        let size = std::fs::metadata(log.path()).unwrap().len();
        assert!(size <= cap, "log file {size} bytes over its {cap}-byte cap");
        let recent = log.recent(2);
        assert!(
            recent[0].ends_with(CUT_MARKER),
            "{}",
            &recent[0][recent[0].len() - 40..]
        );
        assert_eq!(recent[0].len(), MAX_LINE_BYTES + CUT_MARKER.len());
        assert_eq!(recent[1], "tail");
        assert_eq!(tail_file(log.path(), 1).unwrap(), ["tail"]);
    }

    #[test]
    fn the_file_cap_is_exact_even_for_lines_longer_than_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = PluginLog::open(dir.path(), "p", 100);
        for i in 0..50 {
            log.line(&"é".repeat(i * 7));
            let size = std::fs::metadata(log.path()).unwrap().len();
            assert!(size <= 100, "{size}");
        }
        let last = tail_file(log.path(), 1).unwrap();
        assert!(last[0].len() <= 99 && last[0].chars().all(|c| c == 'é'));
    }

    /// Measures the process's peak RSS while 1 GB of newline-free output goes through the pump
    /// (issue 13 point 5 asks for the figure; run with `--ignored --nocapture`).
    #[test]
    #[ignore = "a measurement: pumps 1 GB"]
    fn measure_rss_with_1gb_of_newline_free_output() {
        fn vm(field: &str) -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        }
        let dir = tempfile::tempdir().unwrap();
        let log = PluginLog::open(dir.path(), "p", DEFAULT_LOG_CAP);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let before = vm("VmHWM:");
        let input = tokio::io::AsyncReadExt::take(tokio::io::repeat(b'z'), 1 << 30);
        let held = rt.block_on(log.pump_counted(input, "stderr"));
        let after = vm("VmHWM:");
        let size = std::fs::metadata(log.path()).unwrap().len();
        eprintln!(
            "1 GiB without a newline: peak RSS {before} kB before, {after} kB after (+{} kB); \
             line buffer {held} B; log file {size} B",
            after - before
        );
        assert!(
            after - before < 64 << 10,
            "RSS grew by {} kB",
            after - before
        );
    }
}
