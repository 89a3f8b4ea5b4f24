//! OCI image layouts as tar files: the one form an image takes on disk here. Writing is atomic; reading
//! checks every blob against its digest and that the image really holds wasm, so neither `push` nor
//! `pull` can pass on a broken or foreign image.

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

pub use wasmhttp_oci::{CONFIG_TYPE, INDEX_TYPE, MANIFEST_TYPE, WASM_CONFIG_TYPE};
use wasmhttp_oci::{Document, is_wasm_layer};

/// A blob and its `sha256:` digest.
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The content.
    pub bytes: Vec<u8>,
}

impl Blob {
    /// Digests `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Blob {
            digest: digest_of(&bytes),
            bytes,
        }
    }

    /// An OCI descriptor of this blob.
    pub fn descriptor(&self, media_type: &str) -> Value {
        json!({ "mediaType": media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A reference from a manifest to a blob.
#[derive(Clone, Debug)]
pub struct Descriptor {
    /// What the blob is.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Length in bytes.
    pub size: u64,
}

/// One image: its manifest (exact bytes, so its digest survives a round trip) and the blobs it names.
pub struct Image {
    /// The manifest as stored.
    pub manifest: Blob,
    /// The manifest's media type.
    pub manifest_type: String,
    /// The config descriptor.
    pub config: Descriptor,
    /// Layer descriptors, in manifest order.
    pub layers: Vec<Descriptor>,
    /// Blob contents by digest: the config and every layer.
    pub blobs: HashMap<String, Vec<u8>>,
}

/// Parses an image manifest's media type, config and layers.
pub fn parse_manifest(bytes: &[u8]) -> anyhow::Result<(String, Descriptor, Vec<Descriptor>)> {
    let manifest =
        match Document::parse(bytes).map_err(|e| anyhow::anyhow!("the manifest is {e}"))? {
            Document::Manifest(manifest) => manifest,
            Document::Index(index) => bail!(
                "expected an image manifest, found an index ({})",
                index
                    .media_type()
                    .as_ref()
                    .map_or(wasmhttp_oci::INDEX_TYPE.to_string(), ToString::to_string)
            ),
        };
    let media_type = manifest
        .media_type()
        .as_ref()
        .map_or(MANIFEST_TYPE.to_string(), ToString::to_string);
    let config = descriptor(manifest.config()).context("the manifest's config")?;
    let layers = manifest
        .layers()
        .iter()
        .map(descriptor)
        .collect::<anyhow::Result<Vec<_>>>()
        .context("a layer of the manifest")?;
    Ok((media_type, config, layers))
}

fn descriptor(d: &oci_spec::image::Descriptor) -> anyhow::Result<Descriptor> {
    let digest = d.digest().to_string();
    if !digest.starts_with("sha256:") || digest.len() != 71 {
        bail!("unsupported digest {digest:?} (only sha256)");
    }
    Ok(Descriptor {
        media_type: d.media_type().to_string(),
        digest,
        size: d.size(),
    })
}

impl Image {
    /// Assembles an image from its manifest bytes and blobs, and checks it.
    pub fn new(manifest: Vec<u8>, blobs: HashMap<String, Vec<u8>>) -> anyhow::Result<Image> {
        let (manifest_type, config, layers) = parse_manifest(&manifest)?;
        let image = Image {
            manifest: Blob::new(manifest),
            manifest_type,
            config,
            layers,
            blobs,
        };
        image.check()?;
        Ok(image)
    }

    /// The config and the layers, in push order.
    pub fn descriptors(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.config).chain(&self.layers)
    }

    /// Every blob is present and matches its digest and size, and the image holds wasm.
    fn check(&self) -> anyhow::Result<()> {
        for d in self.descriptors() {
            let bytes = self
                .blobs
                .get(&d.digest)
                .with_context(|| format!("blob {} ({}) is missing", d.digest, d.media_type))?;
            let actual = digest_of(bytes);
            if actual != d.digest || bytes.len() as u64 != d.size {
                bail!(
                    "digest mismatch: blob {} ({}) holds {} bytes with digest {actual}",
                    d.digest,
                    d.media_type,
                    bytes.len()
                );
            }
        }
        self.check_wasm()
    }

    fn check_wasm(&self) -> anyhow::Result<()> {
        let is_wasm_layer = |d: &&Descriptor| is_wasm_layer(&d.media_type.as_str().into());
        if self.config.media_type == WASM_CONFIG_TYPE
            || self.layers.iter().any(|d| is_wasm_layer(&d))
        {
            if let Some(other) = self.layers.iter().find(|d| !is_wasm_layer(d)) {
                bail!(
                    "not a wasm image: layer {} is {}, not wasm",
                    other.digest,
                    other.media_type
                );
            }
            for layer in &self.layers {
                if !self.blobs[&layer.digest].starts_with(b"\0asm") {
                    bail!(
                        "not a wasm image: layer {} ({}) is not a WebAssembly binary",
                        layer.digest,
                        layer.media_type
                    );
                }
            }
            return Ok(());
        }
        let config: oci_spec::image::ImageConfiguration =
            serde_json::from_slice(&self.blobs[&self.config.digest])
                .context("the image config is not an OCI image config")?;
        let entry = wasmhttp_oci::entrypoint(&config)
            .context("not a wasm image: the config names no entrypoint")?;
        for layer in self.layers.iter().rev() {
            if let Some(head) = file_head(&self.blobs[&layer.digest], &layer.media_type, entry)? {
                if head.starts_with(b"\0asm") {
                    return Ok(());
                }
                bail!(
                    "not a wasm image: the entrypoint {entry} in layer {} is not a WebAssembly binary",
                    layer.digest
                );
            }
        }
        bail!(
            "not a wasm image: no layer holds its entrypoint {entry} (layers: {})",
            self.layers
                .iter()
                .map(|l| format!("{} {}", l.digest, l.media_type))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// The first bytes of `path` inside a tar layer, if the layer holds it.
fn file_head(layer: &[u8], media_type: &str, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let reader: Box<dyn Read + '_> = if media_type.ends_with("gzip") {
        Box::new(flate2::read::GzDecoder::new(layer))
    } else if media_type.ends_with(".tar") || media_type.ends_with(".tar.layer") {
        Box::new(layer)
    } else {
        return Ok(None);
    };
    let wanted = path.trim_start_matches('/');
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().context("reading a tar layer")? {
        let entry = entry.context("reading a tar layer")?;
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if name == wanted {
            let mut head = Vec::new();
            entry.take(4).read_to_end(&mut head)?;
            return Ok(Some(head));
        }
    }
    Ok(None)
}

/// Writes `image` as an OCI layout tar named `reference` (the name `ctr image import` gives it). The tar is
/// written beside `output` and renamed, so a failure never leaves a half-written file.
pub fn write(output: &Path, reference: &str, image: &Image) -> anyhow::Result<()> {
    let short_tag = reference
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map_or("latest", |(_, t)| t);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [{
            "mediaType": image.manifest_type,
            "digest": image.manifest.digest,
            "size": image.manifest.bytes.len(),
            "annotations": { "io.containerd.image.name": reference, "org.opencontainers.image.ref.name": short_tag },
        }],
    }))?;
    let blob_path = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let mut files: Vec<(String, &[u8])> = vec![
        ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json".into(), &index),
        (blob_path(&image.manifest.digest), &image.manifest.bytes),
    ];
    for d in image.descriptors() {
        let path = blob_path(&d.digest);
        if !files.iter().any(|(p, _)| *p == path) {
            files.push((path, &image.blobs[&d.digest]));
        }
    }
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write to {}", dir.display()))?;
    // Written as it is made: the image is in memory once already.
    let mut writer = std::io::BufWriter::new(tmp.as_file_mut());
    tar_into(&mut writer, &files)?;
    writer.flush()?;
    drop(writer);
    tmp.persist(output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(())
}

/// Reads and checks an OCI layout tar holding one image.
pub fn read(path: &Path) -> anyhow::Result<Image> {
    let what = || format!("{} is not an OCI image layout tar", path.display());
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file_len = file.metadata().map_or(0, |m| m.len());
    let mut files = HashMap::new();
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries().with_context(what)? {
        let mut entry = entry.with_context(what)?;
        // A layout's files are regular ones. Not reading others also keeps a sparse entry from expanding a
        // small tar into any size of zeros.
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        // Sized up front (no doubling while it grows), but never past the file: the header may lie.
        let mut bytes = Vec::with_capacity(entry.size().min(file_len) as usize);
        entry.read_to_end(&mut bytes).with_context(what)?;
        files.insert(name, bytes);
    }
    let index: oci_spec::image::ImageIndex =
        serde_json::from_slice(files.get("index.json").with_context(what)?)
            .with_context(|| format!("{}: index.json is not an OCI image index", path.display()))?;
    let [manifest] = index.manifests().as_slice() else {
        bail!(
            "{}: index.json must name exactly one manifest, it names {}",
            path.display(),
            index.manifests().len()
        );
    };
    // Each blob moves out of the tar's files, so the image is held once.
    let mut blob = |digest: &str| {
        files
            .remove(&format!(
                "blobs/sha256/{}",
                digest.trim_start_matches("sha256:")
            ))
            .with_context(|| format!("{}: blob {digest} is missing", path.display()))
    };
    let manifest_digest = manifest.digest().to_string();
    let manifest_digest = manifest_digest.as_str();
    let manifest_bytes = blob(manifest_digest)?;
    if digest_of(&manifest_bytes) != manifest_digest {
        bail!(
            "{}: digest mismatch: the manifest does not match {manifest_digest}",
            path.display()
        );
    }
    let (_, config, layers) =
        parse_manifest(&manifest_bytes).with_context(|| path.display().to_string())?;
    let mut blobs = HashMap::new();
    for d in std::iter::once(&config).chain(&layers) {
        // A digest named twice was taken the first time.
        if !blobs.contains_key(&d.digest) {
            blobs.insert(d.digest.clone(), blob(&d.digest)?);
        }
    }
    Image::new(manifest_bytes, blobs).with_context(|| path.display().to_string())
}

/// A deterministic tar of regular files and their parent directories (fixed mtime, owner and mode), so the same
/// input gives the same digest.
pub fn tar_of<P: AsRef<str>>(files: &[(P, &[u8])]) -> anyhow::Result<Vec<u8>> {
    // A 512-byte header per file and per parent directory, contents padded to 512, two zero blocks at the
    // end: enough unless a path is longer than a header holds (100 bytes), when the tar grows as it must.
    let capacity = files.iter().fold(1024, |sum, (path, bytes)| {
        let headers = 512 * (1 + path.as_ref().matches('/').count());
        sum + headers + bytes.len().div_ceil(512) * 512
    });
    let mut tar = Vec::with_capacity(capacity);
    tar_into(&mut tar, files)?;
    Ok(tar)
}

/// [`tar_of`], written to `out` as it is made.
fn tar_into<P: AsRef<str>>(out: impl Write, files: &[(P, &[u8])]) -> anyhow::Result<()> {
    let mut builder = tar::Builder::new(out);
    let mut dirs = std::collections::BTreeSet::new();
    let mut append = |path: &str, kind, mode, bytes: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(kind);
        builder.append_data(&mut header, path, bytes)
    };
    for (path, bytes) in files {
        let path = path.as_ref();
        // Parent directories get entries of their own, so every unpacker gives them the same mode.
        if let Some((parents, _)) = path.rsplit_once('/') {
            let mut parent = String::new();
            for component in parents.split('/') {
                parent.push_str(component);
                parent.push('/');
                if dirs.insert(parent.clone()) {
                    append(&parent, tar::EntryType::Directory, 0o755, &[])?;
                }
            }
        }
        append(path, tar::EntryType::Regular, 0o644, bytes)?;
    }
    builder.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_parent_directory_gets_one_entry_before_its_files() {
        let tar =
            super::tar_of(&[("app.wasm", &b"a"[..]), ("d/e/x", b"x"), ("d/e/y", b"y")]).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        // Unpackers differ on whether a directory's path keeps its trailing slash: compare without it.
        let entries: Vec<(String, bool)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let dir = e.header().entry_type().is_dir();
                let path = e.path().unwrap().display().to_string();
                (path.trim_end_matches('/').to_string(), dir)
            })
            .collect();
        let expected: Vec<(String, bool)> = [
            ("app.wasm", false),
            ("d", true),
            ("d/e", true),
            ("d/e/x", false),
            ("d/e/y", false),
        ]
        .iter()
        .map(|&(p, d)| (p.to_string(), d))
        .collect();
        assert_eq!(entries, expected);
    }

    /// The error of reading `tar` as a layout, with its causes.
    fn read_error(tar: Vec<u8>) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layout.tar");
        std::fs::write(&path, tar).unwrap();
        format!("{:#}", super::read(&path).err().unwrap())
    }

    #[test]
    fn a_tar_entry_claiming_more_than_the_file_holds_is_refused_not_allocated() {
        // A header saying 1 TiB, followed by two bytes: reading it must fail on the short entry.
        let mut header = tar::Header::new_ustar();
        header.set_path("index.json").unwrap();
        header.set_size(1 << 40);
        header.set_mode(0o644);
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.extend_from_slice(b"{}");
        tar.resize(4096, 0);
        let error = read_error(tar);
        assert!(error.contains("is not an OCI image layout tar"), "{error}");
    }

    #[test]
    fn a_sparse_entry_is_not_expanded() {
        // 512 bytes of header that a tar reader would expand to 64 MiB of zeros named index.json.
        let mut header = tar::Header::new_gnu();
        header.set_path("index.json").unwrap();
        header.set_entry_type(tar::EntryType::GNUSparse);
        header.set_size(0);
        header.set_mode(0o644);
        let gnu = header.as_gnu_mut().unwrap();
        gnu.set_real_size(64 << 20);
        gnu.sparse[0].set_offset(64 << 20);
        gnu.sparse[0].set_length(0);
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.resize(2048, 0);
        // Read as the regular file it is not, it would be an index.json of zeros: "not an OCI image index".
        let error = read_error(tar);
        assert!(error.contains("is not an OCI image layout tar"), "{error}");
    }

    #[test]
    fn an_image_naming_one_layer_twice_is_written_and_read_back() {
        // Builders repeat identical layers (an empty one, say): the blob is stored once and named twice.
        let layer =
            super::Blob::new(super::tar_of(&[("app.wasm", &b"\0asm\x01\0\0\0"[..])]).unwrap());
        let config = super::Blob::new(
            serde_json::to_vec(&serde_json::json!({
                "architecture": "amd64", "os": "linux",
                "config": { "Entrypoint": ["/app.wasm"] },
                "rootfs": { "type": "layers", "diff_ids": [layer.digest, layer.digest] },
            }))
            .unwrap(),
        );
        let layer_descriptor = layer.descriptor(wasmhttp_oci::TAR_LAYER_TYPE);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": super::MANIFEST_TYPE,
            "config": config.descriptor(super::CONFIG_TYPE),
            "layers": [layer_descriptor, layer_descriptor],
        }))
        .unwrap();
        let blobs = std::collections::HashMap::from([
            (config.digest, config.bytes),
            (layer.digest.clone(), layer.bytes),
        ]);
        let image = super::Image::new(manifest, blobs).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("twice.tar");
        super::write(&path, "example.com/twice:1", &image).unwrap();
        let read = super::read(&path).unwrap();
        assert_eq!(read.manifest.digest, image.manifest.digest);
        assert_eq!(read.layers.len(), 2);
        assert_eq!(read.blobs.len(), 2);
        assert_eq!(read.blobs[&layer.digest], image.blobs[&layer.digest]);
    }
}
