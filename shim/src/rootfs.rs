//! Reading a file a container names (`process.args[0]`) as the container itself would see it, never the host's.
//!
//! The shim runs as root in the host's mount namespace and reads the image's layers directly (no overlay
//! mount is made, so none can be left behind). Every path is therefore resolved here, one component at a time,
//! against the merged view of the layers: a symlink's target (absolute or relative, at any depth) is resolved
//! inside the container's root, `..` stops at that root, an overlay whiteout hides what lies below it and an
//! opaque directory hides the lower layers' directories. The file found is opened with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`) below its layer, must be a regular file and is read up to a size
//! cap, so a FIFO, a device or a huge file cannot block or bloat the shim.

use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use wasmhttp_runtime::precompiled::{self, PrecompiledStore, Signed};

/// Symlinks followed in one lookup before giving up, as the kernel does (`ELOOP`).
const MAX_SYMLINKS: usize = 40;
/// The xattrs overlayfs marks an opaque directory with (the second when mounted with `userxattr`).
const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

/// The precompiled code an image ships ([`precompiled::IMAGE_DIR`]), read like any file the container names.
pub struct ShippedCode {
    layers: Vec<PathBuf>,
    max_bytes: u64,
}

impl ShippedCode {
    /// The code in a root made of `layers` (topmost first), each file read up to `max_bytes`.
    pub fn new(layers: Vec<PathBuf>, max_bytes: u64) -> Self {
        ShippedCode { layers, max_bytes }
    }
}

/// An Ed25519 signature is 64 bytes; anything much larger is not one.
const MAX_SIGNATURE_BYTES: u64 = 1024;

impl PrecompiledStore for ShippedCode {
    fn find(&self, engine_hash: &str) -> Result<Option<Signed>, String> {
        let fs = RootFs::new(&self.layers);
        let (code_name, signature_name) = precompiled::file_names(engine_hash);
        let code_path = format!("{}/{code_name}", precompiled::IMAGE_DIR);
        let signature_path = format!("{}/{signature_name}", precompiled::IMAGE_DIR);
        let Some(code) = fs.read(&code_path, self.max_bytes)? else {
            return Ok(None);
        };
        let signature = fs
            .read(&signature_path, MAX_SIGNATURE_BYTES)?
            .ok_or_else(|| format!("{code_path} has no signature beside it"))?;
        Ok(Some(Signed { code, signature }))
    }
}

/// What a path names in the merged view.
enum Entry {
    Missing,
    /// A directory, present in these layers (indices, topmost first).
    Dir(Vec<usize>),
    Symlink(PathBuf),
    /// A regular file in this layer.
    File(usize),
    /// Something else (FIFO, socket, device), by kind.
    Other(&'static str),
}

/// The root filesystem of a container: its layer directories, topmost first (one for a plain directory).
pub struct RootFs<'a> {
    layers: &'a [PathBuf],
}

impl<'a> RootFs<'a> {
    /// A root made of `layers`, topmost first.
    pub fn new(layers: &'a [PathBuf]) -> Self {
        RootFs { layers }
    }

