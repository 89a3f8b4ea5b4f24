//! containerd's Sandbox service (`containerd.runtime.sandbox.v1.Sandbox`), which containerd 2.x calls when a
//! CRI runtime says `sandboxer = "shim"`: the pod is this shim process, so no sandbox container exists
//! (containerd 2.3's CRI still checks that the sandbox image is present). containerd starts one shim per pod
//! for it, then runs the pod's containers through the Task service of the same process.
//!
//! The pod sandbox is held as a [`Container`] with nothing to run, under the sandbox's id in the Task
//! service's table: the pod's containers join its network namespace exactly as they join a classic sandbox
//! container's, and the shim stays up while it exists.

use crate::bundle::Network;
use crate::container::{Container, Status, timestamp};
use crate::error::{Result, ShimError};
use crate::task::TaskService;
use async_trait::async_trait;
use containerd_shim::TtrpcContext;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::sandbox_api::*;
use containerd_shim_protos::sandbox_async::Sandbox;
use containerd_shim_protos::ttrpc;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What containerd's CRI reads as a ready pod; anything else is not ready.
const READY: &str = "SANDBOX_READY";
const NOT_READY: &str = "SANDBOX_NOTREADY";

/// The Sandbox service over the shim's Task service.
pub struct SandboxService {
    tasks: Arc<TaskService>,
    /// The sandboxes this service made (one per shim, in practice).
    pods: Mutex<HashMap<String, Pod>>,
}

/// What the Sandbox service knows of a sandbox beside its [`Container`].
#[derive(Clone)]
struct Pod {
    created: SystemTime,
    /// The sandbox's OCI spec, as containerd's typeurl marshals one: CRI keeps it in its sandbox store and
    /// NRI reads the pod's annotations and namespaces from it.
    spec: Any,
}

/// The type URL containerd registers the OCI runtime spec under (marshalled as JSON).
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

impl SandboxService {
    /// A Sandbox service keeping its pods in `tasks`.
    pub fn new(tasks: Arc<TaskService>) -> Self {
        SandboxService {
            tasks,
            pods: Mutex::default(),
        }
    }

