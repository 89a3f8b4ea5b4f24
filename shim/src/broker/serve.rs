//! The broker process ([`super`]): answers the server's requests for wasm layers and publishes its task
//! events, within the shim's own namespace, containers and image policy.

use super::{
    ACTION, INTERNAL, MAX_MESSAGE_BYTES, WASM_LAYER, decode_request, encode_reply, image_policy,
    read_frame, write_frame,
};
use crate::content::{ContentStore, ImagePolicy};
use crate::events::Event;
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::{Client, EventsClient};
use containerd_shim::protos::ttrpc::context;
use containerd_shim::{Error, Flags};
use std::collections::HashSet;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// containerd's task manager's directory under its state directory, where task bundles are.
const TASK_BUNDLES: &str = "io.containerd.runtime.v2.task";

/// How often an event is offered to containerd before it is dropped, and how long one attempt may take.
const ATTEMPTS: u32 = 5;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the broker until the server closes both pairs.
pub async fn run(flags: Flags) -> Result<(), Error> {
    containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)?;
    let result = serve(&flags).await;
    if let Err(e) = &result {
        tracing::error!("shim broker failed: {e}");
    }
    result
}

async fn serve(flags: &Flags) -> Result<(), Error> {
    let stream = |fd: std::os::fd::BorrowedFd<'_>| -> std::io::Result<tokio::net::UnixStream> {
        let fd = fd.try_clone_to_owned()?;
        nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType)?;
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(true)?;
        tokio::net::UnixStream::from_std(stream)
    };
    let pair = |e: std::io::Error| {
        Error::InvalidArgument(format!(
            "the {ACTION} action takes its socket pairs from the shim server on stdin and stdout: {e}"
        ))
    };
    let content = stream(std::io::stdin().as_fd()).map_err(pair)?;
    let events = stream(std::io::stdout().as_fd()).map_err(pair)?;
    let images = image_policy().map_err(Error::InvalidArgument)?;
    let store = ContentStore {
        address: flags.address.clone(),
        namespace: flags.namespace.clone(),
    };
    let cwd = std::env::current_dir().map_err(crate::server::io_error("bundle directory"))?;
    let bundles = Bundles {
        dir: task_bundles(&cwd, &flags.namespace),
        socket: socket_path(&flags.socket).to_string(),
    };
    let owner = Owner {
        bundles: bundles.clone(),
        owned: HashSet::new(),
    };
    let publisher = Publisher {
        address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace.clone(),
        client: None,
    };
    tracing::info!(images = %images, "shim broker serving");
    tokio::join!(
        answer_content(content, store, images, bundles),
        publish_events(events, owner, publisher)
    );
    Ok(())
}

/// Answers requests for wasm layers of this shim's containers, one at a time, until the server closes the
/// pair.
async fn answer_content(
    mut stream: tokio::net::UnixStream,
    store: ContentStore,
    images: ImagePolicy,
    bundles: Bundles,
) {
    loop {
        let (kind, payload) = match read_frame(&mut stream, MAX_MESSAGE_BYTES).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("the shim server sent a broken content request: {e}");
                return;
            }
        };
        let reply = match decode_request(&payload) {
            Ok((id, _))
                if kind == WASM_LAYER
                    && let Err(e) = bundles.check(&id) =>
            {
                tracing::error!("shim broker refused a wasm layer: {e}");
                (INTERNAL, e.into_bytes())
            }
            Ok((id, annotation)) if kind == WASM_LAYER => encode_reply(
                store
                    .wasm_layer_of_container(&id, annotation.as_deref(), &images)
                    .await,
            ),
            Ok(_) => (INTERNAL, format!("no request has kind {kind}").into_bytes()),
            Err(e) => (INTERNAL, e.into_bytes()),
        };
        if write_frame(&mut stream, reply.0, &reply.1).await.is_err() {
            return;
        }
    }
}

/// Publishes the server's events that [`Owner`] admits, in order, until the server closes the pair; every
/// event read is offered before the broker exits.
async fn publish_events(
    mut stream: tokio::net::UnixStream,
    mut owner: Owner,
    mut publisher: Publisher,
) {
    loop {
        let event = match read_frame(&mut stream, MAX_MESSAGE_BYTES).await {
            Ok(Some((kind, payload))) => Event::decode(kind, &payload),
            Ok(None) => return,
            Err(e) => {
                tracing::error!("the shim server sent a broken event: {e}");
                return;
            }
        };
        match event.and_then(|event| owner.admit(event)) {
            Ok(event) => publisher.publish(event).await,
            Err(e) => tracing::error!("shim broker refused an event: {e}"),
        }
    }
}

/// containerd's task bundles, and the socket of this shim, whose containers' bundles name it.
#[derive(Clone)]
struct Bundles {
    /// containerd's task bundles of this namespace.
    dir: PathBuf,
    /// This shim's socket path.
    socket: String,
}

