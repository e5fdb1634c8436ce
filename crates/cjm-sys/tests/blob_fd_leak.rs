//! 10 000 sealed memfd blobs passed over `SCM_RIGHTS` and mapped leave no descriptor open on
//! either side (sender and receiver are both this process: `/proc/self/fd` counts both). The
//! only test in its binary, so nothing else opens descriptors meanwhile.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use cjm_sys::blob::{recv_with_fds, sealed_memfd, send_with_fds, MappedBlob};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

fn pass(tx: &UnixStream, rx: &UnixStream, fd: &OwnedFd) -> Vec<OwnedFd> {
    send_with_fds(tx.as_fd(), b"b", &[fd.as_fd()]).expect("send");
    let mut buf = [0u8; 8];
    let (n, fds) = recv_with_fds(rx.as_fd(), &mut buf).expect("recv");
    assert_eq!(&buf[..n], b"b");
    fds
}

#[test]
fn ten_thousand_passes_leak_no_descriptor() {
    let (tx, rx) = UnixStream::pair().expect("pair");
    let data = vec![9u8; 4096];
    // Warm up anything lazily opened, then count.
    drop(pass(
        &tx,
        &rx,
        &sealed_memfd(c"warm", &data).expect("memfd"),
    ));
    let before = open_fds();
    for i in 0..10_000 {
        let fd = sealed_memfd(c"leak-check", &data).expect("memfd");
        let mut got = pass(&tx, &rx, &fd);
        drop(fd); // the sender's copy
        let blob = MappedBlob::map(got.remove(0)).expect("map");
        assert_eq!(blob.as_bytes()[i % 4096], 9);
    }
    assert_eq!(open_fds(), before, "descriptors open after 10 000 passes");
}
