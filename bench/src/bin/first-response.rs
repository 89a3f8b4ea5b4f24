//! Times a server from process spawn to its first 200 response on 127.0.0.1:PORT.
//! Usage: first-response PORT RUNS -- COMMAND ARGS...   (prints each run's milliseconds, then the median)
//!
//! COMMAND may be the server itself (it is killed after each run) or a launcher that exits once the server is
//! started, such as `ctr run -d` (polling goes on while it runs; a launcher that fails ends the benchmark).
//! Timing in-process and probing with a plain socket keeps the benchmark's own costs out of the figure: a shell's
//! `date` and `/dev/tcp` probes added ~3–4 ms to each `ctr run -d` figure here.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn first_200(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (port, runs): (u16, usize) = (
        args[1].parse().expect("PORT"),
        args[2].parse().expect("RUNS"),
    );
    let command = &args[args.iter().position(|a| a == "--").expect("-- COMMAND") + 1..];
    let mut times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let mut child = Command::new(&command[0])
            .args(&command[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the server");
        while !first_200(port) {
            if let Some(status) = child.try_wait().expect("wait for the command")
                && !status.success()
            {
                panic!("{} failed: {status}", command.join(" "));
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no 200 within 30 s"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let took = started.elapsed();
        let _ = child.kill();
        let _ = child.wait();
        println!("{:.2}", took.as_secs_f64() * 1000.0);
        times.push(took);
    }
    times.sort();
    println!(
        "median {:.2}",
        times[times.len() / 2].as_secs_f64() * 1000.0
    );
}
