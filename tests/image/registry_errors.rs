//! What `wasmhttp image push` and `pull` say when the registry cannot be reached, refuses the reference or
//! the credentials; and every place credentials come from (`auths`, `credHelpers`, `credsStore`).

use super::*;

#[test]
fn bad_references_unreachable_registries_and_denied_pushes_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("hello.tar");
    build("hello", "example.com/hello:v1", "layer", &tar);

    let bad = fails(image_push(&tar, "Bad Reference!!", &[]));
    assert!(bad.contains("invalid image reference"), "{bad}");

    let nobody = format!("127.0.0.1:{}/hello:v1", free_port());
    let unreachable = fails(image_push(&tar, &nobody, &[]));
    assert!(
        unreachable.contains("cannot reach registry"),
        "{unreachable}"
    );
    let out = dir.path().join("never.tar");
    let unreachable = fails(image_pull(&nobody, &out, &[]));
    assert!(
        unreachable.contains("cannot reach registry"),
        "{unreachable}"
    );
    assert!(!out.exists(), "nothing written when the pull fails");

    let registry = Registry::start_with_login("ci", "s3cret");
    let reference = format!("{}/hello:v1", registry.host);
    let denied = fails(image_push(&tar, &reference, &[]));
    assert!(denied.contains("401 Unauthorized"), "{denied}");
    let docker_config = dir.path().join("docker");
    let login = |password: &str| {
        std::fs::create_dir_all(&docker_config).unwrap();
        let auth = STANDARD.encode(format!("ci:{password}"));
        std::fs::write(
            docker_config.join("config.json"),
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.host),
        )
        .unwrap();
    };
    login("wrong");
    let env = [("DOCKER_CONFIG", docker_config.as_path())];
    let denied = fails(image_push(&tar, &reference, &env));
    assert!(denied.contains("401 Unauthorized"), "{denied}");
    login("s3cret");
    ok(image_push(&tar, &reference, &env), "push with credentials");
    ok(image_pull(&reference, &out, &env), "pull with credentials");

    // Most real logins keep the secret in a credential helper: `credHelpers` per registry, else `credsStore`.
    let helpers = dir.path().join("helpers");
    std::fs::create_dir_all(&helpers).unwrap();
    let helper = helpers.join("docker-credential-wasmhttp-test");
    std::fs::write(
        &helper,
        "#!/bin/sh\nread server\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"ci\",\"Secret\":\"s3cret\"}' \"$server\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", helpers.display(), std::env::var("PATH").unwrap());
    let env = [
        ("DOCKER_CONFIG", docker_config.as_path()),
        ("PATH", std::path::Path::new(&path)),
    ];
    for config in [
        format!(
            r#"{{"credHelpers":{{"{}":"wasmhttp-test"}}}}"#,
            registry.host
        ),
        r#"{"credsStore":"wasmhttp-test"}"#.to_string(),
    ] {
        std::fs::write(docker_config.join("config.json"), &config).unwrap();
        ok(
            image_push(&tar, &reference, &env),
            &format!("push with a credential helper: {config}"),
        );
    }
}
