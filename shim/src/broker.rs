//! The broker: the one process of a shim that speaks to containerd's API.
//!
//! The shim server runs tenants' JIT-compiled code as root. Code that escaped wasmtime there and could reach
//! containerd's sockets could ask containerd for anything, a privileged container included, which is root on
//! the node; neither dropped capabilities nor Landlock (which does not govern connecting to a unix socket)
//! stop that. So the server never connects to containerd: before it confines itself it spawns this binary
//! again with the action `broker`, hands it one end of two socket pairs, and its seccomp filter then refuses
//! every new unix socket. The broker ([`serve`]) does the two things the server needed containerd for, and
//! only within this shim's own business:
//! - reading a container's wasm layer from the content store: the container's own image (any image of the
//!   namespace only when the node's `[security] image-annotation = "any"` allows it), no larger than the
//!   node's `[engine] max-component-size` (its [`ImagePolicy`], which `start` passes down);
//! - publishing task events, in the shim's namespace, for containers whose bundle names this shim's socket.
//!
//! The broker exits when the server does: the server's ends of the pairs close with it.

pub mod serve;

use crate::content::{ImagePolicy, WasmLayer};
use crate::error::{Result, ShimError};
use containerd_shim::Flags;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The action that runs this binary as a broker.
pub const ACTION: &str = "broker";

/// The broker's `argv[0]`, which `ps` shows: it is not a shim server, and tools that count shim servers by
/// their command line do not count it.
pub const PROCESS_NAME: &str = "wasmhttp-broker";

/// The environment variable through which `start` passes the node's [`ImagePolicy`] (the server passes its
/// environment on to the broker).
pub const IMAGES_ENV: &str = "WASMHTTP_SHIM_IMAGES";

/// The most a request or an event may weigh: ids, image names, a task's stdio paths and mounts.
const MAX_MESSAGE_BYTES: u64 = 1 << 20;

/// Reply kinds on the content pair.
const LAYER: u8 = 0;
const NO_LAYER: u8 = 1;
const INVALID_ARGUMENT: u8 = 2;
const INTERNAL: u8 = 3;

/// The request kind on the content pair: a container's wasm layer.
const WASM_LAYER: u8 = 1;

/// Writes one frame: its kind, its length (8 bytes, little-endian) and its payload.
pub async fn write_frame(
    stream: &mut (impl AsyncWrite + Unpin),
    kind: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut header = [0u8; 9];
    header[0] = kind;
    header[1..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    stream.write_all(&header).await?;
    stream.write_all(payload).await?;
    stream.flush().await
}

/// Reads one frame of at most `max_bytes`; `None` when the other end closed between frames.
pub async fn read_frame(
    stream: &mut (impl AsyncRead + Unpin),
    max_bytes: u64,
) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 9];
    match stream.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = u64::from_le_bytes(header[1..].try_into().expect("8 bytes"));
    if length > max_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {length} bytes, more than {max_bytes}"),
        ));
    }
    let mut payload = vec![0; length as usize];
    stream.read_exact(&mut payload).await?;
    Ok(Some((header[0], payload)))
}

/// The server's ends of the pairs to a broker it spawned.
pub struct Spawned {
    /// Requests for wasm layers.
    pub content: UnixStream,
    /// Task events.
    pub events: UnixStream,
    /// The broker process, to reap.
    pub child: std::process::Child,
}

/// Spawns the broker for the server `flags` describe, its stdin the content pair and its stdout the events
/// pair. Runs before the server confines itself: it executes this binary, which the confined server may not.
pub fn spawn(flags: &Flags) -> std::io::Result<Spawned> {
    let (content, content_end) = UnixStream::pair()?;
    let (events, events_end) = UnixStream::pair()?;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .arg0(PROCESS_NAME)
        .args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", &flags.address, "-socket", &flags.socket]);
    if flags.debug {
        command.arg("-debug");
    }
    let child = command
        .arg(ACTION)
        .stdin(OwnedFd::from(content_end))
        .stdout(OwnedFd::from(events_end))
        .stderr(std::process::Stdio::null())
        .spawn()?;
    Ok(Spawned {
        content,
        events,
        child,
    })
}

/// The server's client for wasm layers: one request at a time, answered by the broker.
pub struct Content {
    stream: tokio::sync::Mutex<Option<tokio::net::UnixStream>>,
}