impl Bundles {
    /// Whether container `id` is this shim's: its bundle names this shim's socket (containerd writes the
    /// bundle before Create, and removes it after Delete).
    fn check(&self, id: &str) -> Result<(), String> {
        let plain = !id.is_empty()
            && !id.starts_with('.')
            && id.len() <= 255
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !plain {
            return Err(format!("{id:?} is not a container id"));
        }
        let bundle = self.dir.join(id);
        match bundle_address(&bundle) {
            Some(address) if socket_path(&address) == self.socket => Ok(()),
            Some(address) => Err(format!(
                "container {id}'s bundle names shim socket {address}, not this shim's"
            )),
            None => Err(format!(
                "container {id} has no bundle at {} naming a shim socket",
                bundle.display()
            )),
        }
    }
}

/// Which containers' events this shim may publish: a container becomes this shim's with its create event,
/// when its bundle names this shim's socket, and stops being so with its delete event (after which
/// containerd removes the bundle).
struct Owner {
    bundles: Bundles,
    /// Containers whose create event was admitted and whose delete event was not yet.
    owned: HashSet<String>,
}

impl Owner {
    /// `event`, if it is about a container of this shim.
    fn admit(&mut self, event: Event) -> Result<Event, String> {
        let id = event.container_id().to_string();
        match &event {
            Event::Create(_) => {
                self.bundles.check(&id)?;
                self.owned.insert(id);
            }
            _ if !self.owned.contains(&id) => {
                return Err(format!(
                    "container {id} is not one this shim created ({})",
                    event.topic()
                ));
            }
            Event::Delete(_) => {
                self.owned.remove(&id);
            }
            _ => {}
        }
        Ok(event)
    }
}

/// The shim socket a bundle names: its `address` file (written by `start`) or, for a container of a Sandbox
/// API pod (which has no `start`), the address in its `bootstrap.json` (written by containerd 2.x).
fn bundle_address(bundle: &Path) -> Option<String> {
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        return Some(address.trim().to_string());
    }
    let bootstrap = std::fs::read(bundle.join("bootstrap.json")).ok()?;
    let bootstrap: serde_json::Value = serde_json::from_slice(&bootstrap).ok()?;
    Some(bootstrap.get("address")?.as_str()?.to_string())
}

fn socket_path(address: &str) -> &str {
    address.trim_start_matches("unix://")
}

/// Where the task bundles of `namespace` are, seen from the bundle the broker runs in (the server's first
/// container's, or a Sandbox API pod's).
fn task_bundles(cwd: &Path, namespace: &str) -> PathBuf {
    let state = crate::confine::state_dir(cwd);
    if Some(state.as_path()) == cwd.parent() {
        state
    } else {
        state.join(TASK_BUNDLES).join(namespace)
    }
}

/// Forwards events to containerd's ttrpc event service, reconnecting when containerd restarts.
struct Publisher {
    address: String,
    namespace: String,
    client: Option<EventsClient>,
}

impl Publisher {
    /// Offers `event` up to [`ATTEMPTS`] times, waiting longer after each failure; events after it wait, so
    /// containerd sees them in order.
    async fn publish(&mut self, event: Event) {
        let (topic, message) = event.into_topic_and_message();
        let mut envelope = Envelope::new();
        envelope.set_topic(topic.to_string());
        envelope.set_namespace(self.namespace.clone());
        let stamped = containerd_shim::util::timestamp()
            .and_then(|at| Ok((at, containerd_shim::util::convert_to_any(message)?)));
        let (at, any) = match stamped {
            Ok(stamped) => stamped,
            Err(e) => return tracing::error!("cannot encode the {topic} event: {e}"),
        };
        envelope.set_timestamp(at);
        envelope.set_event(any);
        let mut request = ForwardRequest::new();
        request.set_envelope(envelope);
        for attempt in 1..=ATTEMPTS {
            match self.forward(&request).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!("publishing the {topic} event failed (attempt {attempt}): {e}");
                    self.client = None;
                    tokio::time::sleep(Duration::from_secs(attempt.into())).await;
                }
            }
        }
        tracing::error!("dropped the {topic} event after {ATTEMPTS} attempts");
    }

    async fn forward(&mut self, request: &ForwardRequest) -> Result<(), String> {
        if self.client.is_none() {
            let address = if self.address.contains("://") {
                self.address.clone()
            } else {
                format!("unix://{}", self.address)
            };
            let client = Client::connect(&address)
                .await
                .map_err(|e| format!("cannot connect to containerd at {address}: {e}"))?;
            self.client = Some(EventsClient::new(client));
        }
        let client = self.client.as_ref().expect("connected above");
        let timeout = context::with_timeout(FORWARD_TIMEOUT.as_nanos() as i64);
        client
            .forward(timeout, request)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests;
