//! A JSON body written into memory that keeps its pages between bodies.
//!
//! sonic-rs, the body writer, reserves room for the worst case of each string before it
//! escapes it: six bytes per byte. For an 8 MiB string that is a 48 MiB buffer, above the
//! largest size glibc's allocator serves from its heap, so every large body went to a fresh
//! mapping and faulted each of its pages in as it was written (2 048 faults for 8 MiB, about
//! as long as writing it). A [`BodyWriter`] starts in a plain `Vec`, and moves to a pooled
//! mapping ([`bufpool`](crate::bufpool)) once the body would pass [`POOL_MIN`]: the mapping may
//! be as large as the reservation asks, only the pages written are touched, and those are
//! still there for the next large body.

use std::io;
use std::mem::MaybeUninit;

use bytes::Bytes;

use crate::bufpool::{PooledBuf, POOL_MIN};

/// A body being written: small in a `Vec`, large in a pooled mapping.
#[derive(Debug, Default)]
pub struct BodyWriter {
    small: Vec<u8>,
    large: Option<PooledBuf>,
}

impl BodyWriter {
    /// An empty body.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes written so far.
    pub fn len(&self) -> usize {
        self.large
            .as_ref()
            .map_or(self.small.len(), PooledBuf::filled)
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body. A large one gives its mapping back to the pool when the last reference to it
    /// is dropped.
    pub fn finish(self) -> Bytes {
        match self.large {
            Some(b) => {
                let filled = b.filled();
                b.freeze(filled)
            }
            None => Bytes::from(self.small),
        }
    }

    /// Room for at least `additional` more bytes, to be written in place and then counted with
    /// [`commit`](Self::commit).
    fn spare(&mut self, additional: usize) -> io::Result<&mut [MaybeUninit<u8>]> {
        let need = self
            .len()
            .checked_add(additional)
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "body size overflows"))?;
        match self.large.take() {
            Some(b) if need <= b.len() => self.large = Some(b),
            // Grown (rarely: the first reservation is usually the large one) into a mapping
            // twice as large; the old one goes back to the pool.
            Some(b) => match PooledBuf::take(need.max(b.len().saturating_mul(2))) {
                Ok(mut bigger) => {
                    bigger.push(&b[..b.filled()]);
                    drop(b.freeze(0));
                    self.large = Some(bigger);
                }
                Err(e) => {
                    self.large = Some(b);
                    return Err(e);
                }
            },
            // Moved out of the `Vec`; should no mapping be had, the `Vec` grows instead.
            None if need > POOL_MIN => {
                if let Ok(mut b) = PooledBuf::take(need.max(2 * POOL_MIN)) {
                    b.push(&self.small);
                    self.small = Vec::new();
                    self.large = Some(b);
                }
            }
            None => {}
        }
        Ok(match &mut self.large {
            Some(b) => b.spare_mut(),
            None => {
                self.small.reserve(additional);
                self.small.spare_capacity_mut()
            }
        })
    }

    /// Counts `n` bytes written through [`spare`](Self::spare) as part of the body.
    ///
    /// # Safety
    /// The first `n` bytes of the last spare slice were written.
    unsafe fn commit(&mut self, n: usize) {
        match &mut self.large {
            // SAFETY: the caller wrote those bytes, within the spare length.
            Some(b) => unsafe { b.advance(n) },
            // SAFETY: as above, within the `Vec`'s capacity.
            None => unsafe { self.small.set_len(self.small.len() + n) },
        }
    }
}

impl io::Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let spare = self.spare(buf.len())?;
        for (dst, &src) in spare.iter_mut().zip(buf) {
            dst.write(src);
        }
        // SAFETY: the loop wrote `buf.len()` bytes; `spare` gave at least that many.
        unsafe { self.commit(buf.len()) };
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl sonic_rs::writer::WriteExt for BodyWriter {
    fn reserve_with(&mut self, additional: usize) -> io::Result<&mut [MaybeUninit<u8>]> {
        self.spare(additional)
    }

    unsafe fn flush_len(&mut self, additional: usize) -> io::Result<()> {
        // SAFETY: sonic-rs's contract: `additional` bytes of the reserved room were written.
        unsafe { self.commit(additional) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn small_bodies_stay_in_a_vec_and_large_ones_move_to_a_mapping() {
        let _pool = crate::bufpool::tests::exclusive();
        let mut w = BodyWriter::new();
        w.write_all(b"{\"a\":").unwrap();
        assert!(w.large.is_none());
        let big = vec![b'x'; 3 << 20];
        w.write_all(&big).unwrap();
        assert!(w.large.is_some());
        w.write_all(b"}").unwrap();
        assert_eq!(w.len(), 5 + (3 << 20) + 1);
        let body = w.finish();
        assert_eq!(&body[..5], b"{\"a\":");
        assert!(body[5..body.len() - 1].iter().all(|&b| b == b'x'));
        assert_eq!(body[body.len() - 1], b'}');

        // Grown past its mapping, it keeps what it held.
        let mut w = BodyWriter::new();
        for i in 0..40u8 {
            w.write_all(&[i; 1 << 18]).unwrap();
        }
        let body = w.finish();
        assert_eq!(body.len(), 40 << 18);
        assert!((0..40u8).all(|i| body[(i as usize) << 18] == i));

        let mut w = BodyWriter::new();
        w.write_all(b"[1,2]").unwrap();
        assert!(w.large.is_none());
        assert_eq!(&w.finish()[..], b"[1,2]");
    }

    #[test]
    fn sonic_writes_what_serde_json_writes() {
        let _pool = crate::bufpool::tests::exclusive();
        let text = "é\"\\\n".repeat(1 << 18) + &"x".repeat(2 << 20);
        let value = serde_json::json!({"text": text, "n": [1, 2.5, null]});
        let mut w = BodyWriter::new();
        sonic_rs::to_writer(&mut w, &value).unwrap();
        assert!(w.large.is_some());
        assert_eq!(&w.finish()[..], &serde_json::to_vec(&value).unwrap()[..]);
    }
}