    /// The sandbox `id` and what this service recorded of it; only a sandbox this service made (not a
    /// container of the Task service) is found.
    fn sandbox(&self, id: &str) -> Result<(Arc<Container>, Pod)> {
        let pod = self
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("sandbox {id} not found in this shim")))?;
        Ok((self.tasks.get(id)?, pod))
    }

    fn create(&self, req: &CreateSandboxRequest) -> Result<()> {
        let network = if req.netns_path.is_empty() {
            Network::Host
        } else {
            let path = PathBuf::from(&req.netns_path);
            if !path.exists() {
                return Err(ShimError::InvalidArgument(format!(
                    "sandbox {}: its network namespace {} does not exist",
                    req.sandbox_id, req.netns_path
                )));
            }
            Network::Namespace(path)
        };
        let mut network_namespace = serde_json::json!({"type": "network"});
        if let Network::Namespace(path) = &network {
            network_namespace["path"] = path.display().to_string().into();
        }
        let spec = serde_json::json!({
            "ociVersion": "1.2.0",
            "annotations": req.annotations,
            "linux": {"namespaces": [network_namespace]},
        });
        self.tasks.add_pod_sandbox(&req.sandbox_id, network)?;
        let pod = Pod {
            created: SystemTime::now(),
            spec: Any {
                type_url: SPEC_TYPE_URL.into(),
                value: spec.to_string().into_bytes(),
                ..Default::default()
            },
        };
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.sandbox_id.clone(), pod);
        tracing::info!(sandbox = %req.sandbox_id, netns = %req.netns_path, "sandbox created");
        Ok(())
    }

    fn status(&self, req: &SandboxStatusRequest) -> Result<SandboxStatusResponse> {
        let (sandbox, pod) = self.sandbox(&req.sandbox_id)?;
        let running = matches!(sandbox.status(), Status::Running | Status::Paused);
        let mut info = HashMap::new();
        if req.verbose {
            // CRI reads `info` as its SandboxInfo JSON and adds the pod's resources to it.
            let process = if running { "running" } else { "stopped" };
            info.insert(
                "info".to_string(),
                serde_json::json!({
                    "pid": std::process::id(),
                    "processStatus": process,
                    "runtimeType": crate::RUNTIME_ID,
                })
                .to_string(),
            );
        }
        Ok(SandboxStatusResponse {
            sandbox_id: req.sandbox_id.clone(),
            pid: std::process::id(),
            state: if running { READY } else { NOT_READY }.to_string(),
            info,
            created_at: MessageField::some(timestamp(pod.created)),
            exited_at: sandbox.exit().map(|e| e.timestamp()).into(),
            ..Default::default()
        })
    }

    /// Stops the pod: its sandbox, and any container CRI has not stopped first.
    fn stop(&self, id: &str) -> Result<()> {
        let (sandbox, _) = self.sandbox(id)?;
        for container in self.tasks.containers_except(id) {
            if matches!(container.status(), Status::Running | Status::Paused)
                && let Err(e) = container.kill(SIGKILL, Duration::ZERO)
            {
                // It ended meanwhile: nothing left to stop.
                tracing::info!(sandbox = %id, "stopping a container of the pod: {e}");
            }
        }
        if sandbox.exit().is_none() {
            sandbox.kill(SIGKILL, Duration::ZERO)?;
        }
        tracing::info!(sandbox = %id, "sandbox stopped");
        Ok(())
    }

    fn metrics(&self, id: &str) -> Result<SandboxMetricsResponse> {
        self.sandbox(id)?;
        let (stats, code_size) = self.tasks.total_usage(id);
        let data = crate::metrics::encode(
            &stats,
            &wasmhttp_runtime::Limits::default(),
            code_size,
            crate::metrics::host_uses_cgroup_v2(),
        )
        .map_err(ShimError::Internal)?;
        let mut response = SandboxMetricsResponse::new();
        let metric = response.metrics.mut_or_insert_default();
        metric.id = id.to_string();
        metric.timestamp = MessageField::some(timestamp(SystemTime::now()));
        metric.data = MessageField::some(data);
        Ok(response)
    }
}

const SIGKILL: u32 = nix::sys::signal::Signal::SIGKILL as u32;

#[async_trait]
impl Sandbox for SandboxService {
    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<CreateSandboxResponse> {
        self.create(&req)?;
        Ok(CreateSandboxResponse::new())
    }

