//! A real OCI registry for tests: Debian's `docker-registry` on a free loopback port, storage in a temp dir,
//! killed when dropped.

use crate::KillOnDrop;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry of the test's own.
pub struct Registry {
    /// Config and storage.
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`.
    pub host: String,
    _process: KillOnDrop,
}

impl Registry {
    /// Starts the registry and waits until it answers.
    pub fn start() -> Self {
        Registry::start_with(|_| String::new())
    }

    /// A registry that lets only `user` with `password` in (htpasswd, bcrypt, as docker-registry requires).
    pub fn start_with_login(user: &str, password: &str) -> Self {
        Registry::start_with(|dir| {
            let htpasswd = dir.join("htpasswd");
            let output = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .unwrap_or_else(|e| {
                    panic!("htpasswd (apache2-utils) is not installed ({e}): run scripts/test.sh")
                });
            assert!(output.status.success(), "htpasswd failed");
            std::fs::write(&htpasswd, output.stdout).unwrap();
            format!(
                "auth:\n  htpasswd:\n    realm: wasmhttp-test\n    path: {}\n",
                htpasswd.display()
            )
        })
    }

    /// Starts the registry with extra top-level config (YAML) made in its directory.
    fn start_with(extra_config: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("wasmhttp-registry-")
            .tempdir()
            .unwrap();
        let port = crate::containerd::free_port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}/data\nhttp:\n  addr: {host}\n{}",
                dir.path().display(),
                extra_config(dir.path())
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "docker-registry is not installed ({e}): run scripts/test.sh, which installs it"
                )
            });
        let registry = Registry {
            dir,
            host,
            _process: KillOnDrop(child),
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(&registry.host).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the registry never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// Pushes an OCI image-layout tar to `repository:tag` with skopeo; returns the full reference.
    pub fn push_oci_archive(&self, tar: &Path, repository_tag: &str) -> String {
        self.push(&format!("oci-archive:{}", tar.display()), repository_tag)
    }

    /// Pushes any image skopeo can read (`oci:DIR:TAG`, `oci-archive:TAR`) to `repository:tag`; returns the
    /// full reference.
    pub fn push(&self, source: &str, repository_tag: &str) -> String {
        let reference = format!("{}/{repository_tag}", self.host);
        let output = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", source])
            .arg(format!("docker://{reference}"))
            .output()
            .unwrap_or_else(|e| panic!("skopeo is not installed ({e}): run scripts/test.sh"));
        assert!(
            output.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        reference
    }
}
