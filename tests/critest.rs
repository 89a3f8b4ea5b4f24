//! critest, cri-tools' CRI validation suite, against the `wasmhttp` runtime handler on containerd 2.x. Its
//! images are served from the test's own registry, mirrored for `registry.k8s.io`, `k8s.gcr.io` and `gcr.io`
//! through containerd's `hosts.toml`, and stand in for the Linux ones (see docs/critest.md):
//! - busybox → `examples/applets` at `/bin/sh`, `/bin/echo`, `/bin/sleep`, `/bin/top`, `/bin/true`,
//!   `/bin/false`, `/bin/ls` (the applets critest's containers run and exec);
//! - nginx and httpd → the hello service on port 80, with the same applets beside it;
//! - pause and cri-tools' `test-image-*` → hello images (distinct ones where critest needs different images,
//!   with the image users its user specs read).
//!
//! The test writes the result table to `target/critest/results.md` and fails if a spec of [`MUST_PASS`]
//! does not pass.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use wasmhttp_tests::containerd::*;
use wasmhttp_tests::cri::*;
use wasmhttp_tests::registry::Registry;
use wasmhttp_tests::{example, workspace};

/// Specs that apply to a wasm runtime and pass (every one that passed when the suite was first run in full
/// here, attach since a command reads its stdin, exec and volumes since a command can be exec'd;
/// docs/critest.md says why each other one cannot): a regression in any fails this test. Matched against the
/// spec's full name.
const MUST_PASS: &[&str] = &[
    "[k8s.io] Container OOM runtime should output OOMKilled reason should terminate with exitCode 137 and reason OOMKilled",
    "[k8s.io] Container runtime should support adding volume and device runtime should support starting container with volume [Conformance]",
    "[k8s.io] Container runtime should support adding volume and device runtime should support starting container with volume when host path is a symlink [Conformance]",
    "[k8s.io] Container runtime should support basic operations on container runtime should support creating container [Conformance]",
    "[k8s.io] Container runtime should support basic operations on container runtime should support execSync [Conformance]",
    "[k8s.io] Container runtime should support basic operations on container runtime should support listing container stats [Conformance]",
    "[k8s.io] Container runtime should support basic operations on container runtime should support listing stats for containers filtered by labels [Conformance]",
    "[k8s.io] Container runtime should support basic operations on container runtime should support listing stats for started containers [Conformance]",
    "[k8s.io] Container runtime should support basic operations on container runtime should support listing stats for started containers when filter is nil [Conformance]",
    "[k8s.io] Container runtime should support basic operations on container runtime should support listing stats for three created containers when filter is nil. [Conformance]",
    "[k8s.io] Container runtime should support basic operations on container runtime should support preserving container attributes [Conformance]",
    "[k8s.io] Container runtime should support basic operations on container runtime should support removing created container [Conformance]",
    "[k8s.io] Container runtime should support basic operations on container runtime should support removing running container [Conformance]",
    "[k8s.io] Container runtime should support basic operations on container runtime should support removing stopped container [Conformance]",
    "[k8s.io] Container runtime should support basic operations on container runtime should support starting container [Conformance]",
    "[k8s.io] Container runtime should support basic operations on container runtime should support stopping container [Conformance]",
    "[k8s.io] Container runtime should support log runtime should support reopening container log [Conformance]",
    "[k8s.io] Container runtime should support log runtime should support starting container with log [Conformance]",
    "[k8s.io] Idempotence RemoveContainer should not return an error if not found",
    "[k8s.io] Idempotence RemoveImage should not return an error if not found",
    "[k8s.io] Idempotence RemovePodSandbox should not return an error if not found",
    "[k8s.io] Idempotence StopContainer should not return an error if already stopped",
    "[k8s.io] Idempotence StopContainer should not return an error if not found",
    "[k8s.io] Idempotence StopPodSandbox should not return an error if already stopped",
    "[k8s.io] Idempotence StopPodSandbox should not return an error if not found",
    "[k8s.io] Image Consistency should list and get image status immediately after pulling [Conformance] [Serial]",
    "[k8s.io] Image Consistency should not fail on simultaneous RemoveImage calls [Conformance] [Serial]",
    "[k8s.io] Image Consistency should not list or get image status immediately after removal [Conformance] [Serial]",
    "[k8s.io] Image Identifier Consistency should return the same image identifier across all APIs [Conformance] [Serial]",
    "[k8s.io] Image Identifier Consistency should return the same image identifier when pulled from different registries [Conformance] [Serial]",
    "[k8s.io] Image Manager image status get image fields should not have Uid|Username empty [Conformance] [Serial]",
    "[k8s.io] Image Manager image status should support all kinds of references [Conformance] [Serial]",
    "[k8s.io] Image Manager listImage should get exactly 3 image in the result list [Conformance] [Serial]",
    "[k8s.io] Image Manager listImage should get exactly 3 repoTags in the result image [Conformance] [Serial]",
    "[k8s.io] Image Manager public image should timeout if requested [Conformance] [Serial]",
    "[k8s.io] Image Manager public image with tag should be pulled and removed [Conformance] [Serial]",
    "[k8s.io] Image Manager public image without tag should be pulled and removed [Conformance] [Serial]",
    "[k8s.io] Image Manager removing image by one tag should remove all tags [Conformance] [Serial]",
    "[k8s.io] Image Manager removing image from one registry should remove all tags from other registries [Conformance] [Serial]",
    "[k8s.io] Multiple Containers [Conformance] when running multiple containers in a pod should support container exec",
    "[k8s.io] Multiple Containers [Conformance] when running multiple containers in a pod should support network",
    "[k8s.io] Networking runtime should support networking runtime should support port mapping with host port and container port [Conformance]",
    "[k8s.io] Networking runtime should support networking runtime should support port mapping with only container port [Conformance]",
    "[k8s.io] PodSandbox runtime should support basic operations on PodSandbox runtime should support preserving PodSandbox attributes [Conformance]",
    "[k8s.io] PodSandbox runtime should support basic operations on PodSandbox runtime should support removing PodSandbox [Conformance]",
    "[k8s.io] PodSandbox runtime should support basic operations on PodSandbox runtime should support running PodSandbox [Conformance]",
    "[k8s.io] PodSandbox runtime should support basic operations on PodSandbox runtime should support stopping PodSandbox [Conformance]",
    "[k8s.io] Runtime info runtime should support returning runtime info runtime should return runtime conditions [Conformance]",
    "[k8s.io] Runtime info runtime should support returning runtime info runtime should return version info [Conformance]",
    "[k8s.io] Security Context NamespaceOption runtime should support HostNetwork is false",
    "[k8s.io] Security Context SeccompProfilePath runtime should support an seccomp profile that blocks setting hostname with SYS_ADMIN",
    "[k8s.io] Security Context bucket runtime should return error if RunAsGroup is set without RunAsUser",
    "[k8s.io] Security Context bucket runtime should support Privileged is false",
    "[k8s.io] Streaming runtime should support streaming interfaces runtime should support attach [Conformance]",
    "[k8s.io] Streaming runtime should support streaming interfaces runtime should support exec with tty=false and stdin=false [Conformance]",
    "[k8s.io] Streaming runtime should support streaming interfaces runtime should support portforward [Conformance]",
];

