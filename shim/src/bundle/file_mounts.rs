//! Read-only file mounts: a Kubernetes `subPath` of a ConfigMap or Secret, `ctr run --mount` of a file.
//!
//! A WASI guest is given directories, never single files, and preopening the host directory that holds the
//! file would show the guest its neighbours too (kubelet's ConfigMap directory holds every key). So the files
//! mounted into one container directory are copied at Create into a directory of the bundle's own, which
//! becomes that container directory's read-only preopen. A copy is readable exactly when the container's user
//! could read the source, judged from the source's owner, group and mode bits and the user's groups (the
//! shim, confined, cannot give a file another owner, so the copy is the shim's, mode 0444 or 0000). It is
//! taken once (a `subPath` of a ConfigMap is never updated in a running pod either) and goes with the bundle
//! when containerd deletes it. A writable file mount is refused: the guest's writes to a copy would be lost.

use rustix::fs::OFlags;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use wasmhttp_runtime::{FileUser, Preopen};

/// The bundle's directory holding the copies: one numbered directory per container directory.
pub const DIR: &str = "wasmhttp-files";

/// A read-only bind mount of a file, as the spec names it.
#[derive(Debug, Clone)]
pub struct FileMount {
    /// The mounted file on the host.
    pub source: PathBuf,
    /// Where the container sees it.
    pub destination: PathBuf,
}

/// A copy Create makes before the guest is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCopy {
    /// The mounted file on the host.
    pub source: PathBuf,
    /// Where the guest sees it, for messages.
    pub destination: String,
    /// Where the copy goes, in the bundle's [`DIR`].
    pub copy: PathBuf,
}

/// How errors name a file mount.
fn mount_name(destination: impl std::fmt::Display, source: &Path) -> String {
    format!(
        "the file mounted at {destination} (source {})",
        source.display()
    )
}

/// The read-only preopens of the container directories that `files` are mounted in, and the copies that
/// fill them. `volumes` are the container's directory mounts: a file inside one is refused, since the
/// preopen of its directory would hide the rest of that volume from the guest.
pub fn plan(
    bundle: &Path,
    files: &[FileMount],
    volumes: &[Preopen],
) -> Result<(Vec<Preopen>, Vec<FileCopy>), String> {
    let root = bundle.join(DIR);
    let mut directories: Vec<String> = Vec::new();
    let mut copies: Vec<FileCopy> = Vec::new();
    for file in files {
        let named = || mount_name(file.destination.display(), &file.source);
        let (directory, name) = split(&file.destination).ok_or_else(|| {
            format!(
                "{}: the destination is not an absolute path to a file without `..`",
                named()
            )
        })?;
        if let Some(volume) = volumes
            .iter()
            .find(|v| Path::new(&directory).starts_with(&v.guest))
        {
            return Err(format!(
                "{} lies inside the volume mounted at {}: a WASI guest is given directories, and that \
                 volume's directory cannot also hold a file from elsewhere; put the file in the volume or \
                 mount it in another directory",
                named(),
                volume.guest
            ));
        }
        let index = match directories.iter().position(|d| *d == directory) {
            Some(index) => index,
            None => {
                directories.push(directory);
                directories.len() - 1
            }
        };
        let copy = root.join(index.to_string()).join(name);
        // A later mount at the same place hides the earlier one, as under runc.
        copies.retain(|c| c.copy != copy);
        copies.push(FileCopy {
            source: file.source.clone(),
            destination: file.destination.display().to_string(),
            copy,
        });
    }
    let preopens = directories
        .into_iter()
        .enumerate()
        .map(|(index, guest)| Preopen {
            host: root.join(index.to_string()),
            guest,
            read_only: true,
        })
        .collect();
    Ok((preopens, copies))
}

