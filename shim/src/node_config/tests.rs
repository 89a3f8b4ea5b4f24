use super::*;
use containerd_shim::protos::protobuf::CodedOutputStream;
use std::time::Duration;

#[test]
fn defaults_without_a_file() {
    let config = NodeConfig::default();
    assert_eq!(config.defaults, Limits::default());
    assert_eq!(config.ceilings, Limits::default());
    assert_eq!(
        config.engine.max_instances,
        EngineConfig::default().max_instances
    );
}

#[test]
fn the_shipped_example_spells_out_the_defaults() {
    let example = include_str!("../../../examples/containerd/wasmhttp-config.toml");
    let parsed = parse(example, "wasmhttp-config.toml").unwrap();
    let mut builtin = wasmhttp_runtime::knobs::builtin_defaults();
    builtin.take_set(&parsed.defaults);
    assert_eq!(builtin, wasmhttp_runtime::knobs::builtin_defaults());
    let engine = EngineConfig::default();
    assert_eq!(parsed.engine.max_instances, engine.max_instances);
    assert_eq!(
        parsed.engine.max_instance_memory,
        engine.max_instance_memory
    );
    assert_eq!(parsed.engine.cache_max_bytes, engine.cache_max_bytes);
    assert_eq!(parsed.engine.slot_keep_resident, engine.slot_keep_resident);
    assert_eq!(parsed.engine.max_component_size, engine.max_component_size);
    assert_eq!(parsed.security, Security::default());
}

#[test]
fn a_file_sets_engine_defaults_and_ceilings() {
    let config = parse(
            "[engine]\nmax-instances = 8\ncache-dir = \"/tmp/c\"\ncache-max-size = \"1Gi\"\n\
             slot-keep-resident = \"1Mi\"\n\
             [defaults]\nmemory = \"64Mi\"\nrequest-timeout = \"2s\"\nqueue-depth = 3\ndrain-timeout = \"1s\"\n\
             [ceilings]\nmax-concurrency = 64\n\
             [security]\nimage-annotation = \"any\"\ndeny-outbound = [\"10.0.0.0/8\", \"fd00::1\"]\n\
             seccomp = \"log\"\n",
            "t.toml",
        )
        .unwrap();
    assert!(config.security.any_image_annotation);
    assert_eq!(config.security.seccomp, SeccompMode::Log);
    assert_eq!(NodeConfig::default().security.seccomp, SeccompMode::Enforce);
    assert!(NodeConfig::default().security.landlock);
    let paths = parse(
        "[security]\nlandlock = \"off\"\nhost-paths = [\"/srv/a\", \"/data\"]\nmax-file-mounts-size = \"1Mi\"\n",
        "p.toml",
    )
    .unwrap()
    .security;
    assert!(!paths.landlock);
    assert_eq!(paths.max_file_mounts_size, 1 << 20);
    assert_eq!(
        NodeConfig::default().security.max_file_mounts_size,
        16 << 20
    );
    assert_eq!(paths.host_paths, [Path::new("/srv/a"), Path::new("/data")]);
    assert_eq!(
        config.security.deny_outbound,
        [
            "10.0.0.0/8".parse().unwrap(),
            "fd00::1/128".parse().unwrap()
        ]
    );
    assert!(
        NodeConfig::default().security.deny_outbound[0]
            .contains("169.254.169.254".parse().unwrap())
    );
    assert!(!NodeConfig::default().security.any_image_annotation);
    assert_eq!(config.engine.max_instances, 8);
    assert_eq!(config.engine.cache_dir, Some(PathBuf::from("/tmp/c")));
    assert_eq!(config.engine.cache_max_bytes, 1 << 30);
    assert_eq!(config.engine.slot_keep_resident, 1 << 20);
    assert_eq!(config.defaults.memory, Some(64 << 20));
    assert_eq!(
        config.defaults.request_timeout,
        Some(Duration::from_secs(2))
    );
    assert_eq!(config.defaults.queue_depth, Some(3));
    assert_eq!(config.defaults.drain_timeout, Some(Duration::from_secs(1)));
    assert_eq!(config.ceilings.max_concurrency, Some(64));
}

#[test]
fn old_snake_case_keys_are_still_read() {
    let config = parse(
        "[engine]\nmax_instances = 9\n[defaults]\nrequest_timeout = \"3s\"\nqueue_depth = 1\n",
        "old.toml",
    )
    .unwrap();
    assert_eq!(config.engine.max_instances, 9);
    assert_eq!(
        config.defaults.request_timeout,
        Some(Duration::from_secs(3))
    );
    assert_eq!(config.defaults.queue_depth, Some(1));
}