/// The upstream registries critest pulls from; each is mirrored to the test's registry.
const UPSTREAMS: &[&str] = &["registry.k8s.io", "k8s.gcr.io", "gcr.io"];

/// Builds an image with `bench/oci_image.py` (files at chosen paths, an entrypoint, environment variables, a
/// user) and pushes it.
fn push_files(
    registry: &Registry,
    dir: &Path,
    name: &str,
    files: &[(&Path, &str)],
    env: &[&str],
    user: Option<&str>,
) {
    let tar = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
    let mut command = Command::new("python3");
    command
        .arg(workspace().join("bench/oci_image.py"))
        .arg(&tar)
        .arg(name)
        .args(["--entrypoint", files[0].1]);
    if let Some(user) = user {
        command.args(["--user", user]);
    }
    for var in env {
        command.args(["--env", var]);
    }
    for (host, inside) in files {
        command.arg(format!("{}={inside}", host.display()));
    }
    wasmhttp_tests::succeed(&mut command);
    registry.push_oci_archive(&tar, name);
}

/// Pushes critest's images, as their stand-ins, under the paths the mirrors serve.
fn push_stand_ins(registry: &Registry, dir: &Path) {
    let applets = example("applets");
    let paths = ["sh", "echo", "sleep", "top", "true", "false", "ls"]
        .map(|applet| format!("/bin/{applet}"));
    let busybox: Vec<(&Path, &str)> = paths
        .iter()
        .map(|path| (applets.as_path(), path.as_str()))
        .collect();
    push_files(
        registry,
        dir,
        "e2e-test-images/busybox:1.29-2",
        &busybox,
        &[],
        None,
    );

    // A web server on port 80 with a few commands beside it, as the real images have (critest execs `echo`).
    let hello = example("hello");
    let web: Vec<(&Path, &str)> = [(hello.as_path(), "/app.wasm")]
        .into_iter()
        .chain(busybox.iter().copied())
        .collect();
    for name in [
        "e2e-test-images/nginx:1.14-2",
        "e2e-test-images/httpd:2.4.39-4",
    ] {
        push_files(registry, dir, name, &web, &["PORT=80"], None);
    }

    let cri_tools = "k8s-staging-cri-tools";
    for name in ["pause:3.9".to_string()].into_iter().chain(
        [
            "test-image-latest:latest",
            "test-image-tag:test",
            "test-image-tag:all",
            "test-image-tags:1",
            "test-image-tags:2",
            "test-image-tags:3",
        ]
        .map(|n| format!("{cri_tools}/{n}")),
    ) {
        push_files(registry, dir, &name, &[(&hello, "/app.wasm")], &[], None);
    }
    // Different tags that must be different images: each holds a file of its own.
    for n in 1..=3 {
        let marker = dir.join(format!("image-{n}"));
        std::fs::write(&marker, n.to_string()).unwrap();
        push_files(
            registry,
            dir,
            &format!("{cri_tools}/test-image-{n}:latest"),
            &[(&hello, "/app.wasm"), (&marker, "/image-id")],
            &[],
            None,
        );
    }
    for (name, user) in [
        ("test-image-user-uid", "1002"),
        ("test-image-user-username", "www-data"),
        ("test-image-user-uid-group", "1003:1003"),
        ("test-image-user-username-group", "www-data:www-data"),
        ("test-image-predefined-group", "1000"),
    ] {
        push_files(
            registry,
            dir,
            &format!("{cri_tools}/{name}:latest"),
            &[(&hello, "/app.wasm")],
            &[],
            Some(user),
        );
    }
}

