//! The calls socket's multiplexed wire (feature `calls_mux`): many `/execute` calls in flight on
//! one connection, each frame naming its call by an id the host chose. PROTOCOL.md ("The
//! multiplexed calls wire") is the prose version.
//!
//! A connection starts with the host's [`PREFACE`] (and its bearer token, when it has one);
//! every frame after it is
//!
//! ```text
//! u32 LE  length of what follows (kind, id, head, body)
//! u8      kind: 1 call, 2 cancel (host → worker); 3 answer (worker → host)
//! u64 LE  the call's id
//! head    call:   u8 flags (1: the body is a frame, 2: a timeout is given),
//!                 u32 LE timeout in ms, u8 tag length, the tag
//!         cancel: nothing
//!         answer: u16 LE HTTP status, u8 flags (1: the body is a frame)
//! body    the rest: what `POST /execute`'s body and answer would be
//! ```
//!
//! Only encoding and decoding live here (no I/O): the host's client and the worker's server
//! both use them.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The first bytes of a multiplexed connection (an HTTP request cannot start with them: no
/// method is followed by a digit and a newline). A `u16 LE` token length and the token follow.
pub const PREFACE: &[u8; 8] = b"CJMMUX1\n";

/// The longest bearer token a preface carries.
pub const MAX_TOKEN: usize = 4096;

/// The largest request body the host sends on the multiplexed wire; a larger one goes by HTTP
/// on the calls socket, so that it does not hold up the calls queued behind it.
pub const MAX_CALL_BODY: usize = 1 << 20;

/// The length field, the kind and the id: what every frame starts with.
pub const FRAME_HEAD: usize = 4 + 1 + 8;

const KIND_CALL: u8 = 1;
const KIND_CANCEL: u8 = 2;
const KIND_ANSWER: u8 = 3;

const FLAG_FRAME: u8 = 1;
const FLAG_TIMEOUT: u8 = 2;

/// The fixed part of a call's head (flags, timeout, tag length).
const CALL_HEAD: usize = 1 + 4 + 1;
/// An answer's head (status, flags).
const ANSWER_HEAD: usize = 2 + 1;

/// What a call frame says besides its body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallHead {
    /// The body is a frame (`application/vnd.cjm.frame`), not JSON.
    pub frame: bool,
    /// The call's deadline in milliseconds from when the worker reads it (`x-cjm-timeout-ms`).
    pub timeout_ms: Option<u32>,
    /// The call's tag (`x-cjm-call-tag`), at most 255 bytes.
    pub tag: Option<String>,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A call (host → worker).
    Call {
        /// The call's id.
        id: u64,
        /// Its head.
        head: CallHead,
        /// What `POST /execute`'s body would be.
        body: Bytes,
    },
    /// The host no longer waits for call `id` (host → worker).
    Cancel {
        /// The call's id.
        id: u64,
    },
    /// The answer to call `id` (worker → host).
    Answer {
        /// The call's id.
        id: u64,
        /// The HTTP status the answer would have had.
        status: u16,
        /// The body is a frame, not JSON.
        frame: bool,
        /// The answer's body.
        body: Bytes,
    },
    /// A frame longer than the decoder's limit: its bytes are skipped as they come.
    TooLarge {
        /// Its id.
        id: u64,
        /// Its length (past the length field).
        len: u64,
    },
}

/// A frame that breaks the wire: the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// An unknown kind byte.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A frame too short for its kind's head.
    #[error("a {0} frame of {1} bytes is shorter than its head")]
    Short(&'static str, u64),
    /// A tag that is not UTF-8.
    #[error("a call's tag is not UTF-8")]
    Tag,
}

/// The head of a call frame whose body (`body_len` bytes) follows it on the wire.
pub fn call_head(id: u64, head: &CallHead, body_len: usize) -> Bytes {
    let tag = head.tag.as_deref().unwrap_or("").as_bytes();
    let tag = &tag[..tag.len().min(255)];
    let mut b = BytesMut::with_capacity(FRAME_HEAD + CALL_HEAD + tag.len());
    put_frame_head(&mut b, KIND_CALL, id, CALL_HEAD + tag.len() + body_len);
    let mut flags = 0;
    if head.frame {
        flags |= FLAG_FRAME;
    }
    if head.timeout_ms.is_some() {
        flags |= FLAG_TIMEOUT;
    }
    b.put_u8(flags);
    b.put_u32_le(head.timeout_ms.unwrap_or(0));
    b.put_u8(tag.len() as u8);
    b.put_slice(tag);
    b.freeze()
}