    async fn start_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: StartSandboxRequest,
    ) -> ttrpc::Result<StartSandboxResponse> {
        let (sandbox, pod) = self.sandbox(&req.sandbox_id)?;
        sandbox.start()?;
        tracing::info!(sandbox = %req.sandbox_id, "sandbox started");
        // The pod's containers are told to join /proc/<this pid>/ns/net, which the Task service maps to
        // the sandbox's namespace.
        Ok(StartSandboxResponse {
            pid: std::process::id(),
            created_at: MessageField::some(timestamp(pod.created)),
            spec: MessageField::some(pod.spec),
            ..Default::default()
        })
    }

    async fn platform(
        &self,
        _ctx: &TtrpcContext,
        req: PlatformRequest,
    ) -> ttrpc::Result<PlatformResponse> {
        self.sandbox(&req.sandbox_id)?;
        // The host's platform: the pod runs on this Linux host, its images are the host's (a `layer` image
        // is linux/amd64), and CRI reads the shim's metrics as Linux cgroup metrics.
        let mut response = PlatformResponse::new();
        let platform = response.platform.mut_or_insert_default();
        platform.os = "linux".into();
        platform.architecture = go_arch().into();
        Ok(response)
    }

    async fn stop_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: StopSandboxRequest,
    ) -> ttrpc::Result<StopSandboxResponse> {
        self.stop(&req.sandbox_id)?;
        Ok(StopSandboxResponse::new())
    }

    async fn wait_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: WaitSandboxRequest,
    ) -> ttrpc::Result<WaitSandboxResponse> {
        let exit = self.sandbox(&req.sandbox_id)?.0.wait().await;
        Ok(WaitSandboxResponse {
            exit_status: exit.code,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        })
    }

    async fn sandbox_status(
        &self,
        _ctx: &TtrpcContext,
        req: SandboxStatusRequest,
    ) -> ttrpc::Result<SandboxStatusResponse> {
        Ok(self.status(&req)?)
    }

    async fn ping_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: PingRequest,
    ) -> ttrpc::Result<PingResponse> {
        self.sandbox(&req.sandbox_id)?;
        Ok(PingResponse::new())
    }

    async fn shutdown_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: ShutdownSandboxRequest,
    ) -> ttrpc::Result<ShutdownSandboxResponse> {
        let id = &req.sandbox_id;
        self.sandbox(id)?;
        // Shutdown ends a stopped pod; containerd calls it alone when a create or start failed, so stop first.
        self.stop(id)?;
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.tasks.shut_down_pod(id);
        tracing::info!(sandbox = %id, "sandbox shut down");
        Ok(ShutdownSandboxResponse::new())
    }

    async fn sandbox_metrics(
        &self,
        _ctx: &TtrpcContext,
        req: SandboxMetricsRequest,
    ) -> ttrpc::Result<SandboxMetricsResponse> {
        Ok(self.metrics(&req.sandbox_id)?)
    }
}

/// This host's architecture as OCI platforms (Go's `GOARCH`) name it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Events;

    fn service() -> SandboxService {
        let tasks = TaskService::new(
            Events::captured().0,
            Arc::new(containerd_shim::ExitSignal::default()),
            crate::broker::Content::none(),
        );
        SandboxService::new(Arc::new(tasks))
    }

    fn create(id: &str, netns: &str) -> CreateSandboxRequest {
        CreateSandboxRequest {
            sandbox_id: id.into(),
            netns_path: netns.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_sandbox_lives_from_start_to_stop_and_says_what_is_wrong() {
        let service = service();
        let err = service
            .create(&create("pod", "/var/run/netns/missing-ns"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sandbox pod") && err.contains("/var/run/netns/missing-ns"),
            "{err}"
        );
        assert!(service.sandbox("pod").is_err(), "nothing half-made is kept");

        service.create(&create("pod", "/proc/self/ns/net")).unwrap();
        let twice = service.create(&create("pod", "")).unwrap_err();
        assert!(matches!(twice, ShimError::AlreadyExists(_)), "{twice}");
        let status = |verbose| {
            service
                .status(&SandboxStatusRequest {
                    sandbox_id: "pod".into(),
                    verbose,
                    ..Default::default()
                })
                .unwrap()
        };
        assert_eq!(status(false).state, NOT_READY, "created, not started");
        service.sandbox("pod").unwrap().0.start().unwrap();
        let ready = status(true);
        assert_eq!(
            (ready.state.as_str(), ready.pid),
            (READY, std::process::id())
        );
        let info: serde_json::Value = serde_json::from_str(&ready.info["info"]).unwrap();
        assert_eq!(info["processStatus"], "running");
        let (_, pod) = service.sandbox("pod").unwrap();
        let spec: serde_json::Value = serde_json::from_slice(&pod.spec.value).unwrap();
        assert_eq!(spec["linux"]["namespaces"][0]["path"], "/proc/self/ns/net");

        service.stop("pod").unwrap();
        let exit = service.sandbox("pod").unwrap().0.wait().await;
        assert_eq!(exit.code, 137);
        assert_eq!(status(false).state, NOT_READY);
        service.stop("pod").unwrap();
        assert!(service.metrics("pod").unwrap().metrics.is_some());
        let unknown = service.metrics("other").unwrap_err();
        assert!(matches!(unknown, ShimError::NotFound(_)), "{unknown}");
    }
}
