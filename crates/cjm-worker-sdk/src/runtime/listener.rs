//! Where the worker listens: a socket inherited from the host (`CJM_LISTEN_FD`, the normal
//! case, free of port races) or one bound from `--listen unix:PATH | tcp:ADDR` for runs by hand.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cjm_core::wire::env;
use cjm_core::wire::register::{FLAG_PIN, FLAG_TOKEN, FLAG_URL};

use super::register::Registration;

use crate::platform::{self, SocketKind};

/// The usage text printed when a worker is started without a socket.
pub const USAGE: &str = "\
This program is a cjm plugin worker. The cjm host normally starts it and hands it a
listening socket (CJM_LISTEN_FD / CJM_LISTEN_KIND). To run it by hand, give it an address:

    --listen unix:/tmp/plugin.sock     a Unix socket (created; removed again on exit)
    --listen tcp:127.0.0.1:8700        a TCP address

A remote worker (a host elsewhere reaches it with a manifest of execution_mode `remote`):

    --listen tcp:0.0.0.0:7000 --tls-cert cert.pem --tls-key key.pem --token-file token
                                       HTTPS, every request with `Authorization: Bearer`
                                       and the token in the file (required off loopback)

A worker placed on a cluster by its host (execution_mode `ray`) registers before serving:

    --listen tcp:0.0.0.0:0 --register https://HOST:PORT/PATH --register-pin SHA256
        --register-token TOKEN         the host answers with its certificate and token

    --describe                         print the plugin's description (JSON: name, version,
                                       config schema, operations) and exit, without serving

Other environment: CJM_AUTH_TOKEN (require `Authorization: Bearer <token>`),
CJM_MAX_CONCURRENCY, CJM_HOST_PID (exit when that process is gone), CJM_LOG (log filter).";

/// Why no listening socket could be had.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Neither an inherited socket nor `--listen` was given.
    #[error(
        "no listening socket: neither {} nor --listen was given",
        env::LISTEN_FD
    )]
    Missing,
    /// The command line or the environment is malformed.
    #[error("{0}")]
    Invalid(String),
    /// Binding or adopting the socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl ListenError {
    pub(super) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// An address given with `--listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `unix:PATH`.
    Unix(PathBuf),
    /// `tcp:ADDR`, e.g. `tcp:127.0.0.1:8700`.
    Tcp(SocketAddr),
}