/// A cancel frame for call `id`.
pub fn cancel(id: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(FRAME_HEAD);
    put_frame_head(&mut b, KIND_CANCEL, id, 0);
    b.freeze()
}

/// Writes the head of an answer frame whose body (`body_len` bytes) follows it; `None` when the
/// body is too long for a frame's `u32` length.
pub fn put_answer_head(
    b: &mut BytesMut,
    id: u64,
    status: u16,
    frame: bool,
    body_len: usize,
) -> Option<()> {
    u32::try_from(ANSWER_HEAD + 9 + body_len).ok()?;
    put_frame_head(b, KIND_ANSWER, id, ANSWER_HEAD + body_len);
    b.put_u16_le(status);
    b.put_u8(if frame { FLAG_FRAME } else { 0 });
    Some(())
}

fn put_frame_head(b: &mut BytesMut, kind: u8, id: u64, rest: usize) {
    // Callers bound `rest` (the host's bodies by `MAX_CALL_BODY`, answers by
    // `put_answer_head`'s check).
    b.put_u32_le((1 + 8 + rest) as u32);
    b.put_u8(kind);
    b.put_u64_le(id);
}

/// The preface of a connection: [`PREFACE`], then the token's length and the token.
pub fn preface(token: Option<&str>) -> Bytes {
    let t = token.unwrap_or("").as_bytes();
    let t = &t[..t.len().min(MAX_TOKEN)];
    let mut b = BytesMut::with_capacity(PREFACE.len() + 2 + t.len());
    b.put_slice(PREFACE);
    b.put_u16_le(t.len() as u16);
    b.put_slice(t);
    b.freeze()
}

/// At most this many buffers go in one vectored write.
pub const MAX_SLICES: usize = 64;

/// The first buffers of `queue` (at most [`MAX_SLICES`]), for one vectored write.
pub fn io_slices(queue: &VecDeque<Bytes>) -> Vec<IoSlice<'_>> {
    queue
        .iter()
        .take(MAX_SLICES)
        .map(|b| IoSlice::new(b))
        .collect()
}

/// Drops the first `n` bytes of `queue`: what a write took.
pub fn consume(queue: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = queue.front_mut() else {
            return;
        };
        if front.len() <= n {
            n -= front.len();
            queue.pop_front();
        } else {
            front.advance(n);
            return;
        }
    }
}

/// The most a decoder reserves ahead for a frame whose bytes have not come yet.
const MAX_RESERVE: usize = 64 << 20;

/// Reads frames out of a growing buffer, skipping those over its limit.
#[derive(Debug)]
pub struct Decoder {
    max: u64,
    skip: u64,
}

impl Decoder {
    /// A decoder that takes frames of at most `max` bytes (past the length field).
    pub fn new(max: u64) -> Self {
        Self { max, skip: 0 }
    }

