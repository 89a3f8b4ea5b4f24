//! The containerd Task service: each call checks its request, then asks the container.

use crate::bundle::{self, ImageLayer, Network, Payload, RootfsMount};
use crate::container::{Container, CreateOptions, ExecRequest, Status};
use crate::engine::SharedRuntime;
use crate::error::{Result, ShimError};
use crate::events::{Event, Events};
use crate::node_config;
use async_trait::async_trait;
use containerd_shim::api::*;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskIO, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::types::task::{ProcessInfo, Status as TaskStatus};
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use wasmhttp_oci::WASM_LAYER_TYPES;
use wasmhttp_runtime::{Source, StatsSnapshot};

mod create;

/// Every container of this shim process, and the engine they share.
pub struct TaskService {
    runtime: SharedRuntime,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    events: Events,
    exit: Arc<ExitSignal>,
    content: crate::broker::Content,
    metrics: crate::scrape::Endpoints,
    tracer: crate::traces::SharedTracer,
}

impl TaskService {
    /// A service publishing to `events`; `exit` is signalled on Shutdown once no container is left; wasm layers
    /// of images are read through `content`.
    pub fn new(events: Events, exit: Arc<ExitSignal>, content: crate::broker::Content) -> Self {
        TaskService {
            runtime: SharedRuntime::build_early(),
            containers: Mutex::default(),
            events,
            exit,
            content,
            metrics: Default::default(),
            tracer: Default::default(),
        }
    }

    /// Adds the pod sandbox containerd's Sandbox API creates in this shim under `id`: the pod's containers
    /// find its network namespace the way they find a sandbox container's.
    pub fn add_pod_sandbox(&self, id: &str, network: Network) -> Result<Arc<Container>> {
        let mut containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        if containers.contains_key(id) {
            return Err(ShimError::AlreadyExists(format!(
                "sandbox {id} already exists in this shim"
            )));
        }
        let sandbox = Arc::new(Container::pod_sandbox(id, network));
        containers.insert(id.to_string(), sandbox.clone());
        Ok(sandbox)
    }

    /// Forgets the pod sandbox `id` and whatever is left of its pod, and lets the shim exit: a Sandbox API
    /// shim holds one pod, and containerd deletes the shim's bundle once the sandbox is shut down.
    pub fn shut_down_pod(&self, id: &str) {
        let mut containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        let left: Vec<String> = containers.keys().filter(|k| *k != id).cloned().collect();
        if !left.is_empty() {
            tracing::warn!(sandbox = %id, containers = ?left, "containers not deleted before the pod's shutdown are dropped");
        }
        containers.clear();
        drop(containers);
        self.exit_if_empty();
    }

    /// Every container of this shim but `except` (a pod's sandbox).
    pub fn containers_except(&self, except: &str) -> Vec<Arc<Container>> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(id, _)| id.as_str() != except)
            .map(|(_, container)| container.clone())
            .collect()
    }

    /// The figures of every container but `except` (a pod's sandbox) added up, and their code sizes'.
    pub fn total_usage(&self, except: &str) -> (StatsSnapshot, u64) {
        let containers = self.containers_except(except);
        let mut total = StatsSnapshot::default();
        let mut code_size = 0;
        for container in containers {
            let (stats, _, size) = container.usage();
            total.add(&stats);
            code_size += size;
        }
        (total, code_size)
    }

    /// Signals the server to exit once no container is left in this shim.
    fn exit_if_empty(&self) {
        if self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            tracing::info!("no containers left; shim exiting");
            self.tracer.flush();
            self.exit.signal();
        }
    }

    /// The container (or pod sandbox) `id` of this shim.
    pub fn get(&self, id: &str) -> Result<Arc<Container>> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("container {id} not found in this shim")))
    }
}

