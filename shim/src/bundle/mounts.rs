//! The container's mounts as the guest gets them: directory binds as preopens, read-only file binds as
//! copies ([`super::file_mounts`]), the kernel's interfaces and the files the runtime itself provides left out.

use super::file_mounts::{self, FileCopy};
use oci_spec::runtime::Spec;
use std::path::{Path, PathBuf};
use wasmhttp_runtime::Preopen;

/// Files the runtime itself provides or uses (CRI binds them into every container): a guest reads none of
/// them as a file, so their binds are no volume the guest is missing.
const RUNTIME_FILES: [&str; 3] = ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"];

/// Bind mounts of directories become preopens, read-only bind mounts of files copies ([`file_mounts`]); the
/// kernel filesystems a container normally gets are no volume. A mount that cannot be given to the guest (a
/// writable file, a missing source, a tmpfs) fails the container, naming it, as a mount runc cannot make
/// would: a guest started without a volume it was given fails later and further from the cause.
pub(super) fn guest_mounts(
    spec: &Spec,
    bundle: &Path,
) -> Result<(Vec<Preopen>, Vec<FileCopy>), String> {
    let mounts = spec.mounts().clone().unwrap_or_default();
    let mut preopens = Vec::new();
    let mut files = Vec::new();
    for mount in &mounts {
        let destination = mount.destination();
        if is_kernel_interface(destination) {
            continue;
        }
        let Some((source, read_only)) = bind_mount(mount) else {
            // Every default spec (ctr's, CRI's) mounts a tmpfs at /run, which holds nothing for a guest.
            if destination == Path::new("/run") {
                continue;
            }
            return Err(format!(
                "the {} mount at {} cannot be given to a WASI guest, which sees host directories \
                 only: use a bind mount (a Kubernetes volume)",
                mount.typ().as_deref().unwrap_or("untyped"),
                destination.display()
            ));
        };
        let named = || {
            format!(
                "the mount at {} (source {})",
                destination.display(),
                source.display()
            )
        };
        match std::fs::metadata(source) {
            Ok(meta) if meta.is_dir() => preopens.push(Preopen {
                host: source.clone(),
                guest: destination.display().to_string(),
                read_only,
            }),
            Ok(_) if RUNTIME_FILES.iter().any(|f| destination == Path::new(f)) => {}
            Ok(meta) if meta.is_file() && read_only => files.push(file_mounts::FileMount {
                source: source.clone(),
                destination: destination.clone(),
            }),
            Ok(meta) if meta.is_file() => {
                return Err(format!(
                    "{} is a writable file: a WASI guest is given directories, and a file only as a \
                     read-only copy, where its writes would be lost; mount it read-only (`ro`, a \
                     Kubernetes readOnly volumeMount) or mount the directory that holds it",
                    named()
                ));
            }
            Ok(_) => {
                return Err(format!(
                    "{} is neither a directory nor a regular file: only those can be given to a WASI \
                     guest",
                    named()
                ));
            }
            Err(e) => return Err(format!("{}: {e}", named())),
        }
    }
    let (directories, copies) = file_mounts::plan(bundle, &files, &preopens)?;
    preopens.extend(directories);
    Ok((preopens, copies))
}

/// A bind mount's host source and whether it is read-only (`ro`); `None` for other mounts.
pub fn bind_mount(mount: &oci_spec::runtime::Mount) -> Option<(&PathBuf, bool)> {
    let options = mount.options().as_deref().unwrap_or_default();
    let is_bind = mount.typ().as_deref() == Some("bind")
        || options.iter().any(|o| o == "bind" || o == "rbind");
    let source = mount.source().as_ref().filter(|_| is_bind)?;
    Some((source, options.iter().any(|o| o == "ro")))
}

/// Whether `destination` is under `/dev`, `/proc` or `/sys`: the kernel's interfaces, which a WASI guest cannot
/// use. CRI binds the pod's `/dev/shm` (POSIX shared memory) writable into every container; preopening it
/// would give a guest a directory it has no use for, and refuse every container with a non-root
/// `runAsUser`, since guest file I/O runs as root.
fn is_kernel_interface(destination: &Path) -> bool {
    ["/dev", "/proc", "/sys"]
        .iter()
        .any(|root| destination.starts_with(root))
}
