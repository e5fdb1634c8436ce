//! Properties of the host's NDJSON stream reader ([`StreamDecoder`]) and of the per-line
//! decoding ([`StreamLine`]): the same items whatever the pieces the body arrives in, no panic
//! on any bytes, memory held bounded by the line cap, and what a cjm worker writes is read back
//! exactly.

mod common;

use cjm_core::wire::{StreamDecoder, StreamLine, WorkerFlavor};
use cjm_core::{ErrorCategory, PluginError};
use proptest::prelude::*;
use serde_json::Value;

type Item = Result<Value, PluginError>;

/// Everything the decoder yields for `pieces`, fed one by one and drained after each, then
/// closed and drained; with the most bytes it held between pushes.
fn decode(flavor: WorkerFlavor, max_line: usize, pieces: &[&[u8]]) -> (Vec<Item>, bool, usize) {
    let mut d = StreamDecoder::with_max_line(flavor, max_line);
    let mut items = Vec::new();
    let mut held = 0;
    for p in pieces {
        d.push(p);
        while let Some(item) = d.next_item() {
            items.push(item);
        }
        held = held.max(d.buffered());
    }
    d.close();
    while let Some(item) = d.next_item() {
        items.push(item);
    }
    assert!(d.is_over(), "a closed and drained decoder is over");
    assert!(d.next_item().is_none(), "nothing after the end");
    (items, d.ended_cleanly(), held)
}

/// `body` cut at the given points (sorted, deduplicated, within the body).
fn split<'a>(body: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
    at.sort_unstable();
    at.dedup();
    let mut pieces = Vec::new();
    let mut start = 0;
    for a in at {
        pieces.push(&body[start..a]);
        start = a;
    }
    pieces.push(&body[start..]);
    pieces
}

fn flavor() -> impl Strategy<Value = WorkerFlavor> {
    prop_oneof![Just(WorkerFlavor::Cjm), Just(WorkerFlavor::Original)]
}

fn error() -> impl Strategy<Value = PluginError> {
    (
        prop_oneof![
            Just(ErrorCategory::Fatal),
            Just(ErrorCategory::Resource),
            Just(ErrorCategory::UserInput),
            Just(ErrorCategory::Transient),
        ],
        common::text(),
    )
        .prop_map(|(c, m)| PluginError::new(c, m))
}

/// A chunk a cjm worker may send (the SDK refuses reserved ones).
fn chunk() -> impl Strategy<Value = Value> {
    common::json().prop_map(|mut v| {
        if let Value::Object(o) = &mut v {
            o.remove(cjm_core::wire::STREAM_CONTROL_KEY);
        }
        v
    })
}

/// One line of a body: the lines a worker writes, and the ones a broken worker might.
fn line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => chunk().prop_map(|v| v.to_string().into_bytes()),
        1 => (0u64..4).prop_map(|n| StreamLine::End { chunks: n }.to_json().to_string().into_bytes()),
        1 => error().prop_map(|e| StreamLine::Error(e).to_json().to_string().into_bytes()),
        1 => Just(Vec::new()),
        1 => Just(b" \t\r".to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..24),
        1 => common::json().prop_map(|v| format!("{{\"$cjm\":{v}}}").into_bytes()),
        1 => common::text().prop_map(|t| serde_json::json!({"error": t}).to_string().into_bytes()),
    ]
}

/// A body of such lines, with or without a final newline.
fn body() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(line(), 0..12), any::<bool>()).prop_map(|(lines, last_nl)| {
        let mut b = lines.join(&b'\n');
        if last_nl {
            b.push(b'\n');
        }
        b
    })
}