    /// The bytes of the regular file at `path` (resolved inside this root); `Ok(None)` when nothing is there.
    /// Errors name `path` only: nothing read from outside the root, nor the file's content, is echoed.
    pub fn read(&self, path: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, String> {
        let Some((layer, relative)) = self.resolve(path)? else {
            return Ok(None);
        };
        let root = std::fs::File::open(&self.layers[layer])
            .map_err(|e| format!("{path}: cannot open the layer holding it: {e}"))?;
        let fd = rustix::fs::openat2(
            &root,
            &relative,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| format!("{path}: cannot open: {e}"))?;
        let mut file = std::fs::File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| format!("{path}: cannot stat: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{path} is not a regular file"));
        }
        if meta.len() > max_bytes {
            return Err(too_big(path, meta.len(), max_bytes));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        (&mut file)
            .take(max_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{path}: cannot read: {e}"))?;
        if bytes.len() as u64 > max_bytes {
            return Err(too_big(path, bytes.len() as u64, max_bytes));
        }
        Ok(Some(bytes))
    }

    /// The layer and the symlink-free relative path of the file `path` names, if any.
    fn resolve(&self, path: &str) -> Result<Option<(usize, PathBuf)>, String> {
        let all_layers: Vec<usize> = (0..self.layers.len()).collect();
        let mut pending: Vec<String> = components(path).rev().collect();
        // The directories resolved so far, each with the layers it is made of.
        let mut resolved: Vec<(String, Vec<usize>)> = Vec::new();
        let mut symlinks = 0;
        while let Some(name) = pending.pop() {
            match name.as_str() {
                "." => continue,
                ".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            let dir: PathBuf = resolved.iter().map(|(n, _)| n.as_str()).collect();
            let stack = resolved.last().map_or(&all_layers, |(_, s)| s);
            match self.lookup(stack, &dir.join(&name))? {
                Entry::Missing => return Ok(None),
                Entry::Dir(layers) => resolved.push((name, layers)),
                Entry::Symlink(target) => {
                    symlinks += 1;
                    if symlinks > MAX_SYMLINKS {
                        return Err(format!("{path}: too many levels of symbolic links"));
                    }
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    pending.extend(
                        components(&target.to_string_lossy())
                            .rev()
                            .collect::<Vec<_>>(),
                    );
                }
                Entry::File(layer) if pending.is_empty() => {
                    return Ok(Some((layer, dir.join(name))));
                }
                Entry::Other(kind) if pending.is_empty() => {
                    return Err(format!("{path} is a {kind}, not a regular file"));
                }
                // A file in the middle of a path: "not a directory", so nothing is there.
                Entry::File(_) | Entry::Other(_) => return Ok(None),
            }
        }
        if resolved.is_empty() {
            Err(format!("{path} is the root directory, not a file"))
        } else {
            Err(format!("{path} is a directory, not a file"))
        }
    }

    /// What `relative` is in the merged view of the layers in `stack` (those its parent directory is made of).
    fn lookup(&self, stack: &[usize], relative: &Path) -> Result<Entry, String> {
        let mut dirs = Vec::new();
        for &layer in stack {
            let host = self.layers[layer].join(relative);
            let meta = match std::fs::symlink_metadata(&host) {
                Ok(meta) => meta,
                Err(e) if is_absent(&e) => continue,
                Err(e) => return Err(format!("/{}: {e}", relative.display())),
            };
            let kind = meta.file_type();
            if kind.is_char_device() && meta.rdev() == 0 {
                break; // an overlay whiteout: nothing of this name below
            }
            if kind.is_dir() {
                dirs.push(layer);
                if is_opaque(&host) {
                    break;
                }
                continue;
            }
            if !dirs.is_empty() {
                break; // a lower layer's file under an upper layer's directory is hidden
            }
            return Ok(if kind.is_symlink() {
                let target = std::fs::read_link(&host)
                    .map_err(|e| format!("/{}: {e}", relative.display()))?;
                Entry::Symlink(target)
            } else if kind.is_file() {
                Entry::File(layer)
            } else {
                Entry::Other(kind_name(&kind))
            });
        }
        Ok(if dirs.is_empty() {
            Entry::Missing
        } else {
            Entry::Dir(dirs)
        })
    }
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = String> + '_ {
    path.split('/')
        .filter(|part| !part.is_empty())
        .map(str::to_string)
}

fn is_absent(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::NOENT.raw_os_error()
            || code == rustix::io::Errno::NOTDIR.raw_os_error()
    )
}

fn is_opaque(dir: &Path) -> bool {
    OPAQUE_XATTRS.iter().any(|name| {
        let mut value = [0u8; 1];
        matches!(rustix::fs::lgetxattr(dir, *name, &mut value[..]), Ok(1) if value[0] == b'y')
    })
}

fn kind_name(kind: &std::fs::FileType) -> &'static str {
    if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

fn too_big(path: &str, len: u64, max: u64) -> String {
    format!("{path} is {len} bytes, more than the node's [engine] max-component-size ({max} bytes)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const MAX: u64 = 1 << 20;

    fn read(layers: &[PathBuf], path: &str) -> Result<Option<Vec<u8>>, String> {
        RootFs::new(layers).read(path, MAX)
    }

    #[test]
    fn symlinks_resolve_inside_the_root_never_on_the_host() {
        let host = tempfile::tempdir().unwrap();
        let secret = host.path().join("secret");
        std::fs::write(&secret, b"host secret").unwrap();
        let root = host.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("app/bin")).unwrap();
        std::fs::write(root.join("app/bin/real.wasm"), b"inside").unwrap();
        symlink(&secret, root.join("absolute.wasm")).unwrap();
        symlink(
            "../../../../../..".to_string() + secret.to_str().unwrap(),
            root.join("relative.wasm"),
        )
        .unwrap();
        symlink(host.path(), root.join("hostdir")).unwrap();
        symlink("/app/bin/real.wasm", root.join("inside.wasm")).unwrap();
        symlink("bin/../bin/real.wasm", root.join("app/rel.wasm")).unwrap();
        symlink("app", root.join("applink")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let layers = [root.clone()];
        assert_eq!(read(&layers, "/absolute.wasm"), Ok(None));
        assert_eq!(read(&layers, "/relative.wasm"), Ok(None));
        assert_eq!(read(&layers, "/hostdir/secret"), Ok(None));
        assert_eq!(read(&layers, "/../../../../etc/passwd"), Ok(None));
        assert_eq!(read(&layers, "/inside.wasm"), Ok(Some(b"inside".to_vec())));
        assert_eq!(read(&layers, "app/rel.wasm"), Ok(Some(b"inside".to_vec())));
        assert_eq!(
            read(&layers, "/applink/bin/real.wasm"),
            Ok(Some(b"inside".to_vec()))
        );
        let err = read(&layers, "/loop").unwrap_err();
        assert!(err.contains("too many levels of symbolic links"), "{err}");
        // The secret's path copied into the root is simply the root's (absent) file.
        std::fs::create_dir_all(root.join(secret.parent().unwrap().strip_prefix("/").unwrap()))
            .unwrap();
        let shadow = root.join(secret.strip_prefix("/").unwrap());
        std::fs::write(&shadow, b"root copy").unwrap();
        assert_eq!(
            read(&layers, "/absolute.wasm"),
            Ok(Some(b"root copy".to_vec()))
        );
    }

    #[test]
    fn only_regular_files_within_the_size_cap_are_read() {
        let root = tempfile::tempdir().unwrap();
        let layers = [root.path().to_path_buf()];
        nix::unistd::mkfifo(
            &root.path().join("fifo.wasm"),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .unwrap();
        std::fs::create_dir(root.path().join("dir.wasm")).unwrap();
        std::fs::write(root.path().join("big.wasm"), vec![0u8; 4096]).unwrap();
        let err = read(&layers, "/fifo.wasm").unwrap_err();
        assert_eq!(err, "/fifo.wasm is a FIFO, not a regular file");
        let err = read(&layers, "/dir.wasm").unwrap_err();
        assert!(err.contains("is a directory"), "{err}");
        let err = RootFs::new(&layers).read("/big.wasm", 1000).unwrap_err();
        assert!(
            err.contains(
                "4096 bytes, more than the node's [engine] max-component-size (1000 bytes)"
            ),
            "{err}"
        );
        assert_eq!(read(&layers, "/big.wasm/x"), Ok(None));
    }

    #[test]
    fn overlay_whiteouts_and_opaque_directories_hide_lower_layers() {
        let dir = tempfile::tempdir().unwrap();
        let (upper, lower) = (dir.path().join("upper"), dir.path().join("lower"));
        for layer in [&upper, &lower] {
            std::fs::create_dir_all(layer.join("opaque")).unwrap();
            std::fs::create_dir_all(layer.join("merged")).unwrap();
        }
        std::fs::write(lower.join("gone.wasm"), b"lower").unwrap();
        std::fs::write(lower.join("opaque/app.wasm"), b"lower").unwrap();
        std::fs::write(lower.join("merged/app.wasm"), b"lower").unwrap();
        std::fs::write(lower.join("shadowed.wasm"), b"lower").unwrap();
        std::fs::write(upper.join("shadowed.wasm"), b"upper").unwrap();
        nix::sys::stat::mknod(
            &upper.join("gone.wasm"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        rustix::fs::setxattr(
            upper.join("opaque"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let layers = [upper, lower];
        assert_eq!(read(&layers, "/gone.wasm"), Ok(None));
        assert_eq!(read(&layers, "/opaque/app.wasm"), Ok(None));
        assert_eq!(
            read(&layers, "/merged/app.wasm"),
            Ok(Some(b"lower".to_vec()))
        );
        assert_eq!(read(&layers, "/shadowed.wasm"), Ok(Some(b"upper".to_vec())));
    }
}
