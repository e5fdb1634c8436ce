//! The host's private runtime directory (worker sockets): created mode 0700 whatever the
//! umask, refused when an existing one is not private, named after the host pid so that a
//! later host can sweep the directories of dead ones.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Checks that `path` is a real directory (not a symlink) owned by us without any group or
/// other permission bit. The error names the path and what is wrong.
pub fn check_private_dir(path: &Path) -> io::Result<()> {
    let md = std::fs::symlink_metadata(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refusing the runtime directory {}: {why}", path.display()),
        ))
    };
    if !md.file_type().is_dir() {
        return refuse("it is not a directory".into());
    }
    let me = crate::proc::uid();
    if md.uid() != me {
        return refuse(format!("it is owned by uid {}, not {me}", md.uid()));
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return refuse(format!(
            "its mode {mode:04o} gives access to group or others (0700 needed)"
        ));
    }
    Ok(())
}

/// Creates the directory `path` with mode 0700 regardless of the umask (set explicitly and
/// checked afterwards). A directory already there is used only if [`check_private_dir`]
/// accepts it.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot create the runtime directory {}: {e}",
                    path.display()
                ),
            ))
        }
    }
    check_private_dir(path)
}

/// The name prefix of this user's runtime directories: `cjm-<uid>-`.
pub fn prefix() -> String {
    format!("cjm-{}-", crate::proc::uid())
}

/// A fresh runtime directory name `cjm-<uid>-<pid>-<random>` for this process.
pub fn fresh_name() -> io::Result<String> {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(format!(
        "{}{}-{}",
        prefix(),
        std::process::id(),
        r.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// Removes every directory `cjm-<uid>-<pid>-*` of ours in `base` whose host pid no longer
/// exists. Live hosts' directories, other users' and anything else are left alone. Returns
/// the directories removed.
pub fn sweep_stale(base: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    let prefix = prefix();
    let me = crate::proc::uid();
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|rest| crate::contain::host_pid_of(&format!("cjm-{rest}")))
        else {
            continue;
        };
        if crate::proc::process_exists(pid) {
            continue;
        }
        let path = e.path();
        let ours =
            std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_dir() && m.uid() == me);
        if !ours {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(dir = %path.display(), "removed the runtime directory of a dead host");
                out.push(path);
            }
            Err(err) => {
                tracing::warn!(dir = %path.display(), error = %err, "cannot remove a dead host's runtime directory");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_dir_is_0700_and_foreign_or_open_ones_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let p = base.path().join("rt");
        create_private_dir(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        // Existing and private: accepted.
        create_private_dir(&p).unwrap();
        // Existing with a group bit: refused, naming the path.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o750)).unwrap();
        let e = create_private_dir(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        assert!(e.to_string().contains("0750"), "{e}");
        // A symlink to a private dir: refused.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let e = create_private_dir(&link).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn a_dir_owned_by_someone_else_is_refused() {
        if crate::proc::uid() != 0 {
            return; // Only root can give a directory away; the check itself is the same.
        }
        let base = tempfile::tempdir().unwrap();
        let p = base.path().join("rt");
        create_private_dir(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let e = create_private_dir(&p).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    }

    #[test]
    fn only_dead_hosts_dirs_are_swept() {
        let base = tempfile::tempdir().unwrap();
        // A pid that exited: a child we reaped.
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let dead = c.id();
        c.wait().unwrap();
        let dead_dir = base.path().join(format!("{}{dead}-aa", prefix()));
        let live_dir = base
            .path()
            .join(format!("{}{}-bb", prefix(), std::process::id()));
        let other = base.path().join("cjm-x-1-cc");
        for d in [&dead_dir, &live_dir, &other] {
            create_private_dir(d).unwrap();
            std::fs::write(d.join("w0.sock"), "").unwrap();
        }
        let swept = sweep_stale(base.path());
        assert_eq!(swept, vec![dead_dir.clone()]);
        assert!(!dead_dir.exists() && live_dir.exists() && other.exists());
        assert!(fresh_name()
            .unwrap()
            .starts_with(&format!("{}{}-", prefix(), std::process::id())));
    }
}
