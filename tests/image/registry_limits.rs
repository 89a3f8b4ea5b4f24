//! A registry that sends more of a blob than its manifest declares: `wasmhttp image pull` refuses it as the
//! surplus arrives, rather than holding all of it before the digest check fails, and writes nothing. A
//! registry that accepts connections and never answers is given up on after `--timeout`. An image that
//! declares more than `--max-size` is refused before any blob is pulled. A manifest larger than a pull takes
//! (4 MiB) is refused, whether the registry says its length or streams it; so is a token service's answer
//! past 1 MiB, and a token it gives is used. `wasmhttp image push` reads an error's body only up to a bound,
//! shows the registry's reason, sends the user's credentials to the registry alone, and pushes with the
//! token a registry's token service gives for pull and push.

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
/// The most a pull takes of a token service's answer.
const MAX_TOKEN_SIZE: usize = 1 << 20;
/// The most [`fake_registry`] sends of a body of spaces.
const STREAMED_AT_MOST: usize = 64 << 20;

#[test]
fn a_manifest_larger_than_a_pull_takes_is_refused_as_it_arrives() {
    for chunked in [false, true] {
        let (host, server) = fake_registry(move |_, head| {
            if head.contains("/manifests/") {
                Reply::Spaces {
                    chunked,
                    status: "200 OK",
                }
            } else {
                Reply::Answer(answer("200 OK", "", ""))
            }
        });
        let reference = format!("{host}/hello:v1");
        let said = pull_fails(&reference);
        assert!(
            said.contains(&format!(
                "sent a manifest for {reference} larger than {MAX_MANIFEST_SIZE} bytes"
            )),
            "chunked {chunked}: {said}"
        );
        // The client stopped reading at the bound (or, told the length, before reading); what the server
        // got rid of beyond it sat in socket buffers.
        let sent = server.join().unwrap();
        assert!(
            sent < STREAMED_AT_MOST,
            "chunked {chunked}: the client read all {sent} bytes"
        );
    }
}

