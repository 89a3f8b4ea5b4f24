#!/usr/bin/env python3
"""Pod benchmark through containerd's CRI, driven as the kubelet drives it (run by bench/pods.sh).

1. Pod start latency: RunPodSandbox + CreateContainer + StartContainer -> first 200 on the pod IP, median of RUNS,
   for runtime handler `wasmhttp` (examples/hello) vs `runc` (busybox-static httpd, a busybox `sleep` as the pause
   process), same run; on containerd 2.x also `wasmhttp-sandboxed`, the same runtime through the Sandbox API
   (`sandboxer = "shim"`: no sandbox container).
2. Pods per GiB: PODS wasmhttp pods with one hello service each; PSS summed over every shim process, per pod.

Usage: pods.py WORKDIR BIN_DIR CNI_BIN RUNS PODS
"""

import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

import grpc
import oci_image
import v1_pb2 as api
import v1_pb2_grpc as rpc

work, bin_dir, cni_bin, runs, pods = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
BRIDGE, SUBNET = "whbench0", "10.213.98.0/23"
SOCK = f"{work}/containerd.sock"
CONTAINERD_MAJOR = int(subprocess.run(["containerd", "--version"], check=True, capture_output=True, text=True)
                       .stdout.split()[2].lstrip("v").split(".")[0])


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def ctr(*args):
    return sh("ctr", "--address", SOCK, "--namespace", "k8s.io", *args)


def busybox_image(path, ref):
    """An OCI image-layout tar: one layer holding busybox-static and a web root."""
    www = f"{work}/www-index.html"
    with open(www, "wb") as page:
        page.write(b"Hello from busybox httpd!\n")
    busybox = sh("sh", "-c", "command -v busybox").strip()
    oci_image.build(path, ref, {busybox: "/busybox", www: "/www/index.html"}, ["/busybox"],
                    ["sleep", "2147483647"])


def start_containerd():
    os.makedirs(f"{work}/cni", exist_ok=True)
    with open(f"{work}/cni/10-whbench.conflist", "w") as f:
        json.dump({"cniVersion": "0.4.0", "name": "whbench", "plugins": [{
            "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]], "dataDir": f"{work}/ipam"}}]}, f)
    with open(f"{work}/config.toml", "w") as f:
        f.write(f"""version = 2
root = "{work}/root"
state = "{work}/state"
[grpc]
  address = "{SOCK}"
[ttrpc]
  address = "{SOCK}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/bench/busybox:1"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{work}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmhttp]
    runtime_type = "io.containerd.wasmhttp.v1"
""")
        if CONTAINERD_MAJOR >= 2:
            # 2.x reads a version 2 config's sandbox_mode as `sandboxer`.
            f.write("""  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmhttp-sandboxed]
    runtime_type = "io.containerd.wasmhttp.v1"
    sandbox_mode = "shim"
""")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", WASMHTTP_CACHE_DIR=f"{work}/cache")
    log = open(f"{work}/containerd.log", "w")
    proc = subprocess.Popen(["containerd", "--config", f"{work}/config.toml"], env=env, stdout=log, stderr=log)
    for _ in range(200):
        if subprocess.run(["ctr", "--address", SOCK, "version"], capture_output=True).returncode == 0:
            return proc
        time.sleep(0.1)
    raise SystemExit("containerd did not start: see " + f"{work}/containerd.log")


def wait_200(url, limit=30.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.002)
    raise SystemExit(f"{url} never answered 200")


def start_pod(runtime, handler, name, image, command):
    sandbox = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, uid=name, namespace="bench"),
        hostname=name, log_directory=f"{work}/logs/{name}", linux=api.LinuxPodSandboxConfig())
    os.makedirs(f"{work}/logs/{name}", exist_ok=True)
    pod = runtime.RunPodSandbox(api.RunPodSandboxRequest(config=sandbox, runtime_handler=handler)).pod_sandbox_id
    container = runtime.CreateContainer(api.CreateContainerRequest(
        pod_sandbox_id=pod, sandbox_config=sandbox,
        config=api.ContainerConfig(
            metadata=api.ContainerMetadata(name="web"), image=api.ImageSpec(image=image),
            command=command, envs=[api.KeyValue(key="PORT", value="8080")], log_path="web.log"))).container_id
    runtime.StartContainer(api.StartContainerRequest(container_id=container))
    ip = runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod)).status.network.ip
    return pod, ip


def remove_pod(runtime, pod):
    runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod))
    runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod))


def shim_pss_kib():
    total = 0
    # Brokers included: each shim server has one.
    for pid in sh("pgrep", "-f", f"(containerd-shim-wasmhttp-v1|wasmhttp-broker).*{work}").split():
        with open(f"/proc/{pid}/smaps_rollup") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    return total


def main():
    busybox_image(f"{work}/busybox.tar", "docker.io/bench/busybox:1")
    containerd = start_containerd()
    try:
        sh(f"{bin_dir}/wasmhttp", "image", "build", "examples/wasm/hello.wasm", "-t", "docker.io/bench/hello:1",
           "-o", f"{work}/hello.tar")
        ctr("image", "import", f"{work}/hello.tar")
        ctr("image", "import", f"{work}/busybox.tar")
        runtime = rpc.RuntimeServiceStub(grpc.insecure_channel(f"unix://{SOCK}"))
        kinds = {
            "wasmhttp": ("docker.io/bench/hello:1", []),
            "runc": ("docker.io/bench/busybox:1", ["/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]),
        }
        if CONTAINERD_MAJOR >= 2:
            kinds["wasmhttp-sandboxed"] = kinds["wasmhttp"]
        # Warm-up: one pod each (compile cache, image unpack), not timed.
        for kind, (image, command) in kinds.items():
            pod, ip = start_pod(runtime, kind, f"warm-{kind}", image, command)
            wait_200(f"http://{ip}:8080/")
            remove_pod(runtime, pod)
        times = {kind: [] for kind in kinds}
        for i in range(runs):
            for kind, (image, command) in kinds.items():
                start = time.monotonic()
                pod, ip = start_pod(runtime, kind, f"{kind}-{i}", image, command)
                wait_200(f"http://{ip}:8080/")
                times[kind].append((time.monotonic() - start) * 1000)
                remove_pod(runtime, pod)
        version = sh("containerd", "--version").split()[2]
        runc = statistics.median(times["runc"])
        print(f"containerd {version}: pod start -> first 200 on the pod IP, median of {runs}: runc {runc:.1f} ms")
        for kind in kinds:
            if kind != "runc":
                median = statistics.median(times[kind])
                print(f"  {kind:<20} {median:7.1f} ms  ratio to runc {median / runc:.2f}x")

        started = []
        for i in range(pods):
            started.append(start_pod(runtime, "wasmhttp", f"many-{i}", *kinds["wasmhttp"]))
        for _, ip in started:
            wait_200(f"http://{ip}:8080/")
        time.sleep(1)
        pss = shim_pss_kib()
        print(f"{pods} wasmhttp pods, one hello each: shims' PSS {pss / 1024:.1f} MiB = "
              f"{pss / 1024 / pods:.2f} MiB per pod = {1024 * 1024 / (pss / pods):.0f} pods per GiB")
        for pod, _ in started:
            remove_pod(runtime, pod)
    finally:
        containerd.terminate()
        containerd.wait(timeout=20)


if __name__ == "__main__":
    main()