proptest! {
    #![proptest_config(common::config())]

    /// Split invariance: any cut of the body into pieces yields the items of the whole body,
    /// with the same clean or failed end.
    #[test]
    fn pieces_yield_the_items_of_the_whole_body(
        flavor in flavor(),
        body in body(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
        max_line in prop_oneof![Just(usize::MAX), 8usize..256],
    ) {
        let whole = decode(flavor, max_line, &[&body]);
        let pieces = split(&body, &cuts);
        let parts = decode(flavor, max_line, &pieces);
        prop_assert_eq!(&parts.0, &whole.0);
        prop_assert_eq!(parts.1, whole.1);
        // One byte at a time too.
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        let single = decode(flavor, max_line, &bytes);
        prop_assert_eq!(&single.0, &whole.0);
        // At most one error, and it is the last item.
        let errors = whole.0.iter().filter(|i| i.is_err()).count();
        prop_assert!(errors <= 1);
        if errors == 1 {
            prop_assert!(whole.0.last().is_some_and(Result::is_err));
            prop_assert!(!whole.1);
        }
    }

    /// Arbitrary bytes in arbitrary pieces: no panic, and between pushes the decoder holds at
    /// most the line cap (it never keeps an over-long line waiting for its newline).
    #[test]
    fn arbitrary_bytes_never_panic_and_memory_is_bounded(
        flavor in flavor(),
        pieces in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..96), 0..12),
        max_line in 1usize..64,
    ) {
        let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let (items, _, held) = decode(flavor, max_line, &refs);
        prop_assert!(held <= max_line, "held {} bytes with a cap of {}", held, max_line);
        prop_assert!(items.iter().filter(|i| i.is_err()).count() <= 1);
    }

    /// A newline-free body far over the cap, pushed piece by piece: one error, nothing held.
    #[test]
    fn a_line_without_end_is_cut_off_at_the_cap(
        flavor in flavor(),
        piece in 1usize..512,
        max_line in 1usize..1024,
    ) {
        let data = vec![b'x'; piece];
        let mut d = StreamDecoder::with_max_line(flavor, max_line);
        let mut errors = 0;
        for _ in 0..(2 * max_line / piece + 2) {
            d.push(&data);
            while let Some(item) = d.next_item() {
                prop_assert!(item.is_err());
                errors += 1;
            }
            prop_assert!(d.buffered() <= max_line);
        }
        prop_assert_eq!(errors, 1);
        prop_assert!(d.is_over() && !d.ended_cleanly());
    }

    /// Round trip: the chunks a cjm worker writes, then its end line (or an error line), read
    /// back in any pieces: exactly those chunks, then a clean end (or that error).
    #[test]
    fn what_a_cjm_worker_writes_is_read_back(
        chunks in prop::collection::vec(chunk(), 0..10),
        failure in prop::option::of(error()),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut body = Vec::new();
        for c in &chunks {
            body.extend_from_slice(StreamLine::Chunk(c.clone()).to_json().to_string().as_bytes());
            body.push(b'\n');
        }
        let last = match &failure {
            Some(e) => StreamLine::Error(e.clone()),
            None => StreamLine::End { chunks: chunks.len() as u64 },
        };
        body.extend_from_slice(last.to_json().to_string().as_bytes());
        body.push(b'\n');
        let (items, clean, _) = decode(WorkerFlavor::Cjm, usize::MAX, &split(&body, &cuts));
        let mut expected: Vec<Item> = chunks.into_iter().map(Ok).collect();
        if let Some(e) = &failure {
            expected.push(Err(e.clone()));
        }
        prop_assert_eq!(items, expected);
        prop_assert_eq!(clean, failure.is_none());
    }

    /// Per line: a cjm control line reads back as itself; a non-reserved chunk is data for
    /// both flavors unless, for the original, it is a lone `{"error": "..."}`.
    #[test]
    fn stream_lines_round_trip(
        chunk in chunk(),
        n in any::<u64>(),
        e in error(),
    ) {
        for line in [StreamLine::Chunk(chunk.clone()), StreamLine::End { chunks: n }, StreamLine::Error(e)] {
            prop_assert_eq!(StreamLine::interpret(line.to_json(), WorkerFlavor::Cjm), line);
        }
        let lone_error = chunk.as_object().is_some_and(|o| o.len() == 1 && o.get("error").is_some_and(Value::is_string));
        let original = StreamLine::interpret(chunk.clone(), WorkerFlavor::Original);
        if lone_error {
            prop_assert!(matches!(original, StreamLine::Error(_)));
        } else {
            prop_assert_eq!(original, StreamLine::Chunk(chunk));
        }
    }

    /// Per line: any JSON value is interpreted without panic, as data or as a terminal error.
    #[test]
    fn any_json_line_is_interpreted(value in common::json(), flavor in flavor()) {
        let _ = StreamLine::interpret(value, flavor);
    }
}

/// A cjm stream that stops before its end line is a transient error; an original one ends
/// cleanly. A last line without its newline still counts.
#[test]
fn the_end_of_the_body_by_flavor() {
    let body: &[u8] = b"{\"a\":1}\n{\"a\":2}";
    let (items, clean, _) = decode(WorkerFlavor::Original, usize::MAX, &[body]);
    assert_eq!(items.len(), 2);
    assert!(clean);
    let (items, clean, _) = decode(WorkerFlavor::Cjm, usize::MAX, &[body]);
    assert_eq!(items.len(), 3);
    assert!(!clean);
    assert_eq!(
        items[2].as_ref().unwrap_err().category,
        ErrorCategory::Transient
    );
}
