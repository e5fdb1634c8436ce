//! The host side of an NDJSON stream as a pure state machine: bytes in, chunks and errors out.
//!
//! [`StreamDecoder`] holds no I/O, so the reader of `POST /execute_stream` bodies can feed it
//! whatever pieces the connection delivers, and the property tests can check that the pieces'
//! boundaries never change what comes out.

use bytes::{Buf, BytesMut};
use serde_json::Value;

use super::{StreamLine, WorkerFlavor};
use crate::error::PluginError;

/// Longest stream line accepted, without its newline: 64 MiB (as [`MAX_FRAME_HEADER`]).
///
/// [`MAX_FRAME_HEADER`]: super::MAX_FRAME_HEADER
pub const MAX_STREAM_LINE: usize = 64 << 20;

/// Turns the bytes of a worker's NDJSON stream into its chunks, in order, and its end.
///
/// Feed it with [`push`](Self::push) and drain it with [`next_item`](Self::next_item) until
/// that returns `None`; call [`close`](Self::close) when the body ends and drain it again.
/// Whatever the pieces, the items are those of the whole body at once. Drained, it holds at
/// most `max_line` bytes: a line longer than that is an error as soon as it is known to be.
///
/// Rules (PROTOCOL.md, "Streams"): blank lines are skipped; a line that is not JSON, data after
/// the end line, or an end line whose count differs from the chunks received is a `fatal`
/// error; an error line ends the stream with its error; a last line without its newline counts;
/// a cjm worker's stream that stops before its end line is a `transient` error.
#[derive(Debug)]
pub struct StreamDecoder {
    flavor: WorkerFlavor,
    max_line: usize,
    buf: BytesMut,
    /// Bytes at the start of `buf` already known to hold no newline.
    scanned: usize,
    chunks: u64,
    saw_end: bool,
    closed: bool,
    /// The body stopped before a cjm worker's end line.
    cut_short: bool,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// Ended with the worker's end (or, for original workers, the body's end).
    Clean,
    /// Ended with an error item.
    Failed,
}

/// One line's JSON (its newline already cut off); `None` for a blank line, which is skipped.
fn parse_line(text: &[u8]) -> Option<Result<Value, serde_json::Error>> {
    if text.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(serde_json::from_slice(text))
}

impl StreamDecoder {
    /// A decoder for a worker of `flavor`, with lines of at most [`MAX_STREAM_LINE`] bytes.
    pub fn new(flavor: WorkerFlavor) -> Self {
        Self::with_max_line(flavor, MAX_STREAM_LINE)
    }

    /// A decoder with lines of at most `max_line` bytes (newline not counted).
    pub fn with_max_line(flavor: WorkerFlavor, max_line: usize) -> Self {
        Self {
            flavor,
            max_line,
            buf: BytesMut::new(),
            scanned: 0,
            chunks: 0,
            saw_end: false,
            closed: false,
            cut_short: false,
            state: State::Open,
        }
    }

    /// Appends the next bytes of the body. Ignored once the stream is over or closed.
    pub fn push(&mut self, data: &[u8]) {
        if self.state == State::Open && !self.closed {
            self.buf.extend_from_slice(data);
        }
    }

    /// Marks the end of the body: what is left is the last line.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// The next chunk or the terminal error; `None` when more input is needed or the stream
    /// is over (see [`is_over`](Self::is_over)).
    pub fn next_item(&mut self) -> Option<Result<Value, PluginError>> {
        while self.state == State::Open {
            // Each line is parsed where it lies in the buffer, which then moves past it.
            let parsed = match memchr::memchr(b'\n', &self.buf[self.scanned..]) {
                Some(pos) => {
                    let end = self.scanned + pos;
                    self.scanned = 0;
                    if end > self.max_line {
                        return Some(self.fail(self.too_long()));
                    }
                    let parsed = parse_line(&self.buf[..end]);
                    self.buf.advance(end + 1);
                    parsed
                }
                None if self.buf.len() > self.max_line => {
                    return Some(self.fail(self.too_long()));
                }
                None if !self.closed => {
                    self.scanned = self.buf.len();
                    return None;
                }
                None if !self.buf.is_empty() => {
                    // A last line without its newline.
                    self.scanned = 0;
                    let parsed = parse_line(&self.buf);
                    self.buf.clear();
                    parsed
                }
                None => {
                    if self.flavor == WorkerFlavor::Cjm && !self.saw_end {
                        self.cut_short = true;
                        return Some(self.fail(PluginError::transient(
                            "the stream ended without its end line: the worker died or closed \
                             the connection",
                        )));
                    }
                    self.state = State::Clean;
                    return None;
                }
            };
            if let Some(item) = parsed.and_then(|p| self.line(p)) {
                return Some(item);
            }
        }
        None
    }

    /// Interprets one parsed line; `None` for a line that yields nothing (the end line).
    fn line(
        &mut self,
        parsed: Result<Value, serde_json::Error>,
    ) -> Option<Result<Value, PluginError>> {
        let value = match parsed {
            Ok(v) => v,
            Err(e) => {
                return Some(self.fail(PluginError::fatal(format!(
                    "the worker sent a stream line that is not JSON: {e}"
                ))))
            }
        };
        match StreamLine::interpret(value, self.flavor) {
            StreamLine::Chunk(_) if self.saw_end => Some(self.fail(PluginError::fatal(
                "the worker sent data after the end of the stream",
            ))),
            StreamLine::Chunk(v) => {
                self.chunks += 1;
                Some(Ok(v))
            }
            StreamLine::End { chunks } if chunks != self.chunks => {
                let msg = format!(
                    "the stream ended after {} chunks but the worker counted {chunks}",
                    self.chunks
                );
                Some(self.fail(PluginError::fatal(msg)))
            }
            StreamLine::End { .. } => {
                self.saw_end = true;
                None
            }
            StreamLine::Error(e) => Some(self.fail(e)),
        }
    }

    fn too_long(&self) -> PluginError {
        PluginError::fatal(format!(
            "the worker sent a stream line longer than {} bytes",
            self.max_line
        ))
    }

    fn fail(&mut self, e: PluginError) -> Result<Value, PluginError> {
        self.state = State::Failed;
        self.buf = BytesMut::new();
        self.scanned = 0;
        Err(e)
    }

    /// True once the stream is over: after its terminal error, or after [`close`](Self::close)
    /// and the last item.
    pub fn is_over(&self) -> bool {
        self.state != State::Open
    }

    /// True when the stream is over and ended as the protocol says (no error item).
    pub fn ended_cleanly(&self) -> bool {
        self.state == State::Clean
    }

    /// True when the stream failed because its body ended before a cjm worker's end line (the
    /// worker died or closed the connection), as opposed to a line that broke the rules.
    pub fn ended_without_end(&self) -> bool {
        self.cut_short
    }

    /// Chunks yielded so far.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Bytes held: at most `max_line` once drained (after `next_item` returned `None`).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}
