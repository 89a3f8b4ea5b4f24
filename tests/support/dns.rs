//! A DNS server that knows one name: enough to show a pod resolves names with the nameserver its
//! `/etc/resolv.conf` names (cluster DNS), from its own network namespace.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Answers A queries for `name` with `address` (and every other query with no answer) on `bind` (UDP),
/// on a thread that lives as long as the test process; returns the count of queries for `name`.
pub fn serve_one_name(bind: SocketAddr, name: &str, address: Ipv4Addr) -> Arc<AtomicUsize> {
    let socket = UdpSocket::bind(bind).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    std::thread::spawn(move || {
        let mut query = [0u8; 512];
        loop {
            let Ok((len, from)) = socket.recv_from(&mut query) else {
                continue;
            };
            if let Some((reply, matched)) = answer(&query[..len], &name, address) {
                if matched {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                let _ = socket.send_to(&reply, from);
            }
        }
    });
    asked
}

/// The reply to one query, and whether it asked for `name`'s A record; `None` for what is not a query.
fn answer(query: &[u8], name: &str, address: Ipv4Addr) -> Option<(Vec<u8>, bool)> {
    if query.len() < 12 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    while *query.get(at)? != 0 {
        let len = query[at] as usize;
        labels.push(String::from_utf8_lossy(query.get(at + 1..at + 1 + len)?).to_ascii_lowercase());
        at += 1 + len;
    }
    let question_end = at + 5;
    let qtype = u16::from_be_bytes([*query.get(at + 1)?, *query.get(at + 2)?]);
    query.get(..question_end)?;
    let matched = qtype == 1 && labels.join(".") == name;
    let mut reply = Vec::with_capacity(question_end + 16);
    reply.extend_from_slice(&query[..2]); // id
    reply.extend_from_slice(&[0x81, 0x80]); // a response, recursion desired and available, no error
    reply.extend_from_slice(&[0, 1, 0, u8::from(matched), 0, 0, 0, 0]);
    reply.extend_from_slice(&query[12..question_end]);
    if matched {
        // The name by pointer to the question, type A, class IN, TTL 60, four bytes of address.
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&address.octets());
    }
    Some((reply, matched))
}