/// The directory and file name of an absolute container path, `.` and repeated slashes dropped; `None` for
/// a relative path, one with `..` or one naming no file.
fn split(destination: &Path) -> Option<(String, String)> {
    let mut components = destination.components();
    if components.next() != Some(Component::RootDir) {
        return None;
    }
    let mut names = Vec::new();
    for component in components {
        match component {
            Component::Normal(name) => names.push(name.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    let name = names.pop()?;
    Some((format!("/{}", names.join("/")), name))
}

/// Makes the copies [`plan`] named in the bundle, `max_bytes` at most in all, each readable when `user`
/// (the container's, `None` for root) may read its source. On failure nothing is left of them; errors name
/// the mount and never quote the file.
pub fn copy(
    bundle: &Path,
    copies: &[FileCopy],
    user: Option<&FileUser>,
    max_bytes: u64,
) -> Result<(), String> {
    if copies.is_empty() {
        return Ok(());
    }
    let root = bundle.join(DIR);
    // A Create tried again in the same bundle starts from nothing.
    let _ = std::fs::remove_dir_all(&root);
    let result = copy_all(copies, user, max_bytes);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

fn copy_all(copies: &[FileCopy], user: Option<&FileUser>, max_bytes: u64) -> Result<(), String> {
    let mut left = max_bytes;
    for copy in copies {
        let named = mount_name(&copy.destination, &copy.source);
        let directory = copy.copy.parent().unwrap_or(Path::new("/"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(directory)
            .map_err(|e| format!("{named}: cannot make {}: {e}", directory.display()))?;
        // Non-blocking: a FIFO's open must not wait for a writer.
        let source = OpenOptions::new()
            .read(true)
            .custom_flags((OFlags::NONBLOCK | OFlags::NOCTTY).bits() as i32)
            .open(&copy.source)
            .map_err(|e| format!("{named}: {e}"))?;
        let meta = source.metadata().map_err(|e| format!("{named}: {e}"))?;
        if !meta.is_file() {
            return Err(format!(
                "{named} is not a regular file: only directories and regular files can be given to a WASI guest"
            ));
        }
        let mut target = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&copy.copy)
            .map_err(|e| format!("{named}: cannot copy it to {}: {e}", copy.copy.display()))?;
        // One byte past what is left tells a file that does not fit, however it grew since it was measured.
        let copied = std::io::copy(&mut (&source).take(left.saturating_add(1)), &mut target)
            .map_err(|e| format!("{named}: copying it failed: {e}"))?;
        if copied > left {
            return Err(format!(
                "{named} does not fit: the container's file mounts are copied, at most {max_bytes} bytes \
                 in all ([security] max-file-mounts-size of the node configuration); mount the directory \
                 that holds a large file instead"
            ));
        }
        left -= copied;
        let mode = if user.is_none_or(|u| may_read(u, &meta)) {
            0o444
        } else {
            0
        };
        target
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{named}: {e}"))?;
    }
    Ok(())
}

/// Whether the kernel's permission check (without ACLs) lets `user` read a file with `meta`'s owner, group
/// and mode: the owner's bits for its owner, the group's for a member, the others' for everyone else.
fn may_read(user: &FileUser, meta: &std::fs::Metadata) -> bool {
    let mode = meta.mode();
    let bit = if user.uid == meta.uid() {
        0o400
    } else if user.gid == meta.gid() || user.groups.contains(&meta.gid()) {
        0o040
    } else {
        0o004
    };
    mode & bit != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(source: &Path, destination: &str) -> FileMount {
        FileMount {
            source: source.to_path_buf(),
            destination: PathBuf::from(destination),
        }
    }

    #[test]
    fn files_in_one_directory_share_its_preopen_and_a_later_mount_wins() {
        let bundle = Path::new("/b");
        let source = Path::new("/src/x");
        let (preopens, copies) = plan(
            bundle,
            &[
                mount(source, "/etc/app/a.conf"),
                mount(source, "/etc//app/./b.conf"),
                mount(source, "/c.conf"),
                mount(Path::new("/src/y"), "/etc/app/a.conf"),
            ],
            &[Preopen {
                host: "/data".into(),
                guest: "/etc/app/data".into(),
                read_only: false,
            }],
        )
        .unwrap();
        let guests: Vec<_> = preopens
            .iter()
            .map(|p| (p.guest.as_str(), p.read_only))
            .collect();
        assert_eq!(guests, [("/etc/app", true), ("/", true)]);
        assert_eq!(preopens[1].host, Path::new("/b/wasmhttp-files/1"));
        let made: Vec<_> = copies
            .iter()
            .map(|c| (c.source.to_str().unwrap(), c.copy.to_str().unwrap()))
            .collect();
        assert_eq!(
            made,
            [
                ("/src/x", "/b/wasmhttp-files/0/b.conf"),
                ("/src/x", "/b/wasmhttp-files/1/c.conf"),
                ("/src/y", "/b/wasmhttp-files/0/a.conf"),
            ]
        );
    }

    #[test]
    fn a_file_inside_a_volume_or_a_path_with_dotdot_is_refused() {
        let volume = Preopen {
            host: "/data".into(),
            guest: "/data".into(),
            read_only: true,
        };
        let source = Path::new("/src/x");
        let err = plan(
            Path::new("/b"),
            &[mount(source, "/data/sub/x.conf")],
            &[volume],
        )
        .unwrap_err();
        assert!(
            err.contains("the file mounted at /data/sub/x.conf (source /src/x) lies inside the volume mounted at /data"),
            "{err}"
        );
        for bad in ["/etc/../x", "relative/x", "/"] {
            let err = plan(Path::new("/b"), &[mount(source, bad)], &[]).unwrap_err();
            assert!(
                err.contains("is not an absolute path to a file without `..`"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_copy_keeps_owner_and_mode_and_a_failure_leaves_nothing() {
        let host = tempfile::tempdir().unwrap();
        let bundle = tempfile::tempdir().unwrap();
        let secret = host.path().join("secret");
        std::fs::write(&secret, "s3cret").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(&secret, Some(1000), Some(2000)).unwrap();
        let (_, copies) =
            plan(bundle.path(), &[mount(&secret, "/run/secrets/token")], &[]).unwrap();
        let user = |uid, gid, groups: &[u32]| FileUser {
            uid,
            gid,
            groups: groups.to_vec(),
        };
        // The owner, a member of the group by its primary or a supplementary group, root: readable; others not.
        for (reader, readable) in [
            (Some(user(1000, 1000, &[])), true),
            (Some(user(3000, 2000, &[])), true),
            (Some(user(3000, 3000, &[2000])), true),
            (None, true),
            (Some(user(3000, 3000, &[])), false),
        ] {
            copy(bundle.path(), &copies, reader.as_ref(), 6).unwrap();
            let copied = &copies[0].copy;
            assert_eq!(std::fs::read_to_string(copied).unwrap(), "s3cret");
            let mode = std::fs::metadata(copied).unwrap().mode() & 0o7777;
            assert_eq!(mode, if readable { 0o444 } else { 0 }, "{reader:?}");
        }

        // Over the budget: refused, naming the key, and the copies made before are gone.
        let big = host.path().join("big");
        std::fs::write(&big, [b'x'; 7]).unwrap();
        let (_, copies) = plan(
            bundle.path(),
            &[mount(&secret, "/a/token"), mount(&big, "/a/big")],
            &[],
        )
        .unwrap();
        let err = copy(bundle.path(), &copies, None, 12).unwrap_err();
        assert!(
            err.contains(&format!(
                "the file mounted at /a/big (source {}) does not fit",
                big.display()
            )) && err.contains("max-file-mounts-size")
                && !err.contains("xxxxxxx"),
            "{err}"
        );
        assert!(!bundle.path().join(DIR).exists());
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let host = tempfile::tempdir().unwrap();
        let bundle = tempfile::tempdir().unwrap();
        let fifo = host.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let (_, copies) = plan(bundle.path(), &[mount(&fifo, "/etc/fifo")], &[]).unwrap();
        let err = copy(bundle.path(), &copies, None, 1 << 20).unwrap_err();
        assert!(err.contains("is not a regular file"), "{err}");
        assert!(!bundle.path().join(DIR).exists());
    }
}
