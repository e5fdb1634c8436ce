//! Sealed memfd blobs over `SCM_RIGHTS`: the bytes arrive intact and unsealed descriptors are
//! refused. The leak check over 10 000 passes is `blob_fd_leak.rs`, alone in its process so
//! that no other test opens descriptors meanwhile.
// Tests of cjm-sys, the crate where `unsafe` lives: they build raw descriptors to attack it.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use cjm_sys::blob::{recv_with_fds, seal, sealed_memfd, send_with_fds, MappedBlob};

fn pass(tx: &UnixStream, rx: &UnixStream, fd: &OwnedFd) -> Vec<OwnedFd> {
    send_with_fds(tx.as_fd(), b"b", &[fd.as_fd()]).expect("send");
    let mut buf = [0u8; 8];
    let (n, fds) = recv_with_fds(rx.as_fd(), &mut buf).expect("recv");
    assert_eq!(&buf[..n], b"b");
    fds
}

#[test]
fn a_sealed_blob_arrives_as_the_same_bytes() {
    let (tx, rx) = UnixStream::pair().expect("pair");
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let fd = sealed_memfd(c"test-blob", &data).expect("memfd");
    let mut got = pass(&tx, &rx, &fd);
    assert_eq!(got.len(), 1);
    let blob = MappedBlob::map(got.remove(0)).expect("map");
    assert_eq!(blob.len(), data.len());
    assert_eq!(blob.as_bytes(), &data[..]);
    let empty = MappedBlob::map(sealed_memfd(c"empty", b"").expect("memfd")).expect("map");
    assert!(empty.is_empty() && empty.as_bytes().is_empty());
}

#[test]
fn an_unsealed_or_foreign_descriptor_is_refused() {
    let name = c"unsealed";
    // SAFETY: a valid C string; the returned descriptor is owned at once.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(raw >= 0);
    // SAFETY: fresh descriptor, owned by nobody else.
    let fd: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) };
    let unsealed = fd.try_clone().expect("dup");
    let e = MappedBlob::map(unsealed).expect_err("unsealed memfd refused");
    assert!(e.to_string().contains("not sealed"), "{e}");
    seal(fd.as_fd()).expect("seal");
    assert!(MappedBlob::map(fd).is_ok());
    let file = std::fs::File::open("/proc/self/stat").expect("open");
    assert!(
        MappedBlob::map(OwnedFd::from(file)).is_err(),
        "a plain file is no blob"
    );
}

#[test]
fn received_descriptors_are_close_on_exec() {
    let (tx, rx) = UnixStream::pair().expect("pair");
    let fd = sealed_memfd(c"cloexec", b"x").expect("memfd");
    let got = pass(&tx, &rx, &fd);
    for f in &got {
        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(f), libc::F_GETFD) };
        assert!(flags & libc::FD_CLOEXEC != 0);
    }
}
