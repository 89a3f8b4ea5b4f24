//! Task events to containerd, published (through the broker: [`crate::broker`]) in the order they happen.

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::protobuf::{self, Message};
use containerd_shim::protos::topics::*;
use tokio::sync::mpsc;

/// One task event.
#[derive(Debug)]
pub enum Event {
    /// `/tasks/create`
    Create(TaskCreate),
    /// `/tasks/start`
    Start(TaskStart),
    /// `/tasks/exit`
    Exit(TaskExit),
    /// `/tasks/oom`: a command stopped at its memory limit.
    Oom(TaskOOM),
    /// `/tasks/delete`
    Delete(TaskDelete),
    /// `/tasks/paused`
    Paused(TaskPaused),
    /// `/tasks/resumed`
    Resumed(TaskResumed),
    /// `/tasks/exec-added`
    ExecAdded(TaskExecAdded),
    /// `/tasks/exec-started`
    ExecStarted(TaskExecStarted),
}

impl Event {
    /// The topic containerd files it under (`/tasks/exit`).
    pub fn topic(&self) -> &'static str {
        match self {
            Event::Create(_) => TASK_CREATE_EVENT_TOPIC,
            Event::Start(_) => TASK_START_EVENT_TOPIC,
            Event::Exit(_) => TASK_EXIT_EVENT_TOPIC,
            Event::Oom(_) => TASK_OOM_EVENT_TOPIC,
            Event::Delete(_) => TASK_DELETE_EVENT_TOPIC,
            Event::Paused(_) => TASK_PAUSED_EVENT_TOPIC,
            Event::Resumed(_) => TASK_RESUMED_EVENT_TOPIC,
            Event::ExecAdded(_) => TASK_EXEC_ADDED_EVENT_TOPIC,
            Event::ExecStarted(_) => TASK_EXEC_STARTED_EVENT_TOPIC,
        }
    }

    /// The topic and the message.
    pub fn into_topic_and_message(self) -> (&'static str, Box<dyn MessageDyn>) {
        let topic = self.topic();
        let message: Box<dyn MessageDyn> = match self {
            Event::Create(e) => Box::new(e),
            Event::Start(e) => Box::new(e),
            Event::Exit(e) => Box::new(e),
            Event::Oom(e) => Box::new(e),
            Event::Delete(e) => Box::new(e),
            Event::Paused(e) => Box::new(e),
            Event::Resumed(e) => Box::new(e),
            Event::ExecAdded(e) => Box::new(e),
            Event::ExecStarted(e) => Box::new(e),
        };
        (topic, message)
    }

    /// The container the event is about.
    pub fn container_id(&self) -> &str {
        match self {
            Event::Create(e) => &e.container_id,
            Event::Start(e) => &e.container_id,
            Event::Exit(e) => &e.container_id,
            Event::Oom(e) => &e.container_id,
            Event::Delete(e) => &e.container_id,
            Event::Paused(e) => &e.container_id,
            Event::Resumed(e) => &e.container_id,
            Event::ExecAdded(e) => &e.container_id,
            Event::ExecStarted(e) => &e.container_id,
        }
    }

    /// The event as the server sends it to the broker: a kind and the message's protobuf encoding.
    pub fn encode(&self) -> (u8, Vec<u8>) {
        let encoded = match self {
            Event::Create(e) => e.write_to_bytes(),
            Event::Start(e) => e.write_to_bytes(),
            Event::Exit(e) => e.write_to_bytes(),
            Event::Oom(e) => e.write_to_bytes(),
            Event::Delete(e) => e.write_to_bytes(),
            Event::Paused(e) => e.write_to_bytes(),
            Event::Resumed(e) => e.write_to_bytes(),
            Event::ExecAdded(e) => e.write_to_bytes(),
            Event::ExecStarted(e) => e.write_to_bytes(),
        };
        // Encoding a message held in memory fails only past protobuf's 2 GiB limit, which no task event nears.
        (self.kind(), encoded.unwrap_or_default())
    }

    fn kind(&self) -> u8 {
        match self {
            Event::Create(_) => 1,
            Event::Start(_) => 2,
            Event::Exit(_) => 3,
            Event::Oom(_) => 4,
            Event::Delete(_) => 5,
            Event::Paused(_) => 6,
            Event::Resumed(_) => 7,
            Event::ExecAdded(_) => 8,
            Event::ExecStarted(_) => 9,
        }
    }

    /// The inverse of [`Event::encode`]: what the server sent is checked to be the task event it claims.
    pub fn decode(kind: u8, bytes: &[u8]) -> Result<Event, String> {
        let failed = |e: protobuf::Error| format!("event of kind {kind} does not parse: {e}");
        Ok(match kind {
            1 => Event::Create(TaskCreate::parse_from_bytes(bytes).map_err(failed)?),
            2 => Event::Start(TaskStart::parse_from_bytes(bytes).map_err(failed)?),
            3 => Event::Exit(TaskExit::parse_from_bytes(bytes).map_err(failed)?),
            4 => Event::Oom(TaskOOM::parse_from_bytes(bytes).map_err(failed)?),
            5 => Event::Delete(TaskDelete::parse_from_bytes(bytes).map_err(failed)?),
            6 => Event::Paused(TaskPaused::parse_from_bytes(bytes).map_err(failed)?),
            7 => Event::Resumed(TaskResumed::parse_from_bytes(bytes).map_err(failed)?),
            8 => Event::ExecAdded(TaskExecAdded::parse_from_bytes(bytes).map_err(failed)?),
            9 => Event::ExecStarted(TaskExecStarted::parse_from_bytes(bytes).map_err(failed)?),
            other => return Err(format!("no task event has kind {other}")),
        })
    }
}

/// Queues events for one task that hands them to the broker, which publishes them to containerd in the order
/// they happen (start before exit, even for a command that ends at once).
#[derive(Clone)]
pub struct Events {
    queue: mpsc::UnboundedSender<Event>,
}

impl Events {
    /// Starts the task that writes events to the broker's `stream`.
    pub fn new(mut stream: tokio::net::UnixStream) -> Self {
        let (queue, mut pending) = mpsc::unbounded_channel::<Event>();
        tokio::spawn(async move {
            while let Some(event) = pending.recv().await {
                let (kind, bytes) = event.encode();
                if let Err(e) = crate::broker::write_frame(&mut stream, kind, &bytes).await {
                    tracing::error!(
                        "cannot hand task events to the broker ({e}): containerd will see no more events \
                         from this shim"
                    );
                    return;
                }
            }
        });
        Events { queue }
    }

    /// Events that go nowhere: a pod sandbox of the Sandbox API is no task of containerd's, and containerd
    /// learns of its end through `WaitSandbox`, not a task exit.
    pub fn none() -> Self {
        Events {
            queue: mpsc::unbounded_channel().0,
        }
    }

    /// Events that go to a channel instead of containerd, for tests.
    #[cfg(test)]
    pub fn captured() -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (queue, received) = mpsc::unbounded_channel();
        (Events { queue }, received)
    }

    /// Queues an event.
    pub fn send(&self, event: Event) {
        // The receiver lives as long as the runtime; a send can only fail during process teardown.
        let _ = self.queue.send(event);
    }
}
