//! Blobs as sealed memfds between the host and a native worker (PROTOCOL.md, "Blobs as
//! memfds"): what crosses as a descriptor, what stays in the body, that a blob built in place is
//! never copied, and that no descriptor is left behind on either side.
//!
//! One test per file where descriptors are counted: other tests in the same process would
//! open and close descriptors of their own meanwhile.

mod common;

use std::os::fd::{AsRawFd, BorrowedFd};

use bytes::Bytes;
use cjm_host::Call;
use cjm_sys::shared_blob::{memfd_of, BlobBuf};
use common::Scratch;
use serde_json::json;

fn blob_call(b: Bytes) -> Call {
    Call::new(vec![json!("blob")]).with_blob(b)
}

fn inode(fd: BorrowedFd<'_>) -> u64 {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    assert!(
        link.to_string_lossy().starts_with("/memfd:"),
        "{}",
        link.display()
    );
    std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn blobs_cross_as_memfds_uncopied_with_no_descriptor_left_and_frames_without_a_channel() {
    let s = Scratch::new();
    s.worker_manifest("w", json!({}));
    let m = s.manager();
    m.load("w", None).await.unwrap();
    let worker = m.pid("w").unwrap();

    // Built in place, then sent as a slice: the answer is that very memfd (same inode), at the
    // same offset, so not a byte was copied either way.
    let mut buf = BlobBuf::new(4 << 20).unwrap();
    buf[4096] = 1;
    buf[(4 << 20) - 1] = 9;
    let built = buf.freeze().unwrap();
    let out = m
        .execute("w", blob_call(built.slice(4096..)))
        .await
        .unwrap();
    assert_eq!(out.value, json!({"total": (4 << 20) - 4096, "blobs": 1}));
    let (sent, _) = memfd_of(&built).unwrap();
    let (back, offset) = memfd_of(&out.blobs[0]).expect("the answer lies in a memfd");
    assert_eq!(
        inode(sent),
        inode(back),
        "the worker answered with the same memfd"
    );
    assert_eq!(offset, 4096);
    assert_eq!(out.blobs[0], built.slice(4096..));

    // A large heap blob is copied into a memfd once and crosses as one; a small one travels
    // in the body and comes back as heap bytes.
    let big = pattern(1 << 20);
    let out = m.execute("w", blob_call(big.clone())).await.unwrap();
    assert!(memfd_of(&out.blobs[0]).is_some());
    assert_eq!(out.blobs[0], big);
    let small = pattern(1000);
    let out = m.execute("w", blob_call(small.clone())).await.unwrap();
    assert!(memfd_of(&out.blobs[0]).is_none());
    assert_eq!(out.blobs[0], small);

    // 10 000 calls, each a memfd both ways, leave no descriptor behind on either side.
    let host = std::process::id();
    let (host_before, worker_before) = (open_fds(host), open_fds(worker));
    for i in 0..10_000u32 {
        let blob = if i % 2 == 0 {
            built.clone()
        } else {
            built.slice(i as usize..)
        };
        let out = m.execute("w", blob_call(blob.clone())).await.unwrap();
        assert_eq!(out.blobs[0].len(), blob.len());
    }
    assert_eq!(open_fds(host), host_before, "host descriptors");
    assert_eq!(open_fds(worker), worker_before, "worker descriptors");
    m.unload_all().await;

    // A host that gives no blob channel (as to a remote worker) sends the same blob in frames.
    let m = s.builder().blob_memfd(false).build().unwrap();
    m.load("w", None).await.unwrap();
    let out = m.execute("w", blob_call(built.clone())).await.unwrap();
    assert!(
        memfd_of(&out.blobs[0]).is_none(),
        "the answer came in the body"
    );
    assert_eq!(out.blobs[0], built);
    m.unload_all().await;
}