    /// The next whole frame in `buf` (its bytes taken out), or `None` until more bytes come.
    /// A frame over the limit is reported once as [`Frame::TooLarge`] and its bytes dropped as
    /// they arrive.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, MuxError> {
        if self.skip > 0 {
            let n = self.skip.min(buf.len() as u64);
            buf.advance(n as usize);
            self.skip -= n;
            if self.skip > 0 {
                return Ok(None);
            }
        }
        if buf.len() < FRAME_HEAD {
            return Ok(None);
        }
        let len = u64::from(u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]));
        let kind = buf[4];
        let id = u64::from_le_bytes(buf[5..13].try_into().unwrap_or_default());
        let name = match kind {
            KIND_CALL => "call",
            KIND_CANCEL => "cancel",
            KIND_ANSWER => "answer",
            k => return Err(MuxError::UnknownKind(k)),
        };
        if len < 9 {
            return Err(MuxError::Short(name, len));
        }
        if len > self.max {
            buf.advance(FRAME_HEAD);
            self.skip = len - 9;
            let n = self.skip.min(buf.len() as u64);
            buf.advance(n as usize);
            self.skip -= n;
            return Ok(Some(Frame::TooLarge { id, len }));
        }
        let whole = 4 + len as usize;
        if buf.len() < whole {
            // One allocation for the rest of a large frame, not doublings as it comes; up to a
            // bound, so that a length alone reserves no more than that.
            buf.reserve((whole - buf.len()).min(MAX_RESERVE));
            return Ok(None);
        }
        let mut f = buf.split_to(whole);
        f.advance(FRAME_HEAD);
        let rest = len - 9;
        let frame = match kind {
            KIND_CALL => {
                if f.len() < CALL_HEAD {
                    return Err(MuxError::Short(name, len));
                }
                let flags = f.get_u8();
                let timeout = f.get_u32_le();
                let tag_len = usize::from(f.get_u8());
                if f.len() < tag_len {
                    return Err(MuxError::Short(name, len));
                }
                let tag = f.split_to(tag_len);
                let tag = match tag_len {
                    0 => None,
                    _ => Some(String::from_utf8(tag.to_vec()).map_err(|_| MuxError::Tag)?),
                };
                Frame::Call {
                    id,
                    head: CallHead {
                        frame: flags & FLAG_FRAME != 0,
                        timeout_ms: (flags & FLAG_TIMEOUT != 0).then_some(timeout),
                        tag,
                    },
                    body: f.freeze(),
                }
            }
            KIND_CANCEL => Frame::Cancel { id },
            _ => {
                if rest < ANSWER_HEAD as u64 {
                    return Err(MuxError::Short(name, len));
                }
                let status = f.get_u16_le();
                let flags = f.get_u8();
                Frame::Answer {
                    id,
                    status,
                    frame: flags & FLAG_FRAME != 0,
                    body: f.freeze(),
                }
            }
        };
        Ok(Some(frame))
    }
}

/// Where a preface stands in the first bytes of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preface {
    /// Not a preface: the connection speaks HTTP.
    Http,
    /// Too few bytes yet to tell.
    Partial,
    /// A whole preface of `len` bytes, with its token.
    Mux {
        /// Bytes the preface took.
        len: usize,
        /// The bearer token it carried (empty: none).
        token: Vec<u8>,
    },
}