#[test]
fn a_pull_asks_the_token_service_the_registry_names_uses_the_token_and_bounds_the_answer() {
    for endless_token in [false, true] {
        // The registry names a token service on itself. A manifest request that carries the token is
        // answered 404, so that "not found" shows the token was sent; anything else gets the challenge.
        let (host, server) = fake_registry(move |host, head| {
            let has = |text: &str| head.to_ascii_lowercase().contains(text);
            let for_token = head.starts_with("GET /token?");
            if for_token && endless_token {
                Reply::Spaces {
                    chunked: true,
                    status: "200 OK",
                }
            } else if for_token && has("scope=repository%3ahello%3apull") && has("service=fake") {
                Reply::Answer(answer("200 OK", "", r#"{"token":"t0ken"}"#))
            } else if head.contains("/manifests/") && has("authorization: bearer t0ken") {
                Reply::Last(answer("404 Not Found", "", ""))
            } else {
                let challenge = format!(
                    "WWW-Authenticate: Bearer realm=\"http://{host}/token\",service=\"fake\"\r\n"
                );
                Reply::Answer(answer("401 Unauthorized", &challenge, ""))
            }
        });
        let reference = format!("{host}/hello:v1");
        let said = pull_fails(&reference);
        let sent = server.join().unwrap();
        if endless_token {
            assert!(
                said.contains(&format!(
                    "token service sent more than {MAX_TOKEN_SIZE} bytes"
                )),
                "{said}"
            );
            assert!(sent < STREAMED_AT_MOST, "the client read all {sent} bytes");
        } else {
            assert!(
                said.contains(&format!("{reference} not found in registry {host}")),
                "{said}"
            );
        }
    }
}

#[test]
fn a_push_uses_the_token_bounds_errors_and_keeps_credentials_on_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let docker_config = dir.path().join("docker");
    std::fs::create_dir_all(&docker_config).unwrap();
    let env = [("DOCKER_CONFIG", docker_config.as_path())];
    let push = |host: &str| {
        let reference = format!("{host}/hello:v1");
        let auth = STANDARD.encode("ci:s3cret");
        std::fs::write(
            docker_config.join("config.json"),
            format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        let tar = dir.path().join("hello.tar");
        build("hello", &reference, "layer", &tar);
        image_push(&tar, &reference, &env)
    };
    // Whether a request carries the user's credentials.
    fn carries(head: &str) -> bool {
        let credentials = format!("authorization: basic {}", STANDARD.encode("ci:s3cret"));
        head.to_ascii_lowercase()
            .contains(&credentials.to_ascii_lowercase())
    }

    // Blobs are missing only to a client with the credentials (so the upload shows they were sent); the
    // upload goes to the same server under another name, where credentials must not go.
    let (host, server) = fake_registry(move |host, head| {
        let port = host.rsplit(':').next().unwrap();
        if head.starts_with("HEAD ") && carries(head) {
            Reply::Answer(answer("404 Not Found", "", ""))
        } else if head.starts_with("POST ") && carries(head) {
            let location = format!("Location: http://localhost:{port}/upload/1?_state=x\r\n");
            Reply::Answer(answer("202 Accepted", &location, ""))
        } else if head.starts_with("PUT /upload/1?_state=x&digest=sha256%3A") && !carries(head) {
            Reply::Answer(answer("201 Created", "", ""))
        } else if head.starts_with("PUT /v2/hello/manifests/v1 ") && carries(head) {
            let reason =
                r#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest\ninvalid"}]}"#;
            Reply::Last(answer("400 Bad Request", "", reason))
        } else if head.starts_with("GET /v2/ ") {
            Reply::Answer(answer("200 OK", "", ""))
        } else {
            Reply::Last(answer("418 I'm a teapot", "", ""))
        }
    });
    let said = fails(push(&host));
    server.join().unwrap();
    assert!(
        said.contains(&format!(
            "registry {host} answered 400 Bad Request for the manifest: MANIFEST_INVALID: manifest\\ninvalid"
        )),
        "{said}"
    );

    // A registry with a token service: the push asks it for pull and push rights with the user's
    // credentials and sends the registry the token instead; a blob the registry has is not uploaded.
    let (host, server) = fake_registry(|host, head| {
        let bearer = head
            .to_ascii_lowercase()
            .contains("authorization: bearer t0ken");
        if head.starts_with("GET /token?scope=repository%3Ahello%3Apull%2Cpush&service=fake ")
            && carries(head)
        {
            Reply::Answer(answer("200 OK", "", r#"{"token":"t0ken"}"#))
        } else if head.starts_with("HEAD /v2/hello/blobs/sha256:") && bearer && !carries(head) {
            Reply::Answer(answer("200 OK", "", ""))
        } else if head.starts_with("PUT /v2/hello/manifests/v1 ") && bearer && !carries(head) {
            Reply::Last(answer("201 Created", "", ""))
        } else {
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"http://{host}/token\",service=\"fake\"\r\n"
            );
            Reply::Answer(answer("401 Unauthorized", &challenge, ""))
        }
    });
    ok(push(&host), "push through a token service");
    server.join().unwrap();

    // An error whose body never ends is read up to a bound, then reported by its status.
    let (host, server) = fake_registry(|_, head| {
        if head.starts_with("GET /v2/ ") {
            Reply::Answer(answer("200 OK", "", ""))
        } else {
            Reply::Spaces {
                chunked: true,
                status: "500 Internal Server Error",
            }
        }
    });
    let said = fails(push(&host));
    let sent = server.join().unwrap();
    assert!(
        said.contains(&format!(
            "registry {host} answered 500 Internal Server Error for blob sha256:"
        )),
        "{said}"
    );
    assert!(sent < STREAMED_AT_MOST, "the client read all {sent} bytes");
}

/// `wasmhttp image pull REFERENCE`, which must fail: its one line, once checked that it wrote nothing.
fn pull_fails(reference: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pulled.tar");
    let said = fails(image_pull(reference, &out, &[]));
    assert!(!out.exists(), "nothing written when the pull fails");
    said
}

/// What [`fake_registry`] answers a request with.
enum Reply {
    /// A whole answer, head and body.
    Answer(String),
    /// The same, and the registry stops.
    Last(String),
    /// An answer of `status` whose body is spaces, up to [`STREAMED_AT_MOST`] bytes or until the client goes
    /// away, chunked or with that length declared; then the registry stops.
    Spaces { chunked: bool, status: &'static str },
}

/// An HTTP/1.1 answer of `status` with `headers` (each line ending in CRLF) and `body`, its connection
/// closed after it.
fn answer(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A registry on a thread of its own that answers each request with `reply(its host, the request's head)`
/// once it has read the request's body (its declared length), a connection per request, until a reply stops
/// it (or 16 requests); the thread returns how many bytes of spaces it sent.
fn fake_registry(
    reply: impl Fn(&str, &str) -> Reply + Send + 'static,
) -> (String, std::thread::JoinHandle<usize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let server_host = host.clone();
    let server = std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        for connection in listener.incoming().take(16) {
            let mut connection = std::io::BufReader::new(connection.unwrap());
            let mut head = String::new();
            while connection.read_line(&mut head).unwrap() > 2 {}
            let length = head
                .lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, value)| value.trim().parse::<u64>().unwrap());
            std::io::copy(
                &mut std::io::Read::take(&mut connection, length),
                &mut std::io::sink(),
            )
            .unwrap();
            let stream = connection.get_mut();
            let (chunked, status) = match reply(&server_host, &head) {
                Reply::Answer(text) => {
                    stream.write_all(text.as_bytes()).unwrap();
                    continue;
                }
                Reply::Last(text) => {
                    stream.write_all(text.as_bytes()).unwrap();
                    return 0;
                }
                Reply::Spaces { chunked, status } => (chunked, status),
            };
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_string()
            } else {
                format!("Content-Length: {STREAMED_AT_MOST}")
            };
            let head = format!("HTTP/1.1 {status}\r\n{framing}\r\nConnection: close\r\n\r\n");
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
        0
    });
    (host, server)
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
