//! Raw HTTP/1.1 over a worker's socket: one request per connection (`Connection: close`), the
//! answer read whole, chunked bodies decoded (a truncated one refused). Errors are messages,
//! for test failures and the conformance table.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// The bound on one request unless [`Req::timeout`] says otherwise.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a worker listens.
#[derive(Debug, Clone)]
pub enum Addr {
    /// A Unix socket.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn open(addr: &Addr, timeout: Duration) -> std::io::Result<Self> {
        let conn = match addr {
            Addr::Unix(p) => Conn::Unix(UnixStream::connect(p)?),
            Addr::Tcp(a) => Conn::Tcp(TcpStream::connect_timeout(a, timeout)?),
        };
        match &conn {
            Conn::Unix(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
            }
            Conn::Tcp(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
            }
        }
        Ok(conn)
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tcp(s) => s.flush(),
        }
    }
}

/// A request as it goes on the wire.
#[derive(Debug, Clone)]
pub struct Req {
    /// `GET`, `POST`, ...
    pub method: &'static str,
    /// The path, e.g. `/health`.
    pub path: String,
    /// Headers besides `Host`, `Connection`, `Authorization` and `Content-Length`.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// A `Content-Length` to declare instead of the body's (the body is then not sent).
    pub declared_len: Option<u64>,
    /// Leave out the bearer token given to [`send`].
    pub no_auth: bool,
    /// The bound on connecting, sending and reading the answer.
    pub timeout: Duration,
}

impl Req {
    /// A `method` request for `path` without a body.
    pub fn new(method: &'static str, path: &str) -> Self {
        Self {
            method,
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            declared_len: None,
            no_auth: false,
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// `GET path`.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// `POST path`.
    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    /// `v` as an `application/json` body.
    pub fn json(self, v: &Value) -> Self {
        self.raw("application/json", v.to_string().into_bytes())
    }

    /// `body` with `content_type`.
    pub fn raw(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.headers
            .push(("Content-Type".into(), content_type.to_owned()));
        self.body = body;
        self
    }

    /// One more header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// An answer, read whole.
#[derive(Debug, Clone)]
pub struct Resp {
    /// The status code.
    pub status: u16,
    /// The headers, in order, as sent.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Resp {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The media type of `Content-Type`, lower case, without parameters.
    pub fn content_type(&self) -> String {
        self.header("content-type")
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    }

    /// The body as text, cut after 300 characters (for messages).
    pub fn text(&self) -> String {
        let s = String::from_utf8_lossy(&self.body);
        if s.chars().count() > 300 {
            format!("{}…", s.chars().take(300).collect::<String>())
        } else {
            s.into_owned()
        }
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("the body is not JSON ({e}): {}", self.text()))
    }

    /// The JSON body of a `200` answer.
    pub fn ok_json(&self) -> Result<Value, String> {
        self.expect(200)?;
        self.json()
    }

    /// The status must be `status`.
    pub fn expect(&self, status: u16) -> Result<(), String> {
        if self.status == status {
            Ok(())
        } else {
            Err(format!(
                "status {} (want {status}): {}",
                self.status,
                self.text()
            ))
        }
    }
}

/// Sends `req` to `addr` over a fresh connection, with `Authorization: Bearer <token>` unless
/// `req.no_auth`, and reads the whole answer.
pub fn send(addr: &Addr, token: Option<&str>, req: &Req) -> Result<Resp, String> {
    let mut conn = Conn::open(addr, req.timeout).map_err(|e| format!("cannot connect: {e}"))?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n",
        req.method, req.path
    );
    if let (Some(t), false) = (token, req.no_auth) {
        let _ = write!(head, "Authorization: Bearer {t}\r\n");
    }
    for (k, v) in &req.headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    let len = req.declared_len.unwrap_or(req.body.len() as u64);
    if req.method != "GET" || len > 0 {
        let _ = write!(head, "Content-Length: {len}\r\n");
    }
    head.push_str("\r\n");
    // A worker may answer (and close) before it has read the body: keep going to read that.
    let wrote = conn.write_all(head.as_bytes()).and_then(|()| {
        if req.declared_len.is_none() {
            conn.write_all(&req.body)
        } else {
            Ok(())
        }
    });
    let mut raw = Vec::new();
    let read = conn.read_to_end(&mut raw);
    let timed_out = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    if raw.is_empty() {
        return Err(match (wrote, read) {
            (_, Err(e)) if timed_out(&e) => format!("no answer within {:?}", req.timeout),
            (Err(e), _) => format!("cannot send the request: {e}"),
            (_, Err(e)) => format!("cannot read the answer: {e}"),
            _ => "the connection closed without an answer".into(),
        });
    }
    if let Err(e) = read {
        if timed_out(&e) {
            return Err(format!("the answer did not end within {:?}", req.timeout));
        }
    }
    parse_response(&raw)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a whole HTTP/1.x answer; the body must be as long as `Content-Length` says, and a
/// chunked one must end with its last chunk.
pub fn parse_response(raw: &[u8]) -> Result<Resp, String> {
    let end = find(raw, b"\r\n\r\n").ok_or("the answer has no complete head")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "the answer's head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| format!("bad status line `{status_line}`"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line `{line}`"))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &raw[end + 4..];
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    resp.body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = resp.header("content-length") {
        let n: usize = n.parse().map_err(|_| format!("bad Content-Length `{n}`"))?;
        if rest.len() != n {
            return Err(format!(
                "Content-Length says {n} bytes, {} came",
                rest.len()
            ));
        }
        rest.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(resp)
}

/// Decodes a chunked body, refusing a truncated one (no last chunk).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = find(rest, b"\r\n").ok_or("a chunked body ends without its last chunk")?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size `{size_text}`"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err("a chunk is cut short".into());
        }
        out.extend_from_slice(&rest[..size]);
        if &rest[size..size + 2] != b"\r\n" {
            return Err("a chunk does not end with CRLF".into());
        }
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_and_checked() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n\
              X-Cjm-Protocol: 1\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-cjm-protocol"), Some("1"));
        assert_eq!(r.content_type(), "application/json");
        assert_eq!(r.ok_json().unwrap(), serde_json::json!({"a": 1}));
        assert!(r.expect(404).unwrap_err().contains("status 200 (want 404)"));

        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");

        let cut =
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
        assert_eq!(
            cut.unwrap_err(),
            "a chunked body ends without its last chunk"
        );
        let short = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab");
        assert_eq!(short.unwrap_err(), "Content-Length says 5 bytes, 2 came");
        assert!(parse_response(b"SMTP 200 OK\r\n\r\n").is_err());
    }
}
