//! Worker output: every line becomes a `tracing` event tagged with the plugin, and is kept in a
//! per-plugin log file with a size cap (`<data_dir>/logs/<name>.log`, rotated once to `.log.1`).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Default size at which a log file is rotated.
pub const DEFAULT_LOG_CAP: u64 = 8 << 20;

/// Lines kept in memory for error reports.
const RECENT_LINES: usize = 50;

/// One plugin's log: a capped file plus the most recent lines in memory.
#[derive(Debug)]
pub struct PluginLog {
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
    pub fn open(dir: &Path, name: &str, cap: u64) -> Arc<Self> {
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
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line (without its newline).
    pub fn line(&self, line: &str) {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if g.recent.len() == RECENT_LINES {
            g.recent.pop_front();
        }
        g.recent.push_back(line.to_owned());
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
    pub fn recent(&self, n: usize) -> Vec<String> {
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

    /// Reads `stream` line by line until it closes, logging each line.
    pub async fn pump(self: Arc<Self>, stream: impl AsyncRead + Unpin, which: &'static str) {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    let text = text.trim_end_matches(['\n', '\r']);
                    tracing::info!(target: "cjm::worker", plugin = %self.name, stream = which, "{text}");
                    self.line(text);
                }
            }
        }
    }
}

/// The last `n` lines of the log at `path` (and its rotated `.log.1` when the current file has
/// fewer). A missing file gives no lines.
pub fn tail_file(path: &Path, n: usize) -> io::Result<Vec<String>> {
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
}
