//! A registry that sends more of a blob than its manifest declares: `wasmhttp image pull` refuses it as the
//! surplus arrives, rather than holding all of it before the digest check fails, and writes nothing. A
//! registry that accepts connections and never answers is given up on after `--timeout`. An image that
//! declares more than `--max-size` is refused before any blob is pulled. A manifest larger than a pull takes
//! (4 MiB) is refused, whether the registry says its length or streams it.

use super::*;

#[test]
fn a_blob_longer_than_its_manifest_declares_is_refused_as_it_arrives() {
    let registry = Registry::start();
    let (reference, _) = build_and_push(&registry, "hello", "hello", "layer");
    // The largest blob in the registry's storage is the wasm layer; it grows (sparse) to 1 GiB, all of
    // which the registry then serves.
    let blobs = registry.dir.path().join("data/docker/registry/v2/blobs");
    let layer = walk(&blobs)
        .into_iter()
        .filter(|p| p.ends_with("data"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("the pushed blobs");
    let declared = std::fs::metadata(&layer).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&layer)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pulled.tar");
    let said = fails(image_pull(&reference, &out, &[]));
    assert!(
        said.contains(&format!(
            "the registry sent more than the {declared} bytes the manifest declares"
        )),
        "{said}"
    );
    assert!(!out.exists(), "nothing written when the pull fails");
}

#[test]
fn an_image_declaring_more_than_max_size_is_refused_before_its_blobs_are_pulled() {
    let registry = Registry::start();
    let (reference, _) = build_and_push(&registry, "hello", "hello", "layer");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pulled.tar");
    let path = out.to_str().unwrap();
    let said = fails(wasmhttp(&[
        "image",
        "pull",
        &reference,
        "-o",
        path,
        "--plain-http",
        "--max-size",
        "1Ki",
    ]));
    assert!(
        said.contains("bytes of config and layers, more than --max-size allows (1024 bytes)"),
        "{said}"
    );
    assert!(!out.exists(), "nothing written when the pull is refused");
    // The default leaves room for it.
    ok(
        image_pull(&reference, &out, &[]),
        "pull with the default --max-size",
    );
    assert!(out.exists());
}

#[test]
fn a_registry_that_never_answers_is_given_up_on_after_the_timeout() {
    // Accepts every connection and holds it, saying nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let reference = format!("{}/hello:v1", listener.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        listener
            .incoming()
            .take(2)
            .map(|c| c.unwrap())
            .collect::<Vec<_>>()
    });
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("hello.tar");
    build("hello", "example.com/hello:v1", "layer", &tar);
    let out = dir.path().join("pulled.tar");
    let timeout = ["--timeout", "1s"];
    for (command, args) in [
        (
            "pull",
            vec![reference.as_str(), "-o", out.to_str().unwrap()],
        ),
        ("push", vec![tar.to_str().unwrap(), reference.as_str()]),
    ] {
        let started = std::time::Instant::now();
        let all = [&["image", command, "--plain-http"], &args[..], &timeout].concat();
        let said = fails(wasmhttp_with(&all, &[]));
        assert!(
            said.contains("operation timed out (no answer within --timeout 1s)"),
            "{command}: {said}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{command} gave up after {:?}",
            started.elapsed()
        );
    }
    assert!(!out.exists(), "nothing written when the pull fails");
    drop(held.join().unwrap());
}

/// The most a pull takes of a manifest.
const MAX_MANIFEST_SIZE: usize = 4 << 20;
/// The most [`manifest_server`] sends of one.
const STREAMED_AT_MOST: usize = 64 << 20;

#[test]
fn a_manifest_larger_than_a_pull_takes_is_refused_as_it_arrives() {
    for chunked in [false, true] {
        let (reference, server) = manifest_server(chunked);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pulled.tar");
        let said = fails(image_pull(&reference, &out, &[]));
        assert!(
            said.contains(&format!(
                "sent a manifest for {reference} larger than {MAX_MANIFEST_SIZE} bytes"
            )),
            "chunked {chunked}: {said}"
        );
        assert!(!out.exists(), "nothing written when the pull fails");
        // The client stopped reading at the bound (or, told the length, before reading); what the server
        // got rid of beyond it sat in socket buffers.
        let sent = server.join().unwrap();
        assert!(
            sent < STREAMED_AT_MOST,
            "chunked {chunked}: the client read all {sent} bytes"
        );
    }
}

/// A registry that answers `/v2/`, then sends a manifest of spaces up to [`STREAMED_AT_MOST`] bytes or until
/// the client goes away, chunked or with its length declared; its thread returns how much it sent.
fn manifest_server(chunked: bool) -> (String, std::thread::JoinHandle<usize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let reference = format!("{}/hello:v1", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        for connection in listener.incoming().take(4) {
            let mut connection = std::io::BufReader::new(connection.unwrap());
            let mut head = String::new();
            while connection.read_line(&mut head).unwrap() > 2 {}
            let stream = connection.get_mut();
            if !head.contains("/manifests/") {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .unwrap();
                continue;
            }
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_string()
            } else {
                format!("Content-Length: {STREAMED_AT_MOST}")
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\
                 {framing}\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).unwrap();
            let spaces = [b' '; 0x10000];
            let chunk = if chunked {
                [b"10000\r\n".as_slice(), &spaces, b"\r\n"].concat()
            } else {
                spaces.to_vec()
            };
            let mut sent = 0;
            while sent < STREAMED_AT_MOST && stream.write_all(&chunk).is_ok() {
                sent += spaces.len();
            }
            return sent;
        }
        panic!("no manifest request");
    });
    (reference, server)
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