fn unsupported<T>(what: &str) -> TtrpcResult<T> {
    Err(ShimError::Unimplemented(format!("wasmhttp does not support {what}")).into())
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        Ok(self.create_container(req).await?)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let container = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            container.start_exec(&req.exec_id)?;
            return Ok(StartResponse {
                pid: std::process::id(),
                ..Default::default()
            });
        }
        // Published first, so containerd sees start before the exit of a command that ends at once.
        self.events.send(Event::Start(TaskStart {
            container_id: req.id.clone(),
            pid: std::process::id(),
            ..Default::default()
        }));
        container.start()?;
        Ok(StartResponse {
            pid: std::process::id(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let container = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            container.kill_exec(&req.exec_id, req.signal)?;
            return Ok(Empty::new());
        }
        container.kill(req.signal, container.drain_timeout())?;
        Ok(Empty::new())
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let container = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            // runc's shim publishes no TaskDelete for an exec: containerd learns of its end from TaskExit.
            let exit = container.delete_exec(&req.exec_id)?.exit();
            return Ok(DeleteResponse {
                pid: std::process::id(),
                exit_status: exit.map_or(0, |e| e.code),
                exited_at: exit.map(|e| e.timestamp()).into(),
                ..Default::default()
            });
        }
        if matches!(container.status(), Status::Running | Status::Paused) {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is running; kill it first",
                req.id
            ))
            .into());
        }
        let exit = container.exit();
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&req.id);
        let (code, at) = exit
            .map(|e| (e.code, Some(e.timestamp())))
            .unwrap_or((0, None));
        self.events.send(Event::Delete(TaskDelete {
            container_id: req.id.clone(),
            id: req.id.clone(),
            pid: std::process::id(),
            exit_status: code,
            exited_at: at.clone().into(),
            ..Default::default()
        }));
        Ok(DeleteResponse {
            pid: std::process::id(),
            exit_status: code,
            exited_at: at.into(),
            ..Default::default()
        })
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let container = self.get(&req.id)?;
        let exit = if req.exec_id.is_empty() {
            container.wait().await
        } else {
            container.exec(&req.exec_id)?.wait().await
        };
        Ok(WaitResponse {
            exit_status: exit.code,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let container = self.get(&req.id)?;
        let (status, exit, mut state) = if req.exec_id.is_empty() {
            let state = StateResponse {
                id: req.id,
                ..Default::default()
            };
            (container.status(), container.exit(), state)
        } else {
            let exec = container.exec(&req.exec_id)?;
            let [stdin, stdout, stderr] = exec.stdio().clone();
            let state = StateResponse {
                id: req.id,
                exec_id: req.exec_id,
                stdin,
                stdout,
                stderr,
                ..Default::default()
            };
            (exec.status(), exec.exit(), state)
        };
        state.pid = std::process::id();
        state.status = match status {
            Status::Created => TaskStatus::CREATED,
            Status::Running => TaskStatus::RUNNING,
            Status::Paused => TaskStatus::PAUSED,
            Status::Stopped => TaskStatus::STOPPED,
        }
        .into();
        state.exit_status = exit.map_or(0, |e| e.code);
        state.exited_at = exit.map(|e| e.timestamp()).into();
        Ok(state)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        self.get(&req.id)?;
        Ok(PidsResponse {
            processes: vec![ProcessInfo {
                pid: std::process::id(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.get(&req.id)?.set_paused(true)?;
        self.events.send(Event::Paused(TaskPaused {
            container_id: req.id,
            ..Default::default()
        }));
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.get(&req.id)?.set_paused(false)?;
        self.events.send(Event::Resumed(TaskResumed {
            container_id: req.id,
            ..Default::default()
        }));
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let container = self.get(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .map(|any| any.value.as_slice())
            .unwrap_or_default();
        // containerd marshals the spec's LinuxResources as JSON inside the Any.
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(resources)
            .map_err(|e| {
                ShimError::InvalidArgument(format!(
                    "update: resources are not OCI LinuxResources JSON: {e}"
                ))
            })?;
        let limits = container.update(&resources)?;
        tracing::info!(container = %req.id, limits = %limits.describe(), "limits updated");
        Ok(Empty::new())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let (stats, limits, code_size) = self.get(&req.id)?.usage();
        let metrics = crate::metrics::encode(
            &stats,
            &limits,
            code_size,
            crate::metrics::host_uses_cgroup_v2(),
        )
        .map_err(ShimError::Internal)?;
        Ok(StatsResponse {
            stats: Some(metrics).into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        self.get(&req.id)?;
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        self.exit_if_empty();
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let container = self.get(&req.id)?;
        let base = container.exec_base()?;
        container.check_exec_room(&req.exec_id)?;
        let request = ExecRequest {
            spec: req
                .spec
                .as_ref()
                .map(|any| any.value.clone())
                .unwrap_or_default(),
            terminal: req.terminal,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        };
        let (id, exec_id) = (req.id, req.exec_id.clone());
        if exec_id.is_empty() {
            return Err(ShimError::InvalidArgument("exec: no exec id".into()).into());
        }
        // Reading the rootfs, compiling and opening fifos block: off the executor.
        let exec = tokio::task::spawn_blocking(move || base.prepare(&id, &exec_id, request))
            .await
            .map_err(|e| ShimError::Internal(format!("exec failed: {e}")))??;
        container.add_exec(exec)?;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        unsupported("checkpoint")
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, _req: ResizePtyRequest) -> TtrpcResult<Empty> {
        unsupported("terminals (resize pty)")
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let container = self.get(&req.id)?;
        if req.stdin && req.exec_id.is_empty() {
            container.close_stdin();
        } else if req.stdin {
            container.exec(&req.exec_id)?.close_stdin();
        }
        Ok(Empty::new())
    }
}
