//! Properties of the binary frame (`application/vnd.cjm.frame`): encode then decode gives the
//! value and blobs back; any other bytes, a cut frame, or a frame with extra bytes are a typed
//! [`FrameError`]; declared lengths, however large, are never allocated.
// A counting global allocator (to bound what decoding allocates) needs `unsafe impl`.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use cjm_core::wire::{decode_frame, encode_frame, FrameError, FRAME_MAGIC, MAX_FRAME_HEADER};
use proptest::prelude::*;
use serde_json::{json, Value};

/// The system allocator, noting the largest single request made by the current thread.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to `System` unchanged; the thread-local is a const-initialized
// `Cell` without destructor, which needs no allocation to reach.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Decodes `body`, returning the result and the largest allocation the decoding made.
fn decode_measured(body: Bytes) -> (Result<(Value, Vec<Bytes>), FrameError>, usize) {
    LARGEST.with(|l| l.set(0));
    let r = decode_frame(body);
    (r, LARGEST.with(Cell::get))
}

fn concat(parts: &[Bytes]) -> Vec<u8> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

/// A frame by hand: magic, the given header length field, header bytes, then `rest`.
fn raw_frame(header_len: u32, header: &[u8], rest: &[u8]) -> Bytes {
    let mut b = FRAME_MAGIC.to_vec();
    b.extend_from_slice(&header_len.to_le_bytes());
    b.extend_from_slice(header);
    b.extend_from_slice(rest);
    Bytes::from(b)
}

/// The bound on any allocation while decoding `n` input bytes: the header's JSON may take a few
/// times its size, but nothing scales with a declared length.
fn bound(n: usize) -> usize {
    16 * n + 4096
}

fn blobs() -> impl Strategy<Value = Vec<Bytes>> {
    prop::collection::vec(
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from),
        0..6,
    )
}

proptest! {
    #![proptest_config(common::config())]

    /// Round trip: decode(encode(json, blobs)) == (json, blobs).
    #[test]
    fn encode_then_decode_gives_back_the_value(json in common::json(), blobs in blobs()) {
        let body = concat(&encode_frame(&json, &blobs));
        let (j, b) = decode_frame(Bytes::from(body)).expect("a frame we encoded decodes");
        prop_assert_eq!(j, json);
        prop_assert_eq!(b, blobs);
    }

    /// Any strict prefix of a frame is an error (never a shorter, wrong value); one byte more
    /// is a length mismatch.
    #[test]
    fn cut_or_padded_frames_are_errors(
        json in common::json(),
        blobs in blobs(),
        cut in any::<prop::sample::Index>(),
        extra in any::<u8>(),
    ) {
        let body = concat(&encode_frame(&json, &blobs));
        let at = cut.index(body.len());
        let (r, largest) = decode_measured(Bytes::copy_from_slice(&body[..at]));
        prop_assert!(r.is_err(), "a frame cut at {} of {} decoded", at, body.len());
        prop_assert!(largest <= bound(body.len()));
        let mut longer = body.clone();
        longer.push(extra);
        let total: u64 = blobs.iter().map(|b| b.len() as u64).sum();
        prop_assert_eq!(
            decode_frame(Bytes::from(longer)),
            Err(FrameError::LengthMismatch { declared: total, actual: total + 1 })
        );
    }

    /// Arbitrary bytes, with or without the magic: a result or a typed error, no panic, and
    /// no allocation beyond a small multiple of the input.
    #[test]
    fn arbitrary_bytes_never_panic(
        magic in any::<bool>(),
        exact in any::<bool>(),
        header_len in prop_oneof![any::<u32>(), 0u32..64, Just(u32::MAX), Just(MAX_FRAME_HEADER as u32 + 1)],
        rest in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let body = if magic && exact {
            let split = rest.len() / 2;
            raw_frame(split as u32, &rest[..split], &rest[split..])
        } else if magic {
            raw_frame(header_len, &rest, &[])
        } else {
            Bytes::from(rest.clone())
        };
        let n = body.len();
        let (r, largest) = decode_measured(body);
        if let Ok((_, blobs)) = &r {
            let sum: usize = blobs.iter().map(Bytes::len).sum();
            prop_assert!(sum <= n);
        }
        prop_assert!(largest <= bound(n), "{} bytes allocated for {} input bytes", largest, n);
    }

    /// Headers that are JSON but declare huge or overflowing blob lengths: a typed error,
    /// nothing of the declared size allocated.
    #[test]
    fn huge_declared_lengths_are_not_allocated(
        lens in prop::collection::vec(
            prop_oneof![any::<u64>(), Just(u64::MAX), Just(1u64 << 40), 0u64..16],
            0..8,
        ),
        tail in prop::collection::vec(any::<u8>(), 0..32),
        json in common::json(),
    ) {
        let header = serde_json::to_vec(&json!({"json": json, "blobs": lens})).unwrap();
        let body = raw_frame(header.len() as u32, &header, &tail);
        let n = body.len();
        let (r, largest) = decode_measured(body);
        let declared = lens.iter().try_fold(0u64, |a, &b| a.checked_add(b));
        if declared == Some(tail.len() as u64) {
            let (_, blobs) = r.expect("lengths that add up decode");
            let got: Vec<u64> = blobs.iter().map(|b| b.len() as u64).collect();
            prop_assert_eq!(got, lens);
        } else {
            prop_assert_eq!(
                r,
                Err(FrameError::LengthMismatch {
                    declared: declared.unwrap_or(u64::MAX),
                    actual: tail.len() as u64,
                })
            );
        }
        prop_assert!(largest <= bound(n), "{} bytes allocated for {} input bytes", largest, n);
    }
}

/// A header length field of 4 GiB with 8 bytes behind it: refused before any allocation of
/// that size.
#[test]
fn a_four_gib_header_length_is_refused_without_allocating_it() {
    let (r, largest) = decode_measured(raw_frame(u32::MAX, b"{}", &[]));
    assert!(matches!(r, Err(FrameError::BadHeader(_))), "{r:?}");
    assert!(largest < 4096, "{largest}");
    let (r, largest) = decode_measured(raw_frame(MAX_FRAME_HEADER as u32, b"{}", &[]));
    assert_eq!(r, Err(FrameError::Truncated("the header is cut short")));
    assert!(largest < 4096, "{largest}");
    // The tracker does see the decoder's allocations: a 10 000-character string in the header.
    let header = serde_json::to_vec(&json!({"json": "x".repeat(10_000), "blobs": []})).unwrap();
    let (r, largest) = decode_measured(raw_frame(header.len() as u32, &header, &[]));
    assert!(r.is_ok());
    assert!(largest >= 10_000, "{largest}");
}
