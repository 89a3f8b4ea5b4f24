use super::*;
use wasmhttp_runtime::Preopen;

fn bundle(config: &str, files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    for (name, bytes) in files {
        let path = dir.path().join("rootfs").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    dir
}

fn config(args: &str, extra: &str) -> String {
    format!(
        r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},
               "process":{{"user":{{"uid":0,"gid":0}},"cwd":"/","args":{args},"env":["PORT=9000","GREETING=hi"]}}
               {extra}}}"#
    )
}

#[test]
fn the_containers_user_and_its_groups_are_the_guests_file_user() {
    let with_user = |user: &str| {
        config(
                r#"["/app.wasm"]"#,
                r#","mounts":[{"destination":"/data","type":"bind","source":"/tmp","options":["rbind","rw"]}]"#,
            )
            .replace(r#""uid":0,"gid":0"#, user)
    };
    let files: &[(&str, &[u8])] = &[("app.wasm", b"\0asm\x01\0\0\0")];
    let file_user = |user: &str| {
        let dir = bundle(&with_user(user), files);
        let workload = load(dir.path(), &[], &Layers::default(), 1 << 20).unwrap();
        assert_eq!(workload.capabilities.preopens.len(), 1);
        workload.capabilities.file_user
    };
    assert_eq!(
        file_user(r#""uid":1000,"gid":1001,"additionalGids":[2000,3000]"#).as_deref(),
        Some(&FileUser {
            uid: 1000,
            gid: 1001,
            groups: vec![2000, 3000]
        })
    );
    assert_eq!(
        file_user(r#""uid":0,"gid":1000"#),
        None,
        "root keeps root's rights"
    );
}

#[test]
fn a_bare_command_name_is_looked_up_in_the_containers_path() {
    let wasm: &[u8] = b"\0asm\x01\0\0\0";
    let source = |dir: &tempfile::TempDir| match load(dir.path(), &[], &Layers::default(), 1 << 20)
        .unwrap()
        .payload
    {
        Payload::Wasm(source) => source.name().to_string(),
        _ => panic!("not read from the rootfs"),
    };
    // The spec's PATH, in order; the guest still sees the name it was given.
    let dir = bundle(
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"user":{"uid":0,"gid":0},"cwd":"/","args":["top"],
               "env":["PATH=/opt/missing:/opt/bin:/bin"]}}"#,
        &[("opt/bin/top", wasm), ("bin/top", wasm)],
    );
    assert_eq!(source(&dir), "/opt/bin/top");
    let workload = load(dir.path(), &[], &Layers::default(), 1 << 20).unwrap();
    assert_eq!(workload.capabilities.args, ["top"]);
    // No PATH: runc's default; not on it: the root.
    let dir = bundle(&config(r#"["sh"]"#, ""), &[("bin/sh", wasm)]);
    assert_eq!(source(&dir), "/bin/sh");
    let dir = bundle(&config(r#"["app.wasm"]"#, ""), &[("app.wasm", wasm)]);
    assert_eq!(source(&dir), "/app.wasm");
    // A relative PATH entry is skipped (it would depend on the cwd).
    assert_eq!(
        command_paths("x", &["PATH=bin:/b/".to_string()]),
        ["/b/x", "/x"]
    );
}

#[test]
fn a_wasm_bundle_is_read_with_env_port_limits_and_network() {
    let extra = r#","linux":{"resources":{"memory":{"limit":1048576}},
            "namespaces":[{"type":"network","path":"/var/run/netns/x"}]},
            "mounts":[{"destination":"/data","type":"bind","source":"/tmp","options":["rbind","ro"]},
                      {"destination":"/proc","type":"proc","source":"proc"}]"#;
    let dir = bundle(
        &config(r#"["/app.wasm","--flag"]"#, extra),
        &[("app.wasm", b"\0asm\x01\0\0\0")],
    );
    let workload = load(dir.path(), &[], &Layers::default(), 1 << 20).unwrap();
    assert!(matches!(workload.payload, Payload::Wasm(_)));
    assert_eq!(workload.port, Ok(9000));
    assert_eq!(workload.capabilities.args, ["app.wasm", "--flag"]);
    assert!(
        workload
            .capabilities
            .env
            .contains(&("GREETING".into(), "hi".into()))
    );
    assert_eq!(workload.limits.memory, Some(1 << 20));
    assert_eq!(
        workload.network,
        Network::Namespace("/var/run/netns/x".into())
    );
    assert_eq!(
        workload.capabilities.preopens,
        [Preopen {
            host: "/tmp".into(),
            guest: "/data".into(),
            read_only: true
        }]
    );
}

/// The environment and arguments as runc gives them to a process: a key set twice has its last value, and
/// an entry that is no variable, or an argument no `execve` would take, fails Create, naming it.
#[test]
fn the_environment_and_arguments_are_read_as_runc_reads_them() {
    let env = |list: &str| {
        let dir = bundle(
            &config(r#"["/a.wasm"]"#, "").replace(r#""PORT=9000","GREETING=hi""#, list),
            &[("a.wasm", b"x")],
        );
        load(dir.path(), &[], &Layers::default(), 1 << 20)
    };
    let workload = env(r#""PORT=9000","A=1","PORT=9001""#).unwrap();
    assert_eq!(workload.port, Ok(9001));
    assert_eq!(
        workload.capabilities.env,
        [("A".into(), "1".into()), ("PORT".into(), "9001".into())]
    );
    for (list, why) in [
        (
            r#""A=1","NOVALUE""#,
            r#"process.env[1]: "NOVALUE" is not KEY=VALUE"#,
        ),
        (r#""=x""#, r#"process.env[0]: "=x" is not KEY=VALUE"#),
        (
            r#""A=x\u0000y""#,
            "process.env[0]: \"A=x\\0y\" holds a NUL byte",
        ),
    ] {
        let err = env(list).unwrap_err().to_string();
        assert!(
            err.contains("config.json: ") && err.contains(why),
            "{list}: {err}"
        );
    }
    let dir = bundle(
        &config(r#"["/a.wasm","x\u0000y"]"#, ""),
        &[("a.wasm", b"x")],
    );
    let err = load(dir.path(), &[], &Layers::default(), 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(r#"config.json: process.args[1] "x\0y" holds a NUL byte"#),
        "{err}"
    );
}

#[test]
fn bad_bundles_are_named_in_the_error() {
    let dir = bundle(&config("[]", ""), &[]);
    let err = load(dir.path(), &[], &Layers::default(), 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json: process.args is empty"), "{err}");

    // Not in the rootfs: the Task service looks for a wasm layer in the image, and gives this error if none.
    let dir = bundle(&config(r#"["/missing.wasm"]"#, ""), &[]);
    let Payload::ImageLayer(layer) = load(dir.path(), &[], &Layers::default(), 1 << 20)
        .unwrap()
        .payload
    else {
        panic!("a missing file must be looked for in the image");
    };
    assert_eq!(layer.image, None);
    let err = layer.not_in_rootfs.unwrap();
    assert!(
        err.contains("config.json: process.args[0] /missing.wasm does not exist"),
        "{err}"
    );

    let annotated = r#","annotations":{"wasmhttp.io/image":"example.com/app:v1"}"#;
    let dir = bundle(&config("[]", annotated), &[]);
    let workload = load(dir.path(), &[], &Layers::default(), 1 << 20).unwrap();
    let Payload::ImageLayer(layer) = &workload.payload else {
        panic!("the annotation names the image to read");
    };
    assert_eq!(
        layer,
        &ImageLayer {
            image: Some("example.com/app:v1".into()),
            name: "app.wasm".into(),
            not_in_rootfs: None
        }
    );
    assert_eq!(workload.capabilities.args, ["app.wasm"]);

    let dir = bundle(&config(r#"["/../etc/passwd"]"#, ""), &[]);
    let payload = load(dir.path(), &[], &Layers::default(), 1 << 20)
        .unwrap()
        .payload;
    assert!(
        matches!(
            payload,
            Payload::ImageLayer(ImageLayer {
                not_in_rootfs: Some(_),
                ..
            })
        ),
        "`..` stops at the container's root, so the host's /etc/passwd is not found: {payload:?}"
    );

    let dir = bundle("{not json", &[]);
    let err = load(dir.path(), &[], &Layers::default(), 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot read bundle config") && err.contains("config.json"),
        "{err}"
    );

    // A PORT that is no port fails a service (port 0 would listen where nobody is told); a command is given
    // it as one more variable.
    for port in ["web", "0", "65536"] {
        let dir = bundle(
            &config(r#"["/a.wasm"]"#, "").replace("PORT=9000", &format!("PORT={port}")),
            &[("a.wasm", b"x")],
        );
        let workload = load(dir.path(), &[], &Layers::default(), 1 << 20).unwrap();
        let err = workload.port.unwrap_err();
        assert!(
            err.contains("config.json")
                && err.contains(&format!(
                    "PORT={port:?} is invalid: expected a port number from 1"
                )),
            "{err}"
        );
        assert!(
            workload
                .capabilities
                .env
                .contains(&("PORT".into(), port.into()))
        );
    }
}

#[test]
fn the_sandbox_container_needs_no_binary_and_overlay_layers_are_searched() {
    let sandbox = config(
        r#"["/pause"]"#,
        r#","annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"pod1"}"#,
    );
    let dir = bundle(&sandbox, &[]);
    assert!(matches!(
        load(dir.path(), &[], &Layers::default(), 1 << 20)
            .unwrap()
            .payload,
        Payload::Sandbox
    ));
    assert_eq!(grouping_key(dir.path(), "c1"), "pod1");

    let layers = tempfile::tempdir().unwrap();
    let (lower, upper) = (layers.path().join("lower"), layers.path().join("upper"));
    std::fs::create_dir_all(&lower).unwrap();
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::write(lower.join("app.wasm"), b"lower").unwrap();
    let mount = RootfsMount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            format!("lowerdir={}", lower.display()),
            format!("upperdir={}", upper.display()),
        ],
    };
    let dir = bundle(&config(r#"["/app.wasm"]"#, ""), &[]);
    let Payload::Wasm(source) = load(dir.path(), &[mount], &Layers::default(), 1 << 20)
        .unwrap()
        .payload
    else {
        panic!()
    };
    assert_eq!(source.bytes(), b"lower");
    assert_eq!(grouping_key(dir.path(), "c1"), "c1");
}

#[test]
fn a_mount_that_cannot_be_a_guest_directory_fails_naming_it() {
    let host = tempfile::tempdir().unwrap();
    let file = host.path().join("app.conf");
    std::fs::write(&file, "x").unwrap();
    let missing = host.path().join("missing");
    let with_options = |mounts: &[(&str, &std::path::Path)], options: &str| {
        let mounts: Vec<String> = mounts
            .iter()
            .map(|(destination, source)| {
                format!(
                    r#"{{"destination":"{destination}","type":"bind","source":"{}","options":["rbind","{options}"]}}"#,
                    source.display()
                )
            })
            .collect();
        let dir = bundle(
            &config(
                r#"["/a.wasm"]"#,
                &format!(r#","mounts":[{}]"#, mounts.join(",")),
            ),
            &[("a.wasm", b"x")],
        );
        load(dir.path(), &[], &Layers::default(), 1 << 20).map(|w| {
            let copies = w.file_copies.iter();
            let copies = copies.map(|c| (c.source.clone(), c.destination.clone()));
            (w.capabilities.preopens, copies.collect::<Vec<_>>())
        })
    };
    let with_mounts = |mounts: &[(&str, &std::path::Path)]| {
        with_options(mounts, "ro").map(|(preopens, _)| preopens)
    };
    // The files CRI binds into every container, and the kernel's interfaces, are no guest volume.
    let preopens = with_mounts(&[
        ("/etc/hosts", &file),
        ("/etc/resolv.conf", &file),
        ("/etc/hostname", &file),
        ("/dev/termination-log", &file),
        ("/data", host.path()),
    ])
    .unwrap();
    assert_eq!(preopens.len(), 1, "{preopens:?}");
    assert_eq!(preopens[0].guest, "/data");

    // A read-only file is copied into a directory of the bundle's, which the guest sees where it is mounted.
    let (preopens, copies) = with_options(&[("/etc/app/app.conf", &file)], "ro").unwrap();
    assert_eq!(
        (
            preopens.len(),
            preopens[0].guest.as_str(),
            preopens[0].read_only
        ),
        (1, "/etc/app", true)
    );
    assert!(
        preopens[0].host.ends_with("wasmhttp-files/0"),
        "{preopens:?}"
    );
    assert_eq!(copies, [(file.clone(), "/etc/app/app.conf".to_string())]);
    // A writable one would lose the guest's writes.
    let err = with_options(&[("/etc/app/app.conf", &file)], "rw")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json: the mount at /etc/app/app.conf (source ")
            && err.contains("app.conf) is a writable file: a WASI guest is given directories"),
        "{err}"
    );
    // ctr's and CRI's default tmpfs at /run is no volume either; a tmpfs elsewhere is one the guest would lack.
    let tmpfs = |destination: &str| {
        let mount = format!(
            r#","mounts":[{{"destination":"{destination}","type":"tmpfs","source":"tmpfs"}}]"#
        );
        let dir = bundle(&config(r#"["/a.wasm"]"#, &mount), &[("a.wasm", b"x")]);
        load(dir.path(), &[], &Layers::default(), 1 << 20).map(|w| w.capabilities.preopens)
    };
    assert_eq!(tmpfs("/run").unwrap(), []);
    let err = tmpfs("/scratch").unwrap_err().to_string();
    assert!(
        err.contains("the tmpfs mount at /scratch cannot be given to a WASI guest"),
        "{err}"
    );
    let err = with_mounts(&[("/data", &missing)]).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "the mount at /data (source {}): No such file or directory",
            missing.display()
        )),
        "{err}"
    );
}

#[test]
fn the_processs_cwd_is_the_guests_initial_cwd_and_must_be_absolute() {
    let load_cwd = |cwd: &str| {
        let spec =
            config(r#"["/a.wasm"]"#, "").replace(r#""cwd":"/""#, &format!(r#""cwd":"{cwd}""#));
        let dir = bundle(&spec, &[("a.wasm", b"x")]);
        load(dir.path(), &[], &Layers::default(), 1 << 20).map(|w| w.capabilities.cwd)
    };
    assert_eq!(load_cwd("/srv/app").unwrap().as_deref(), Some("/srv/app"));
    assert_eq!(load_cwd("/").unwrap(), None);
    let err = load_cwd("srv/app").unwrap_err().to_string();
    assert!(
        err.contains("config.json: process.cwd \"srv/app\" is not an absolute path"),
        "{err}"
    );
}