#[test]
fn errors_name_the_origin_line_and_key() {
    let err = parse("[defaults]\n\nmemory = \"64Xi\"\n", "/etc/n.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/etc/n.toml:3"), "{err}");
    assert!(
        err.contains("[defaults] memory") && err.contains("unknown unit"),
        "{err}"
    );
    let err = parse("[engine]\nmax-instancez = 1\n", "n.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("n.toml:2") && err.contains("max-instancez"),
        "{err}"
    );
    let err = parse("[ceilings]\nqueue-dept = 1\n", "n.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("n.toml:2") && err.contains("unknown key `queue-dept`"),
        "{err}"
    );
    let err = parse("[engine]\nprecompiled-signers = [\"AAAA\"]\n", "n.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("n.toml:2: [engine] precompiled-signers: \"AAAA\" is 3 bytes long"),
        "{err}"
    );
    let key = "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=";
    let signers = parse(
        &format!("[engine]\nprecompiled-signers = [\"{key}\"]\n"),
        "n.toml",
    )
    .unwrap()
    .engine
    .precompiled_signers;
    assert_eq!(signers, [TrustedKey::parse(key).unwrap()]);
    let err = parse("[limits]\nx = 1\n", "n.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown section [limits]"), "{err}");
    let err = parse("[security]\ndeny-outbound = [\"metadata\"]\n", "n.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("n.toml:2: [security] deny-outbound: \"metadata\" is not an address range"),
        "{err}"
    );
    let err = parse("[security]\nimage-annotation = \"all\"\n", "n.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("n.toml:2: [security] image-annotation: \"all\": expected \"own\" or \"any\""),
        "{err}"
    );
    let err = parse("[security]\nseccomp = \"strict\"\n", "n.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "n.toml:2: [security] seccomp: \"strict\": expected \"enforce\", \"log\" or \"off\""
        ),
        "{err}"
    );
    let err = parse("[security]\nlandlock = \"log\"\n", "n.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("n.toml:2: [security] landlock: \"log\": expected \"enforce\" or \"off\""),
        "{err}"
    );
    let err = parse("[security]\nhost-paths = [\"srv/data\"]\n", "n.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("n.toml:2: [security] host-paths: \"srv/data\": expected absolute paths"),
        "{err}"
    );
    let err = parse("[defaults\n", "n.toml").unwrap_err().to_string();
    assert!(err.contains("n.toml:1"), "{err}");
}

#[test]
fn runtime_options_carry_a_path_or_a_body() {
    // Encoded by another protobuf implementation than the one that decodes it.
    let encode = |path: &str, body: &str| {
        let mut value = Vec::new();
        let mut out = CodedOutputStream::vec(&mut value);
        out.write_string(1, "").unwrap();
        out.write_string(2, path).unwrap();
        out.write_string(3, body).unwrap();
        out.flush().unwrap();
        drop(out);
        Any {
            type_url: RUNTIME_OPTIONS_TYPE.into(),
            value,
            ..Default::default()
        }
    };
    let config = for_create(Some(&encode("", "[defaults]\nqueue-depth = 7\n"))).unwrap();
    assert_eq!(config.defaults.queue_depth, Some(7));
    let err = for_create(Some(&encode("/nonexistent/wasmhttp.toml", "")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/wasmhttp.toml"), "{err}");
    // The confined server must be able to read the file it failed on, to say why.
    assert_eq!(
        file_for(Some(&encode("/nonexistent/wasmhttp.toml", ""))),
        Some(PathBuf::from("/nonexistent/wasmhttp.toml"))
    );
    assert_eq!(file_for(Some(&encode("", "[defaults]\n"))), None);
    let runc = |fields: &[(u32, &str)]| {
        let mut value = Vec::new();
        let mut out = CodedOutputStream::vec(&mut value);
        for (number, text) in fields {
            out.write_string(*number, text).unwrap();
        }
        out.flush().unwrap();
        drop(out);
        Any {
            type_url: "type.googleapis.com/containerd.runc.v1.Options".into(),
            value,
            ..Default::default()
        }
    };
    // containerd's client, for a task in a Sandbox API pod: the endpoint only, which is no option of ours.
    let endpoint = runc(&[(12, "ttrpc+unix:///run/s.sock")]);
    assert_eq!(
        for_create(Some(&endpoint)).unwrap().defaults.queue_depth,
        None
    );
    // Real runc options (a binary name) are not ours, and a malformed message is not either.
    for wrong in [
        runc(&[(12, "ttrpc+unix:///run/s.sock"), (6, "crun")]),
        Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![1],
            ..Default::default()
        },
    ] {
        assert!(
            for_create(Some(&wrong))
                .unwrap_err()
                .to_string()
                .contains("not understood")
        );
    }
}
