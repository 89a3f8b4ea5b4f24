//! Task Create: reading a bundle (and, where its code is an image layer, that layer) into a container.

use super::*;

impl TaskService {
    /// Reads the wasm of a container whose code is an image layer rather than a file in its rootfs, through
    /// the broker (which decides which image the container may name, and how large its layer may be).
    async fn read_image_layer(&self, id: &str, layer: ImageLayer) -> Result<Payload> {
        let found = self.content.wasm_layer(id, layer.image.as_deref());
        let no_layer = |why: String| {
            ShimError::InvalidArgument(match &layer.not_in_rootfs {
                Some(not_in_rootfs) => format!("{not_in_rootfs}, and {why}"),
                None => why,
            })
        };
        match found.await {
            Ok(Some(wasm)) => {
                tracing::info!(container = id, image = %wasm.image, digest = %wasm.digest, "wasm layer read from containerd's content store");
                Ok(Payload::Wasm(Source::from_bytes(
                    format!("{} ({} layer {})", layer.name, wasm.image, wasm.digest),
                    wasm.bytes,
                )))
            }
            Ok(None) => Err(no_layer(format!(
                "the container's image {} has no wasm layer ({})",
                layer.image.as_deref().unwrap_or("record"),
                WASM_LAYER_TYPES.join(" or ")
            ))),
            Err(e) if layer.not_in_rootfs.is_some() => Err(no_layer(e.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Checks a Create request, loads its bundle and the wasm it names, and registers the container.
    pub(super) async fn create_container(
        &self,
        req: CreateTaskRequest,
    ) -> Result<CreateTaskResponse> {
        if req.terminal {
            return Err(ShimError::InvalidArgument(
                "wasmhttp does not support terminals (ctr run -t)".into(),
            ));
        }
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "wasmhttp does not support checkpoint/restore".into(),
            ));
        }
        if self.get(&req.id).is_ok() {
            return Err(ShimError::AlreadyExists(format!(
                "container {} already exists",
                req.id
            )));
        }
        let started = std::time::Instant::now();
        let node = node_config::for_create(req.options.as_ref())?;
        let pod_network = bundle::sandbox_id(Path::new(&req.bundle))
            .and_then(|sandbox| self.get(&sandbox).ok())
            .map(|sandbox| sandbox.network().clone());
        let engine_started = std::time::Instant::now();
        let runtime = self.runtime.get_or_build(&node.engine)?;
        let engine_ready = engine_started.elapsed();
        let events = self.events.clone();
        let rootfs: Vec<RootfsMount> = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let (id, bundle_dir, stdin, stdout, stderr) = (
            req.id.clone(),
            PathBuf::from(&req.bundle),
            req.stdin.clone(),
            req.stdout.clone(),
            req.stderr.clone(),
        );
        let node_layers = wasmhttp_runtime::Layers {
            node_defaults: node.defaults.clone(),
            node_ceilings: node.ceilings.clone(),
            ..Default::default()
        };
        let max_component_size = node.engine.max_component_size;
        let copies_dir = bundle_dir.clone();
        let bundle_started = std::time::Instant::now();
        let mut workload = tokio::task::spawn_blocking(move || {
            bundle::load(&bundle_dir, &rootfs, &node_layers, max_component_size)
        })
        .await
        .map_err(|e| ShimError::Internal(format!("reading the bundle failed: {e}")))??;
        let bundle_read = bundle_started.elapsed();
        check_reachable(&workload, &stdin, &stdout, &stderr)?;
        if let Payload::ImageLayer(layer) = workload.payload {
            workload.payload = self.read_image_layer(&id, layer).await?;
        }
        let metrics = workload.metrics.clone();
        let metrics_port = metrics
            .port(&node.metrics)
            .map_err(ShimError::InvalidArgument)?;
        let is_sandbox = matches!(workload.payload, Payload::Sandbox);
        let pod_name = metrics.labels.iter().find(|(label, _)| label == "pod");
        let tracer = self
            .tracer
            .get_or_build(&node.tracing, pod_name.map_or(&id, |(_, name)| name))
            .map_err(ShimError::InvalidArgument)?;
        let traced = tracer.map(|t| (t, crate::traces::span_attributes(&id, &metrics.labels)));
        if let Some(port) = metrics_port.filter(|p| workload.port == Ok(*p) && !is_sandbox) {
            return Err(ShimError::InvalidArgument(format!(
                "{}: port {port} is the service's own port",
                metrics.origin(port)
            )));
        }
        // Loading compiles (or deserializes) the wasm and opening fifos blocks: keep both off the executor.
        let container = tokio::task::spawn_blocking(move || -> Result<Container> {
            if bundle::is_shim_netns(&workload.network) {
                workload.network = pod_network.ok_or_else(|| {
                    ShimError::FailedPrecondition(
                        "the container joins its pod sandbox's network namespace, but the sandbox \
                         is not running in this shim"
                            .into(),
                    )
                })?;
            }
            workload.confine_outbound(node.security.deny_outbound.clone());
            let max_copied = node.security.max_file_mounts_size;
            let user = workload.capabilities.file_user.as_deref();
            let copies = &workload.file_copies;
            bundle::file_mounts::copy(&copies_dir, copies, user, max_copied).map_err(|e| {
                ShimError::InvalidArgument(format!(
                    "{}: {e}",
                    copies_dir.join("config.json").display()
                ))
            })?;
            let open = |path: &str| {
                crate::stdio::open_output(path)
                    .map_err(|e| ShimError::InvalidArgument(format!("cannot open {path}: {e}")))
            };
            let options = CreateOptions {
                runtime,
                stdin: (!stdin.is_empty()).then(|| PathBuf::from(&stdin)),
                stdout: open(&stdout)?,
                stderr: open(&stderr)?,
                events,
                tracing: traced,
            };
            Container::create(&id, workload, options, max_component_size)
        })
        .await
        .map_err(|e| ShimError::Internal(format!("create task failed: {e}")))??;
        // Start-up time is what users compare runtimes on: say where it went (only a shim's first Create
        // builds the engine).
        tracing::info!(
            container = %req.id,
            engine_ms = engine_ready.as_secs_f64() * 1e3,
            bundle_ms = bundle_read.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "created"
        );
        let container = Arc::new(container);
        if let Some(port) = metrics_port {
            let set = self.metrics.join(port, container.network()).map_err(|e| {
                ShimError::FailedPrecondition(format!("{}: {e}", metrics.origin(port)))
            })?;
            if !is_sandbox {
                let mut labels = vec![("container_id".to_string(), req.id.clone())];
                labels.extend(metrics.labels);
                let source: std::sync::Weak<dyn wasmhttp_runtime::prometheus::Observed> =
                    Arc::downgrade(&container) as _;
                set.add(labels, source);
            }
        }
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.id.clone(), container);
        self.events.send(Event::Create(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                ..Default::default()
            })
            .into(),
            pid: std::process::id(),
            ..Default::default()
        }));
        Ok(CreateTaskResponse {
            pid: std::process::id(),
            ..Default::default()
        })
    }
}

/// Refuses a container that names host paths the confined server cannot reach, naming the first one, rather
/// than failing later with a bare "permission denied".
fn check_reachable(
    workload: &bundle::Workload,
    stdin: &str,
    stdout: &str,
    stderr: &str,
) -> Result<()> {
    use crate::confine::check_reachable as check;
    use wasmhttp_runtime::confine::landlock::Access;
    crate::stdio::check_reachable(stdin, stdout, stderr)?;
    for copy in &workload.file_copies {
        let what = format!("the source of the file mounted at {}", copy.destination);
        check(&copy.source, Access::Read, &what)?;
    }
    // The copies' directories lie in the bundle, which the server always reaches.
    for preopen in &workload.capabilities.preopens {
        let what = format!("the source of the mount at {}", preopen.guest);
        check(
            &preopen.host,
            crate::confine::access(preopen.read_only),
            &what,
        )?;
    }
    let (hosts, resolv_conf) = &workload.resolver_files;
    for (file, destination) in [(hosts, "/etc/hosts"), (resolv_conf, "/etc/resolv.conf")] {
        if let Some(file) = file {
            let what = format!("the file mounted at {destination}");
            check(file, Access::Read, &what)?;
        }
    }
    Ok(())
}
