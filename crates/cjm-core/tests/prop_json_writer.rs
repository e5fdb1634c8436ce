//! The fast JSON writer (`wire::to_json_vec`, sonic-rs) writes exactly the bytes
//! `serde_json::to_vec` writes, for any JSON value: hosts and workers on either writer agree.

mod common;

use cjm_core::wire::{append_json, to_json_vec};
use proptest::prelude::*;

proptest! {
    #![proptest_config(common::config())]

    #[test]
    fn any_value_is_written_byte_for_byte_as_serde_json_writes_it(v in common::json()) {
        let expected = serde_json::to_vec(&v).expect("a Value serializes");
        prop_assert_eq!(&to_json_vec(&v).expect("a Value serializes"), &expected);
        let mut buf = bytes::BytesMut::new();
        append_json(&mut buf, &v).expect("a Value serializes");
        prop_assert_eq!(&buf[..], &expected[..]);
    }
}
