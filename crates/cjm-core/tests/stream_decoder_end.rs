//! How a [`StreamDecoder`] tells a body cut short (the worker went away) from a line that broke
//! the rules, which the host needs to say the first as a lost connection.

use cjm_core::wire::{StreamDecoder, WorkerFlavor};
use cjm_core::ErrorCategory;

/// Pushes `body`, closes, and returns the last item with the decoder.
fn run(flavor: WorkerFlavor, body: &[u8]) -> (Vec<bool>, Option<ErrorCategory>, StreamDecoder) {
    let mut d = StreamDecoder::new(flavor);
    d.push(body);
    d.close();
    let mut oks = Vec::new();
    let mut err = None;
    while let Some(item) = d.next_item() {
        match item {
            Ok(_) => oks.push(true),
            Err(e) => err = Some(e.category),
        }
    }
    (oks, err, d)
}

#[test]
fn a_cjm_body_without_its_end_line_is_cut_short() {
    let (oks, err, d) = run(WorkerFlavor::Cjm, b"{\"chunk\":1}\n{\"chunk\":2}\n");
    assert_eq!(oks.len(), 2);
    assert_eq!(err, Some(ErrorCategory::Transient));
    assert!(d.ended_without_end(), "a body cut before the end line");
    assert!(d.is_over() && !d.ended_cleanly());
}

#[test]
fn a_rule_broken_is_not_cut_short() {
    let (_, err, d) = run(WorkerFlavor::Cjm, b"not json\n");
    assert_eq!(err, Some(ErrorCategory::Fatal));
    assert!(
        !d.ended_without_end(),
        "a bad line is the worker's error, not a lost body"
    );
}

#[test]
fn a_clean_end_is_not_cut_short() {
    let body = format!(
        "{{\"chunk\":1}}\n{{\"{}\":{{\"end\":{{\"chunks\":1}}}}}}\n",
        cjm_core::wire::STREAM_CONTROL_KEY
    );
    let (oks, err, d) = run(WorkerFlavor::Cjm, body.as_bytes());
    assert_eq!((oks.len(), err), (1, None));
    assert!(d.ended_cleanly() && !d.ended_without_end());
    let (oks, err, d) = run(WorkerFlavor::Original, b"{\"a\":1}\n");
    assert_eq!((oks.len(), err), (1, None));
    assert!(d.ended_cleanly() && !d.ended_without_end());
}

#[test]
fn lines_split_anywhere_are_found_by_the_scan() {
    // Many lines in one push, then one line in many pushes: the newline search resumes where
    // it stopped and finds every line once.
    let mut d = StreamDecoder::new(WorkerFlavor::Original);
    let body: String = (0..1000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    d.push(body.as_bytes());
    let mut n = 0;
    while let Some(item) = d.next_item() {
        assert_eq!(item.ok().and_then(|v| v["n"].as_u64()), Some(n));
        n += 1;
    }
    assert_eq!(n, 1000);
    for b in b"{\"n\":1000}\n" {
        assert!(d.next_item().is_none());
        d.push(&[*b]);
    }
    let last = d.next_item().and_then(Result::ok);
    assert_eq!(last.and_then(|v| v["n"].as_u64()), Some(1000));
}