/// Each spec's full name and its state (`passed`, `failed`, `skipped`, …) from a Ginkgo JUnit report.
fn results(junit: &str) -> BTreeMap<String, String> {
    let attribute = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let end = start + tag[start..].find('"')?;
        Some(
            tag[start..end]
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        )
    };
    junit
        .split("<testcase ")
        .skip(1)
        .filter_map(|case| {
            let tag = &case[..case.find('>')?];
            let tag = format!(" {tag}");
            Some((attribute(&tag, "name")?, attribute(&tag, "status")?))
        })
        .filter(|(name, _)| !name.starts_with("[BeforeSuite]") && !name.starts_with("[AfterSuite]"))
        .collect()
}

#[test]
fn critest_passes_what_applies_to_a_wasm_runtime() {
    if major_version() < 2 {
        println!("containerd {}: critest runs on containerd 2.x", version());
        return;
    }
    let _cleanup = PodNetworkCleanup {
        before: netns_names(),
    };
    let registry = Registry::start();
    let containerd = Containerd::start_with(|dir| {
        for upstream in UPSTREAMS {
            pull_through(
                dir,
                upstream,
                &format!("https://{upstream}"),
                &registry.host,
            );
        }
        // critest's volumes are directories it makes under /tmp: the node lists them as it would list
        // kubelet's, so that the confined shim may give them to guests.
        let node = dir.join("node.toml");
        std::fs::write(&node, "[security]\nhost-paths = [\"/tmp\"]\n").unwrap();
        let options = format!(
            "  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmhttp.options]\n    ConfigPath = {:?}\n",
            node.display().to_string()
        );
        cri_config(dir, &registry.host).map(|config| config + &options)
    });
    tag_sandbox_image(&containerd);
    let dir = containerd.dir.path();
    push_stand_ins(&registry, dir);

    let report_dir = workspace().join("target/critest");
    std::fs::create_dir_all(&report_dir).unwrap();
    let junit = report_dir.join("junit.xml");
    let endpoint = format!("unix://{}", containerd.socket().display());
    let critest =
        wasmhttp_tests::containerd_dist(wasmhttp_tests::crictl::CRI_TOOLS).join("critest");
    let output = Command::new(critest)
        .args(["-runtime-endpoint", &endpoint, "-image-endpoint", &endpoint])
        .args(["-runtime-handler", "wasmhttp", "-ginkgo.no-color"])
        .arg(format!("-ginkgo.junit-report={}", junit.display()))
        .args(["-ginkgo.timeout", "30m"])
        .output()
        .unwrap();
    std::fs::write(report_dir.join("output.txt"), &output.stdout).unwrap();
    let report = std::fs::read_to_string(&junit).unwrap_or_else(|e| {
        panic!(
            "critest wrote no report ({e}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let results = results(&report);
    let mut table = String::from("| spec | result |\n|---|---|\n");
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, state) in &results {
        table.push_str(&format!("| {} | {state} |\n", name.replace('|', "\\|")));
        *counts.entry(state).or_default() += 1;
    }
    let summary = format!("critest 1.36.0, containerd {}: {counts:?}\n", version());
    std::fs::write(report_dir.join("results.md"), format!("{summary}\n{table}")).unwrap();
    println!("FIGURE {summary}");
    let failed: Vec<String> = MUST_PASS
        .iter()
        .filter_map(|must| {
            let state = results
                .iter()
                .find(|(name, _)| name.strip_prefix("[It] ") == Some(must))
                .map_or("missing", |(_, state)| state.as_str());
            (state != "passed").then(|| format!("{must}: {state}"))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "critest specs that must pass did not (target/critest/output.txt has the suite's output): {failed:#?}"
    );
}