impl FromStr for ListenAddr {
    type Err = ListenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ListenError::Invalid("`unix:` needs a path".into()));
            }
            Ok(Self::Unix(PathBuf::from(path)))
        } else if let Some(addr) = s.strip_prefix("tcp:") {
            addr.parse().map(Self::Tcp).map_err(|e| {
                ListenError::Invalid(format!("`{addr}` is not a socket address ({e})"))
            })
        } else {
            Err(ListenError::Invalid(format!(
                "`{s}`: the address must start with `unix:` or `tcp:`"
            )))
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandLine {
    /// `--listen ADDR`.
    pub listen: Option<ListenAddr>,
    /// `--help` / `-h`.
    pub help: bool,
    /// `--describe`: print the worker's description and exit.
    pub describe: bool,
    /// `--tls-cert FILE`: serve HTTPS with this PEM certificate chain (with `--tls-key`).
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key FILE`: the PEM private key of `--tls-cert`.
    pub tls_key: Option<PathBuf>,
    /// `--token-file FILE`: require `Authorization: Bearer` with the token in the file.
    pub token_file: Option<PathBuf>,
    /// `--register URL --register-pin SHA256 --register-token T`: a worker placed on a cluster
    /// registers with its host before serving (see [`Registration`]).
    pub register: Option<Registration>,
}

impl CommandLine {
    /// Parses the arguments after the program name. Unknown arguments are left to the plugin
    /// (the SDK ignores them).
    pub fn parse<I, S>(args: I) -> Result<Self, ListenError>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut out = Self::default();
        let mut register: [Option<String>; 3] = [None, None, None];
        let mut it = args.into_iter().map(Into::into);
        while let Some(arg) = it.next() {
            let arg = arg.to_string_lossy().into_owned();
            if arg == "--help" || arg == "-h" {
                out.help = true;
            } else if arg == cjm_core::describe::DESCRIBE_FLAG {
                out.describe = true;
            } else if arg == "--listen" {
                let value = it
                    .next()
                    .ok_or_else(|| ListenError::Invalid("--listen needs an address".into()))?;
                out.listen = Some(value.to_string_lossy().parse()?);
            } else if let Some(value) = arg.strip_prefix("--listen=") {
                out.listen = Some(value.parse()?);
            } else if let Some(flag) = [FLAG_URL, FLAG_PIN, FLAG_TOKEN]
                .into_iter()
                .find(|f| arg == *f || arg.starts_with(&format!("{f}=")))
            {
                let value = match arg.strip_prefix(&format!("{flag}=")) {
                    Some(v) => v.to_owned(),
                    None => it
                        .next()
                        .ok_or_else(|| ListenError::Invalid(format!("{flag} needs a value")))?
                        .to_string_lossy()
                        .into_owned(),
                };
                register[[FLAG_URL, FLAG_PIN, FLAG_TOKEN]
                    .iter()
                    .position(|f| *f == flag)
                    .unwrap_or(0)] = Some(value);
            } else {
                for (flag, slot) in [
                    ("--tls-cert", &mut out.tls_cert),
                    ("--tls-key", &mut out.tls_key),
                    ("--token-file", &mut out.token_file),
                ] {
                    if arg == flag {
                        let value = it.next().ok_or_else(|| {
                            ListenError::Invalid(format!("{flag} needs a file name"))
                        })?;
                        *slot = Some(PathBuf::from(value));
                    } else if let Some(value) = arg.strip_prefix(&format!("{flag}=")) {
                        *slot = Some(PathBuf::from(value));
                    }
                }
            }
        }
        if out.tls_cert.is_some() != out.tls_key.is_some() {
            return Err(ListenError::Invalid(
                "--tls-cert and --tls-key go together".into(),
            ));
        }
        out.register = match register {
            [None, None, None] => None,
            [Some(url), Some(pin), Some(token)] => {
                if out.tls_cert.is_some() || out.token_file.is_some() {
                    return Err(ListenError::Invalid(format!(
                        "{FLAG_URL} receives the certificate and token from the host: give no \
                         --tls-cert, --tls-key or --token-file with it"
                    )));
                }
                Some(Registration {
                    url,
                    pin: Registration::parse_pin(&pin)?,
                    token,
                })
            }
            _ => {
                return Err(ListenError::Invalid(format!(
                    "{FLAG_URL}, {FLAG_PIN} and {FLAG_TOKEN} go together"
                )))
            }
        };
        Ok(out)
    }
}

/// A listening socket, not yet attached to a runtime.
#[derive(Debug)]
pub enum Listener {
    /// A Unix socket. `path` is set when this process created the socket file (and removes it
    /// when the listener is dropped).
    Unix {
        /// The socket.
        listener: StdUnixListener,
        /// The socket file to remove on drop.
        path: Option<PathBuf>,
    },
    /// A TCP socket.
    Tcp(std::net::TcpListener),
}

impl Listener {
    /// Binds `addr`. A stale Unix socket file (nobody listening) is replaced.
    pub fn bind(addr: &ListenAddr) -> Result<Self, ListenError> {
        match addr {
            ListenAddr::Unix(path) => {
                let listener = match StdUnixListener::bind(path) {
                    Ok(l) => l,
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && is_stale(path) => {
                        std::fs::remove_file(path).map_err(|e| {
                            ListenError::io(format!("removing stale {}", path.display()), e)
                        })?;
                        StdUnixListener::bind(path)
                            .map_err(|e| ListenError::io(format!("binding {addr}"), e))?
                    }
                    Err(e) => return Err(ListenError::io(format!("binding {addr}"), e)),
                };
                Ok(Self::Unix {
                    listener,
                    path: Some(path.clone()),
                })
            }
            ListenAddr::Tcp(a) => std::net::TcpListener::bind(a)
                .map(Self::Tcp)
                .map_err(|e| ListenError::io(format!("binding {addr}"), e)),
        }
    }

    /// Adopts the listening socket the host passed as `CJM_LISTEN_FD` (kind from
    /// `CJM_LISTEN_KIND`, default `unix`). `Ok(None)` when the variable is not set.
    ///
    /// Both variables are removed from the environment so that programs the plugin starts
    /// do not try to adopt a descriptor they do not have.
    pub fn from_env() -> Result<Option<Self>, ListenError> {
        let Some(fd) = std::env::var_os(env::LISTEN_FD) else {
            return Ok(None);
        };
        let kind = std::env::var_os(env::LISTEN_KIND);
        std::env::remove_var(env::LISTEN_FD);
        std::env::remove_var(env::LISTEN_KIND);
        let fd_text = fd.to_string_lossy();
        let fd: i32 = fd_text.trim().parse().map_err(|_| {
            ListenError::Invalid(format!(
                "{}={fd_text:?} is not a file descriptor number",
                env::LISTEN_FD
            ))
        })?;
        let kind = match kind.as_ref().map(|k| k.to_string_lossy()) {
            None => SocketKind::Unix,
            Some(k) if k == "unix" => SocketKind::Unix,
            Some(k) if k == "tcp" => SocketKind::Tcp,
            Some(k) => {
                return Err(ListenError::Invalid(format!(
                    "{}={k:?}: expected `unix` or `tcp`",
                    env::LISTEN_KIND
                )))
            }
        };
        Self::from_fd(fd, kind == SocketKind::Tcp).map(Some)
    }

    /// Adopts an inherited listening socket: a Unix socket, or TCP when `tcp` is true.
    pub fn from_fd(fd: i32, tcp: bool) -> Result<Self, ListenError> {
        let kind = if tcp {
            SocketKind::Tcp
        } else {
            SocketKind::Unix
        };
        let owned: OwnedFd = platform::adopt_listener_fd(fd, kind)
            .map_err(|e| ListenError::io(format!("adopting inherited socket fd {fd}"), e))?;
        Ok(match kind {
            SocketKind::Unix => Self::Unix {
                listener: StdUnixListener::from(owned),
                path: None,
            },
            SocketKind::Tcp => Self::Tcp(std::net::TcpListener::from(owned)),
        })
    }

    /// The listener chosen by the command line (first) or the environment.
    pub fn from_command_line_or_env(cmd: &CommandLine) -> Result<Self, ListenError> {
        if let Some(addr) = &cmd.listen {
            // An explicit flag wins; drop any inherited variables all the same.
            std::env::remove_var(env::LISTEN_FD);
            std::env::remove_var(env::LISTEN_KIND);
            return Self::bind(addr);
        }
        Self::from_env()?.ok_or(ListenError::Missing)
    }

    /// A description of the address, for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Unix { listener, .. } => match listener.local_addr() {
                Ok(a) => match a.as_pathname() {
                    Some(p) => format!("unix:{}", p.display()),
                    None => "unix:(unnamed)".to_owned(),
                },
                Err(_) => "unix:(unknown)".to_owned(),
            },
            Self::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("tcp:{a}"),
                Err(_) => "tcp:(unknown)".to_owned(),
            },
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Self::Unix { path: Some(p), .. } = self {
            let _ = std::fs::remove_file(&*p);
        }
    }
}

/// True when `path` is a socket file nobody accepts on.
fn is_stale(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    is_socket && std::os::unix::net::UnixStream::connect(path).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            "unix:/tmp/x.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:80".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:80".parse().unwrap())
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("tcp:nohost".parse::<ListenAddr>().is_err());
        assert!("/tmp/x.sock".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn command_lines_parse() {
        let c = CommandLine::parse(["--listen", "tcp:127.0.0.1:1", "--other"]).unwrap();
        assert_eq!(
            c.listen,
            Some(ListenAddr::Tcp("127.0.0.1:1".parse().unwrap()))
        );
        let c = CommandLine::parse(["--listen=unix:/a"]).unwrap();
        assert_eq!(c.listen, Some(ListenAddr::Unix("/a".into())));
        assert!(CommandLine::parse(["-h"]).unwrap().help);
        assert!(CommandLine::parse(["--describe"]).unwrap().describe);
        assert!(!CommandLine::parse(["-h"]).unwrap().describe);
        assert!(CommandLine::parse(["--listen"]).is_err());
        assert_eq!(
            CommandLine::parse(Vec::<String>::new()).unwrap(),
            CommandLine::default()
        );
    }

    #[test]
    fn registration_flags_go_together() {
        let pin = "0f".repeat(32);
        let c = CommandLine::parse([
            "--listen",
            "tcp:0.0.0.0:0",
            "--register",
            "https://10.0.0.1:7400/cjm/register",
            &format!("--register-pin={pin}"),
            "--register-token",
            "t0k",
        ])
        .unwrap();
        let r = c.register.unwrap();
        assert_eq!(r.url, "https://10.0.0.1:7400/cjm/register");
        assert_eq!(r.pin, [0x0f; 32]);
        assert_eq!(r.token, "t0k");
        // The token never shows in debug output.
        assert!(!format!("{r:?}").contains("t0k"));
        let e = CommandLine::parse(["--register", "https://h:1/"]).unwrap_err();
        assert!(e.to_string().contains("go together"), "{e}");
        let e = CommandLine::parse([
            "--register",
            "https://h:1/",
            "--register-pin",
            &pin,
            "--register-token",
            "t",
            "--token-file",
            "f",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--token-file"), "{e}");
        let e = CommandLine::parse([
            "--register-pin",
            "xyz",
            "--register",
            "u",
            "--register-token",
            "t",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--register-pin"), "{e}");
        assert!(CommandLine::parse(["--register-token"]).is_err());
    }

    #[test]
    fn bind_replaces_stale_socket_and_removes_it_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sock");
        // A stale socket file: bound, then the listener closed without removing the file.
        drop(StdUnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let l = Listener::bind(&ListenAddr::Unix(path.clone())).unwrap();
        assert_eq!(l.describe(), format!("unix:{}", path.display()));
        // A live one is refused.
        assert!(Listener::bind(&ListenAddr::Unix(path.clone())).is_err());
        drop(l);
        assert!(!path.exists());
    }

    #[test]
    fn adopting_a_non_socket_fails() {
        let f = tempfile::tempfile().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let err = Listener::from_fd(fd, false).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert!(Listener::from_fd(-1, false).is_err());
    }
}
