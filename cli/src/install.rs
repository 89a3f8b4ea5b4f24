//! `wasmhttp install`: put the shim where containerd finds it and register the runtime in containerd's config.
//!
//! The config edit keeps everything else in the file as it was, is idempotent (a second run changes nothing),
//! keeps a timestamped backup of the previous file, and refuses a file it cannot parse.

use anyhow::{Context, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use toml_edit::{DocumentMut, Item, Table, value};

/// The runtime type containerd resolves to `containerd-shim-wasmhttp-v1`.
pub const RUNTIME_TYPE: &str = "io.containerd.wasmhttp.v1";
const SHIM_BINARY: &str = "containerd-shim-wasmhttp-v1";

#[derive(Args)]
pub struct InstallArgs {
    /// containerd's config file to add the runtime to (created if missing).
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    containerd_config: PathBuf,
    /// Directory on containerd's PATH to copy the shim into.
    #[arg(long, default_value = "/usr/local/bin")]
    bin_dir: PathBuf,
    /// The shim binary to install (default: the one next to this `wasmhttp`).
    #[arg(long)]
    shim: Option<PathBuf>,
    /// Name of the CRI runtime (the Kubernetes RuntimeClass handler).
    #[arg(long, default_value = "wasmhttp")]
    runtime_class_name: String,
    /// Restart containerd (`systemctl restart containerd`) when the configuration changed.
    #[arg(long)]
    restart: bool,
}

pub fn run(args: InstallArgs) -> anyhow::Result<()> {
    let shim = match args.shim {
        Some(shim) => shim,
        None => std::env::current_exe()?.with_file_name(SHIM_BINARY),
    };
    install_binary(&shim, &args.bin_dir)?;
    let changed = configure(&args.containerd_config, &args.runtime_class_name)?;
    match &changed {
        Some(backup) => eprintln!(
            "wasmhttp: added runtime {} to {} (previous version kept as {})",
            args.runtime_class_name,
            args.containerd_config.display(),
            backup.display()
        ),
        None => eprintln!(
            "wasmhttp: {} already has runtime {}",
            args.containerd_config.display(),
            args.runtime_class_name
        ),
    }
    match (changed, args.restart) {
        (Some(_), true) => restart_containerd(),
        (Some(_), false) => {
            eprintln!("wasmhttp: restart containerd to load the new configuration");
            Ok(())
        }
        (None, _) => Ok(()),
    }
}

fn restart_containerd() -> anyhow::Result<()> {
    let status = std::process::Command::new("systemctl")
        .args(["restart", "containerd"])
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run systemctl to restart containerd: {e}"))?;
    if !status.success() {
        bail!("systemctl restart containerd failed ({status})");
    }
    eprintln!("wasmhttp: containerd restarted");
    Ok(())
}

fn install_binary(shim: &Path, bin_dir: &Path) -> anyhow::Result<()> {
    if !shim.is_file() {
        bail!(
            "shim binary {} not found (pass --shim PATH)",
            shim.display()
        );
    }
    std::fs::create_dir_all(bin_dir)
        .with_context(|| format!("cannot create {}", bin_dir.display()))?;
    let target = bin_dir.join(SHIM_BINARY);
    // Copy then rename, so a running containerd never starts a half-copied shim.
    let tmp = bin_dir.join(format!(".{SHIM_BINARY}.tmp"));
    std::fs::copy(shim, &tmp)
        .with_context(|| format!("cannot copy {} to {}", shim.display(), tmp.display()))?;
    std::fs::rename(&tmp, &target)
        .with_context(|| format!("cannot install {}", target.display()))?;
    eprintln!("wasmhttp: installed {}", target.display());
    Ok(())
}

/// Adds the runtime to the config; returns the backup path when the file changed, `None` when it already had it.
pub fn configure(config: &Path, runtime_name: &str) -> anyhow::Result<Option<PathBuf>> {
    let original = match std::fs::read_to_string(config) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", config.display())),
    };
    let mut doc: DocumentMut = match &original {
        Some(text) => text.parse().with_context(|| {
            format!(
                "refusing to edit {}: it is not valid TOML",
                config.display()
            )
        })?,
        None => "version = 2\n".parse()?,
    };
    let version = doc.get("version").and_then(Item::as_integer).unwrap_or(1);
    let path: &[&str] = match version {
        1 => &["plugins", "cri", "containerd", "runtimes"],
        2 => &[
            "plugins",
            "io.containerd.grpc.v1.cri",
            "containerd",
            "runtimes",
        ],
        // containerd 2.0–2.2 write version 3, 2.3 writes 4; both keep the CRI runtimes here.
        3 | 4 => &[
            "plugins",
            "io.containerd.cri.v1.runtime",
            "containerd",
            "runtimes",
        ],
        other => bail!(
            "refusing to edit {}: unknown containerd config version {other} (known: 1 and 2 from \
             containerd 1.x, 3 and 4 from 2.x)",
            config.display()
        ),
    };
    let mut table = doc.as_table_mut();
    for key in path {
        let entry = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        table = entry.as_table_mut().with_context(|| {
            format!(
                "refusing to edit {}: `{key}` is not a table",
                config.display()
            )
        })?;
    }
    let runtime = table
        .entry(runtime_name)
        .or_insert_with(|| Item::Table(Table::new()));
    let runtime = runtime.as_table_mut().with_context(|| {
        format!(
            "refusing to edit {}: runtime `{runtime_name}` is not a table",
            config.display()
        )
    })?;
    if runtime.get("runtime_type").and_then(Item::as_str) == Some(RUNTIME_TYPE) {
        return Ok(None);
    }
    runtime.insert("runtime_type", value(RUNTIME_TYPE));
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let backup = config.with_extension(format!("toml.bak.{stamp}"));
    if let Some(text) = &original {
        std::fs::write(&backup, text)
            .with_context(|| format!("cannot write backup {}", backup.display()))?;
    }
    let dir = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, doc.to_string().as_bytes())?;
    tmp.persist(config)
        .with_context(|| format!("cannot write {}", config.display()))?;
    Ok(Some(backup))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_config_version_gets_its_section_once() {
        let dir = tempfile::tempdir().unwrap();
        for (version, section) in [
            (
                2,
                r#"plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmhttp"#,
            ),
            (
                3,
                r#"plugins."io.containerd.cri.v1.runtime".containerd.runtimes.wasmhttp"#,
            ),
            (
                4,
                r#"plugins."io.containerd.cri.v1.runtime".containerd.runtimes.wasmhttp"#,
            ),
        ] {
            let config = dir.path().join(format!("v{version}.toml"));
            let original =
                format!("version = {version}\n# keep me\n[grpc]\n  address = \"/run/x.sock\"\n");
            std::fs::write(&config, &original).unwrap();
            let backup = configure(&config, "wasmhttp").unwrap().expect("changed");
            assert_eq!(std::fs::read_to_string(&backup).unwrap(), original);
            let text = std::fs::read_to_string(&config).unwrap();
            assert!(text.contains(&format!("[{section}]")), "{text}");
            assert!(
                text.contains("runtime_type = \"io.containerd.wasmhttp.v1\"")
                    && text.contains("# keep me"),
                "{text}"
            );
            assert_eq!(
                configure(&config, "wasmhttp").unwrap(),
                None,
                "second run changes nothing"
            );
            assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
        }
    }

    #[test]
    fn an_unparseable_config_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "version = 2\n[plugins\n").unwrap();
        let err = configure(&config, "wasmhttp").unwrap_err().to_string();
        assert!(
            err.contains("refusing to edit") && err.contains("not valid TOML"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            "version = 2\n[plugins\n"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no backup or temp file left"
        );
    }

    #[test]
    fn a_missing_config_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("etc/config.toml");
        configure(&config, "wasmhttp").unwrap();
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(
            text.starts_with("version = 2") && text.contains("io.containerd.wasmhttp.v1"),
            "{text}"
        );
    }
}
