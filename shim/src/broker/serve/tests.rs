use super::*;
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit};

fn owner(dir: &Path) -> Owner {
    Owner {
        bundles: Bundles {
            dir: dir.to_path_buf(),
            socket: "/run/containerd/s/mine".into(),
        },
        owned: HashSet::new(),
    }
}

fn create(id: &str) -> Event {
    Event::Create(TaskCreate {
        container_id: id.into(),
        ..Default::default()
    })
}

fn exit(id: &str) -> Event {
    Event::Exit(TaskExit {
        container_id: id.into(),
        ..Default::default()
    })
}

#[test]
fn only_events_of_containers_whose_bundle_names_this_shim_are_published() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = |id: &str, file: &str, text: &str| {
        std::fs::create_dir_all(dir.path().join(id)).unwrap();
        std::fs::write(dir.path().join(id).join(file), text).unwrap();
    };
    bundle("mine", "address", "unix:///run/containerd/s/mine\n");
    bundle(
        "in-pod",
        "bootstrap.json",
        r#"{"version":3,"address":"unix:///run/containerd/s/mine","protocol":"ttrpc"}"#,
    );
    bundle("theirs", "address", "unix:///run/containerd/s/other");
    let mut owner = owner(dir.path());

    // Another shim's container: neither its creation nor (the point of a forgery) its exit.
    let err = owner.admit(create("theirs")).unwrap_err();
    assert!(err.contains("not this shim's"), "{err}");
    let err = owner.admit(exit("theirs")).unwrap_err();
    assert!(err.contains("not one this shim created"), "{err}");
    // A container with no bundle, or an id that would leave the bundles' directory.
    assert!(
        owner
            .admit(create("nowhere"))
            .unwrap_err()
            .contains("no bundle")
    );
    for id in ["../mine", "", ".hidden", "a/b"] {
        let err = owner.admit(create(id)).unwrap_err();
        assert!(err.contains("is not a container id"), "{id}: {err}");
    }

    // This shim's containers, by `address` (start) or `bootstrap.json` (a Sandbox API pod's).
    for id in ["mine", "in-pod"] {
        owner.admit(create(id)).unwrap();
        owner.admit(exit(id)).unwrap();
    }
    owner
        .admit(Event::Delete(TaskDelete {
            container_id: "mine".into(),
            ..Default::default()
        }))
        .unwrap();
    assert!(
        owner.admit(exit("mine")).is_err(),
        "deleted: no longer this shim's"
    );
    assert!(owner.admit(exit("in-pod")).is_ok());
    // Wasm layers are read for the same containers only.
    assert!(owner.bundles.check("mine").is_ok());
    assert!(owner.bundles.check("theirs").is_err());
}

#[test]
fn task_bundles_are_found_from_a_task_or_a_sandbox_bundle() {
    let state = Path::new("/run/containerd");
    for cwd in [
        "/run/containerd/io.containerd.runtime.v2.task/k8s.io/pod",
        "/run/containerd/io.containerd.sandbox.controller.v1.shim/k8s.io/pod",
    ] {
        assert_eq!(
            task_bundles(Path::new(cwd), "k8s.io"),
            state.join(TASK_BUNDLES).join("k8s.io")
        );
    }
    assert_eq!(
        task_bundles(Path::new("/elsewhere/ns/ctr"), "ns"),
        Path::new("/elsewhere/ns")
    );
}

#[test]
fn events_round_trip_and_a_forged_kind_is_refused() {
    let (kind, bytes) = exit("c").encode();
    assert_eq!(Event::decode(kind, &bytes).unwrap().container_id(), "c");
    assert!(Event::decode(99, &bytes).unwrap_err().contains("kind 99"));
    assert!(Event::decode(kind, b"\xff\xff\xff").is_err());
}
