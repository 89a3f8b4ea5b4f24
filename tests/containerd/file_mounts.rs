//! Read-only file mounts (a Kubernetes `subPath`, `ctr run --mount` of a file): the guest reads the file where
//! it was mounted and nothing beside it, cannot write it, and the copy the shim made goes with the bundle.
//! The process's working directory (a Kubernetes `workingDir`) is the guest's `initial-cwd`.

use super::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn a_read_only_file_mount_reaches_the_guest_alone_and_goes_with_the_bundle_and_cwd_is_passed_on() {
    let containerd = Containerd::start();
    let image = import_example(&containerd, "probe");
    let host = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str, mode: u32| {
        let path = host.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    let config = write("app.conf", "greeting=hi", 0o644);
    let token = write("token", "t0ken", 0o600);
    write("neighbour", "not mounted", 0o644);
    // A directory volume laid out as the kubelet writes a ConfigMap's: each key a link into `..data`, itself
    // a link to the current version's directory, swapped whole on an update.
    let volume = tempfile::tempdir().unwrap();
    let version = |name: &str, text: &str| {
        let dir = volume.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("data.txt"), text).unwrap();
        let link = volume.path().join("..data_tmp");
        std::os::unix::fs::symlink(name, &link).unwrap();
        std::fs::rename(&link, volume.path().join("..data")).unwrap();
    };
    version("..2026_01_01_00_00_00.1", "in the volume");
    std::os::unix::fs::symlink("..data/data.txt", volume.path().join("data.txt")).unwrap();
    let mount = |source: &std::path::Path, destination: &str, options: &str| {
        format!(
            "type=bind,src={},dst={destination},options=rbind:{options}",
            source.display()
        )
    };
    let port = free_port();
    let mounts = [
        mount(&config, "/etc/app/app.conf", "ro"),
        mount(&token, "/etc/app/token", "ro"),
        mount(volume.path(), "/etc/app/volume", "ro"),
    ];
    let mut extra: Vec<&str> = mounts.iter().flat_map(|m| ["--mount", m]).collect();
    // The process's working directory (a Kubernetes workingDir) is the guest's initial-cwd.
    extra.extend(["--cwd", "/etc/app"]);
    run_service(&containerd, &image, "files1", port, &extra);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let probe = |target: &str| wait_for_200_at(addr, target);
    let body = probe(
        "/?read=/etc/app/app.conf&read=/etc/app/token&read=/etc/app/volume/data.txt\
         &read=/etc/app/neighbour&write=/etc/app/app.conf&write=/etc/app/new&cwd",
    );
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "read allowed: greeting=hi",
            "read allowed: t0ken",
            "read allowed: in the volume"
        ],
        "{body}"
    );
    assert!(
        lines[3].starts_with("read denied")
            && lines[4..6].iter().all(|l| l.starts_with("write denied")),
        "the source's neighbour is not there, and nothing can be written: {body}"
    );
    assert_eq!(lines[6..], ["initial-cwd: /etc/app"], "{body}");
    // The copy was taken at Create: a later change of the source is not seen, as with a ConfigMap's subPath;
    // a directory volume is the host's own, so an update of the ConfigMap is.
    std::fs::write(&config, "greeting=changed").unwrap();
    version("..2026_01_01_00_00_00.2", "updated");
    assert_eq!(
        probe("/?read=/etc/app/volume/data.txt"),
        "read allowed: updated\n"
    );
    assert_eq!(
        probe("/?read=/etc/app/app.conf"),
        "read allowed: greeting=hi\n"
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "greeting=changed"
    );

    let bundle = containerd
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task")
        .join(NAMESPACE)
        .join("files1");
    assert!(
        bundle.join("wasmhttp-files").is_dir(),
        "the copies live in the bundle"
    );
    kill_now(&containerd, "files1");
    containerd.ctr_ok(&["task", "delete", "files1"]);
    containerd.ctr_ok(&["container", "rm", "files1"]);
    assert!(!bundle.exists(), "the bundle, copies and all, is gone");

    // A file inside a directory volume cannot be added to it; a file above the node's limit is refused.
    let inside = [
        "--mount",
        &mounts[2],
        "--mount",
        &mount(&config, "/etc/app/volume/app.conf", "ro"),
        &image,
    ];
    let said = refused_run(&containerd, &inside, "files2");
    assert!(
        said.contains("the file mounted at /etc/app/volume/app.conf")
            && said.contains("lies inside the volume mounted at /etc/app/volume"),
        "{said}"
    );
    let big = write("big", &"x".repeat((16 << 20) + 1), 0o644);
    let said = refused_run(
        &containerd,
        &["--mount", &mount(&big, "/etc/app/big", "ro"), &image],
        "files3",
    );
    assert!(
        said.contains(&format!(
            "the file mounted at /etc/app/big (source {}) does not fit",
            big.display()
        )) && said.contains("max-file-mounts-size"),
        "{said}"
    );
    let state = containerd
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task");
    let left = std::process::Command::new("find")
        .args([state.to_str().unwrap(), "-name", "wasmhttp-files"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&left.stdout),
        "",
        "copies left behind"
    );
}