impl Content {
    /// A client on the server's end of the content pair. Must be called inside the runtime.
    pub fn new(stream: UnixStream) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        Ok(Content {
            stream: tokio::sync::Mutex::new(Some(stream)),
        })
    }

    /// A client with no broker, for tests: every request fails.
    #[cfg(test)]
    pub fn none() -> Self {
        Content {
            stream: tokio::sync::Mutex::new(None),
        }
    }

    /// The wasm layer of container `id`'s image (or of the image its `wasmhttp.io/image` annotation names);
    /// `Ok(None)` when the container has no image or its image no wasm layer.
    pub async fn wasm_layer(
        &self,
        id: &str,
        annotation: Option<&str>,
    ) -> Result<Option<WasmLayer>> {
        let mut guard = self.stream.lock().await;
        let stream = guard.as_mut().ok_or_else(gone)?;
        let request = encode_request(id, annotation);
        let reply = async {
            write_frame(stream, WASM_LAYER, &request).await?;
            // The broker answers within its own ceiling on layers; this one only bounds a broken reply.
            read_frame(stream, u64::MAX >> 1).await
        };
        match reply.await {
            Ok(Some((kind, payload))) => decode_reply(kind, payload),
            Ok(None) | Err(_) => {
                // A reply cut half-way leaves the stream out of step: no later request may use it.
                *guard = None;
                Err(gone())
            }
        }
    }
}

fn gone() -> ShimError {
    ShimError::Internal(
        "the shim's broker (its link to containerd) is gone; containerd's log says why".into(),
    )
}

fn encode_request(id: &str, annotation: Option<&str>) -> Vec<u8> {
    let mut request = id.as_bytes().to_vec();
    if let Some(image) = annotation {
        request.push(0);
        request.extend_from_slice(image.as_bytes());
    }
    request
}

/// The inverse of [`encode_request`]: the container id and the annotation's image, if any.
fn decode_request(payload: &[u8]) -> std::result::Result<(String, Option<String>), String> {
    let text = std::str::from_utf8(payload).map_err(|e| format!("a request is not UTF-8: {e}"))?;
    Ok(match text.split_once('\0') {
        Some((id, image)) => (id.to_string(), Some(image.to_string())),
        None => (text.to_string(), None),
    })
}

/// A reply: the frame's kind and payload.
fn encode_reply(result: Result<Option<WasmLayer>>) -> (u8, Vec<u8>) {
    match result {
        Ok(Some(layer)) => {
            let mut payload = format!("{}\0{}\0", layer.image, layer.digest).into_bytes();
            payload.extend_from_slice(&layer.bytes);
            (LAYER, payload)
        }
        Ok(None) => (NO_LAYER, Vec::new()),
        Err(ShimError::InvalidArgument(message)) => (INVALID_ARGUMENT, message.into_bytes()),
        Err(other) => (INTERNAL, other.to_string().into_bytes()),
    }
}

fn decode_reply(kind: u8, mut payload: Vec<u8>) -> Result<Option<WasmLayer>> {
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    match kind {
        LAYER => {
            let mut fields = payload.splitn(3, |&b| b == 0);
            let (Some(image), Some(digest), Some(_)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(ShimError::Internal(
                    "the broker sent a malformed layer".into(),
                ));
            };
            let (image, digest) = (text(image.to_vec()), text(digest.to_vec()));
            let bytes = payload.split_off(image.len() + digest.len() + 2);
            Ok(Some(WasmLayer {
                image,
                digest,
                bytes,
            }))
        }
        NO_LAYER => Ok(None),
        INVALID_ARGUMENT => Err(ShimError::InvalidArgument(text(payload))),
        _ => Err(ShimError::Internal(text(payload))),
    }
}

/// The node's image policy as `start` passed it; the node's defaults when run by hand.
fn image_policy() -> std::result::Result<ImagePolicy, String> {
    match std::env::var(IMAGES_ENV) {
        Ok(text) => text.parse().map_err(|e| format!("{IMAGES_ENV}: {e}")),
        Err(_) => Ok(ImagePolicy::of(&crate::node_config::NodeConfig::default())),
    }
}

#[cfg(test)]
mod tests;
