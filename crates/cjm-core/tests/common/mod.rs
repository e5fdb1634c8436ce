//! Strategies and settings shared by the property tests.
//!
//! Case counts: proptest's default (256) under `cargo test`; `cargo xtask fuzz` sets
//! `PROPTEST_CASES` (at least 100 000), which `ProptestConfig::default()` reads.

#![allow(dead_code)]

use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// The settings of every property: the default case count (or `PROPTEST_CASES`), and no
/// regression files written into the source tree (found failures become plain tests).
pub(crate) fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any finite `f64` (JSON has no NaN or infinity).
pub(crate) fn finite_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_map(|x| if x.is_finite() { x } else { 0.5 }),
        (-1.0e6..1.0e6f64),
        Just(0.0),
        Just(-0.0),
        Just(1e19),
        Just(-1.0),
    ]
}

/// A JSON number of any of the three kinds serde_json keeps.
pub(crate) fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite_f64().prop_map(|x| Number::from_f64(x).map_or(Value::Null, Value::Number)),
        (0u64..100).prop_map(Value::from),
    ]
}

/// Short strings, with the characters that matter to parsers and logs.
pub(crate) fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_.]{0,12}",
        ".{0,16}",
        Just(String::new()),
        Just("$cjm".to_owned()),
        Just("\0\n\r\u{1b}[31m".to_owned()),
    ]
}

/// Any JSON value, nested a few levels.
pub(crate) fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A JSON object whose values are any JSON.
pub(crate) fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((text(), json()), 0..8).prop_map(|kv| kv.into_iter().collect())
}
