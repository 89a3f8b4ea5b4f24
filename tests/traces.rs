//! OpenTelemetry traces as an operator meets them: the node configuration names an OTLP/HTTP collector (a
//! receiver of the test's own, decoding with the `opentelemetry-proto` package), each request becomes a
//! span in the client's trace, and the guest's outgoing request carries that trace on.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};
use wasmhttp_tests::containerd::*;
use wasmhttp_tests::{KillOnDrop, get, request, workspace};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// Starts the receiver writing spans as JSON lines to `out`, on a free port; returns it and the port.
fn receiver(out: &std::path::Path) -> (KillOnDrop, u16) {
    let python = workspace().join("target/test-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test-venv.sh (scripts/test.sh does)",
        python.display()
    );
    let port = free_port();
    let child = Command::new(python)
        .arg(workspace().join("tests/otlp_receiver.py"))
        .arg(out)
        .arg(port.to_string())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the OTLP receiver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (KillOnDrop(child), port)
}

/// A one-request upstream on 127.0.0.1: returns its address and a thread giving the request head it got.
fn upstream() -> (SocketAddr, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut head = String::new();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .unwrap();
        head
    });
    (addr, seen)
}

/// The spans received so far whose trace id is `trace`.
fn spans_of(out: &std::path::Path, trace: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|span| span["trace_id"] == trace)
        .collect()
}

#[test]
fn spans_reach_the_collector_in_the_clients_trace_and_the_guest_passes_it_on() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "probe");
    let out = containerd.dir.path().join("spans.jsonl");
    let (_receiver, collector) = receiver(&out);
    let node = containerd.dir.path().join("node.toml");
    // Ratio 0: only requests whose client sent a sampled traceparent are traced.
    std::fs::write(
        &node,
        format!("[tracing]\nendpoint = \"http://127.0.0.1:{collector}\"\nsample-ratio = 0\n"),
    )
    .unwrap();
    let (upstream, seen) = upstream();
    let port = free_port();
    let allowed = format!("wasmhttp.io/allowed-outbound-hosts={upstream}");
    run_service(
        &containerd,
        &image,
        "traced",
        port,
        &[
            "--runtime-config-path",
            node.to_str().unwrap(),
            "--annotation",
            &allowed,
            "--annotation",
            "wasmhttp.io/max-request-body=1Ki",
        ],
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_200(addr);
    let traceparent = format!("traceparent: 00-{TRACE}-{CLIENT_SPAN}-01\r\n");
    let target = format!("/?fetch=http://{upstream}/");
    let reply = request(addr, "GET", &target, &traceparent, b"");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "fetch allowed: 200 OK\n")
    );
    let head = seen.join().unwrap().to_ascii_lowercase();
    let passed_on = head
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .unwrap_or_else(|| panic!("the outgoing request carries no traceparent:\n{head}"))
        .trim()
        .to_string();
    assert!(
        passed_on.starts_with(&format!("00-{TRACE}-")) && passed_on.ends_with("-01"),
        "{passed_on}"
    );
    let refused = request(addr, "POST", "/", &traceparent, &[b'x'; 4096]);
    assert_eq!(refused.status, 413);

    let started = Instant::now();
    let spans = loop {
        let spans = spans_of(&out, TRACE);
        if spans.len() >= 2 || started.elapsed() > Duration::from_secs(20) {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(spans.len(), 2, "{spans:?}");
    let served = spans
        .iter()
        .find(|s| s["attributes"]["http.request.method"] == "GET")
        .unwrap();
    assert_eq!(served["parent_span_id"], CLIENT_SPAN, "{served}");
    assert_eq!(
        passed_on,
        format!("00-{TRACE}-{}-01", served["span_id"].as_str().unwrap()),
        "the guest's request is a child of the request's span"
    );
    assert_eq!(
        served["attributes"]["http.response.status_code"], 200,
        "{served}"
    );
    assert_eq!(served["attributes"]["url.path"], "/", "{served}");
    assert_eq!(served["attributes"]["container.id"], "traced", "{served}");
    assert_eq!(served["resource"]["service.name"], "traced", "{served}");
    assert_eq!(served["kind"], 2, "a server span: {served}");
    let refused = spans
        .iter()
        .find(|s| s["attributes"]["http.request.method"] == "POST")
        .unwrap();
    assert_eq!(
        refused["attributes"]["wasmhttp.refusal"], "body-too-large",
        "{refused}"
    );
    assert_eq!(
        refused["attributes"]["http.response.status_code"], 413,
        "{refused}"
    );

    // A request without a sampled parent is not traced at ratio 0.
    assert_eq!(get(addr, "/").status, 200);
    std::thread::sleep(Duration::from_secs(2));
    let all = std::fs::read_to_string(&out).unwrap();
    assert_eq!(all.lines().count(), 2, "{all}");
    kill_now(&containerd, "traced");
}

#[test]
fn an_unreachable_collector_fails_no_request_and_bad_settings_fail_create_naming_the_key() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "hello");
    let dir = containerd.dir.path();
    let closed = free_port();
    let node = dir.join("down.toml");
    std::fs::write(
        &node,
        format!("[tracing]\nendpoint = \"http://127.0.0.1:{closed}\"\n"),
    )
    .unwrap();
    let port = free_port();
    run_service(
        &containerd,
        &image,
        "down",
        port,
        &["--runtime-config-path", node.to_str().unwrap()],
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_200(addr);
    for _ in 0..50 {
        assert_eq!(get(addr, "/").status, 200);
    }
    kill_now(&containerd, "down");
    containerd.ctr_ok(&["task", "rm", "down"]);
    containerd.ctr_ok(&["container", "rm", "down"]);

    for (file, text, says) in [
        (
            "exporter.toml",
            "[tracing]\nexporter = \"zipkin\"\n",
            "[tracing] exporter: \"zipkin\"",
        ),
        (
            "endpoint.toml",
            "[tracing]\nendpoint = \"https://c:4318\"\n",
            "[tracing] endpoint:",
        ),
        (
            "ratio.toml",
            "[tracing]\nsample-ratio = 2\n",
            "[tracing] sample-ratio:",
        ),
        ("port.toml", "[metrics]\nport = 0\n", "[metrics] port:"),
    ] {
        let node = dir.join(file);
        std::fs::write(&node, text).unwrap();
        let id = file.trim_end_matches(".toml");
        let output = ctr_run(
            &containerd,
            "--rm",
            &[
                "--net-host",
                "--runtime-config-path",
                node.to_str().unwrap(),
                &image,
                id,
            ],
        );
        let _ = containerd.ctr(&["container", "rm", id]);
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && err.contains(says),
            "{file}: {err}"
        );
    }
    containerd.assert_shims_exit();
}