/// What the first bytes of a connection, `got`, are.
pub fn read_preface(got: &[u8]) -> Preface {
    let n = got.len().min(PREFACE.len());
    if got[..n] != PREFACE[..n] {
        return Preface::Http;
    }
    if got.len() < PREFACE.len() + 2 {
        return Preface::Partial;
    }
    let t = usize::from(u16::from_le_bytes([got[8], got[9]]));
    let len = PREFACE.len() + 2 + t;
    if got.len() < len {
        return Preface::Partial;
    }
    Preface::Mux {
        len,
        token: got[10..len].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(parts: &[&[u8]]) -> BytesMut {
        let mut b = BytesMut::new();
        for p in parts {
            b.extend_from_slice(p);
        }
        b
    }

    #[test]
    fn a_call_crosses_whole_and_only_once_all_its_bytes_are_there() {
        let head = CallHead {
            frame: true,
            timeout_ms: Some(1500),
            tag: Some("job-7".into()),
        };
        let h = call_head(42, &head, 4);
        let wire = joined(&[&h, b"abcd", &cancel(42)]);
        let mut d = Decoder::new(1 << 20);
        // Byte by byte: nothing until the call's last byte.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.extend_from_slice(&[*b]);
            while let Some(f) = d.next(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(
            got,
            vec![
                Frame::Call {
                    id: 42,
                    head,
                    body: Bytes::from_static(b"abcd")
                },
                Frame::Cancel { id: 42 }
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn a_call_without_timeout_or_tag_says_so() {
        let h = call_head(1, &CallHead::default(), 2);
        let mut buf = joined(&[&h, b"{}"]);
        let f = Decoder::new(100).next(&mut buf).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Call {
                id: 1,
                head: CallHead::default(),
                body: Bytes::from_static(b"{}")
            }
        );
    }

    #[test]
    fn answers_carry_status_and_kind_of_body() {
        let mut buf = BytesMut::new();
        put_answer_head(&mut buf, 9, 422, false, 3).unwrap();
        buf.extend_from_slice(b"{1}");
        put_answer_head(&mut buf, 10, 200, true, 0).unwrap();
        let mut d = Decoder::new(100);
        assert_eq!(
            d.next(&mut buf).unwrap(),
            Some(Frame::Answer {
                id: 9,
                status: 422,
                frame: false,
                body: Bytes::from_static(b"{1}")
            })
        );
        assert_eq!(
            d.next(&mut buf).unwrap(),
            Some(Frame::Answer {
                id: 10,
                status: 200,
                frame: true,
                body: Bytes::new()
            })
        );
        assert_eq!(d.next(&mut buf).unwrap(), None);
    }

    #[test]
    fn a_frame_over_the_limit_is_reported_once_and_skipped() {
        let body = vec![7u8; 100];
        let h = call_head(5, &CallHead::default(), body.len());
        let wire = joined(&[&h, &body, &cancel(6)]);
        let mut d = Decoder::new(50);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(7) {
            buf.extend_from_slice(chunk);
            while let Some(f) = d.next(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(
            got,
            vec![
                Frame::TooLarge {
                    id: 5,
                    len: (9 + CALL_HEAD + 100) as u64
                },
                Frame::Cancel { id: 6 }
            ]
        );
    }

    #[test]
    fn a_long_frame_reserves_only_a_bounded_room_ahead() {
        let mut buf = BytesMut::new();
        put_answer_head(&mut buf, 1, 200, false, 1 << 30).unwrap();
        let mut d = Decoder::new(u64::from(u32::MAX));
        assert_eq!(d.next(&mut buf).unwrap(), None);
        assert!(
            buf.capacity() <= FRAME_HEAD + 3 + MAX_RESERVE,
            "{}",
            buf.capacity()
        );
    }

    #[test]
    fn broken_frames_are_errors_not_panics() {
        let mut buf = joined(&[&[9, 0, 0, 0, 77], &[0; 8]]);
        assert_eq!(
            Decoder::new(100).next(&mut buf),
            Err(MuxError::UnknownKind(77))
        );
        let mut buf = joined(&[&[3, 0, 0, 0, KIND_CALL], &[0; 8]]);
        assert!(matches!(
            Decoder::new(100).next(&mut buf),
            Err(MuxError::Short("call", 3))
        ));
        // A call whose tag length runs past its end.
        let mut buf = joined(&[&[9 + 6, 0, 0, 0, KIND_CALL], &[0; 8], &[0, 0, 0, 0, 0, 200]]);
        assert!(matches!(
            Decoder::new(100).next(&mut buf),
            Err(MuxError::Short("call", 15))
        ));
        let mut buf = joined(&[&[9 + 2, 0, 0, 0, KIND_ANSWER], &[0; 8], &[200, 0]]);
        assert!(matches!(
            Decoder::new(100).next(&mut buf),
            Err(MuxError::Short("answer", 11))
        ));
    }

    #[test]
    fn a_write_consumes_whole_buffers_and_the_start_of_the_next() {
        let mut q: VecDeque<Bytes> = [&b"abc"[..], b"de", b"fgh"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        assert_eq!(io_slices(&q).len(), 3);
        consume(&mut q, 4);
        assert_eq!(q, [&b"e"[..], b"fgh"]);
        consume(&mut q, 10);
        assert!(q.is_empty());
    }

    #[test]
    fn a_preface_is_told_from_http_early() {
        assert_eq!(read_preface(b"POST /ex"), Preface::Http);
        assert_eq!(read_preface(b"G"), Preface::Http);
        assert_eq!(read_preface(b"CJM"), Preface::Partial);
        assert_eq!(read_preface(&preface(None)[..9]), Preface::Partial);
        let p = preface(Some("s3cret"));
        assert_eq!(read_preface(&p[..p.len() - 1]), Preface::Partial);
        let mut more = p.to_vec();
        more.extend_from_slice(b"next");
        assert_eq!(
            read_preface(&more),
            Preface::Mux {
                len: p.len(),
                token: b"s3cret".to_vec()
            }
        );
    }
}
