//! Task events to containerd, published in the order they happen.

use containerd_shim::Context;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExit, TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics::*;
use containerd_shim::publisher::RemotePublisher;
use tokio::sync::mpsc;

/// One task event.
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
}

impl Event {
    fn into_topic_and_message(self) -> (&'static str, Box<dyn MessageDyn>) {
        match self {
            Event::Create(e) => (TASK_CREATE_EVENT_TOPIC, Box::new(e)),
            Event::Start(e) => (TASK_START_EVENT_TOPIC, Box::new(e)),
            Event::Exit(e) => (TASK_EXIT_EVENT_TOPIC, Box::new(e)),
            Event::Oom(e) => (TASK_OOM_EVENT_TOPIC, Box::new(e)),
            Event::Delete(e) => (TASK_DELETE_EVENT_TOPIC, Box::new(e)),
            Event::Paused(e) => (TASK_PAUSED_EVENT_TOPIC, Box::new(e)),
            Event::Resumed(e) => (TASK_RESUMED_EVENT_TOPIC, Box::new(e)),
        }
    }
}

/// Queues events for one publishing task, so containerd sees them in order (start before exit, even for a
/// command that ends at once); the publisher itself retries delivery.
#[derive(Clone)]
pub struct Events {
    queue: mpsc::UnboundedSender<Event>,
}

impl Events {
    /// Starts the publishing task.
    pub fn new(publisher: RemotePublisher, namespace: String) -> Self {
        let (queue, mut pending) = mpsc::unbounded_channel::<Event>();
        tokio::spawn(async move {
            while let Some(event) = pending.recv().await {
                let (topic, message) = event.into_topic_and_message();
                if let Err(e) = publisher
                    .publish(Context::default(), topic, &namespace, message)
                    .await
                {
                    tracing::error!("cannot publish {topic} event: {e}");
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
