//! What a wasm OCI image is: the one place the CLI (`wasmhttp image`) and the shim (content store reads)
//! learn media types, which index entry to run, where the wasm is and what the image config's entrypoint
//! says. Both build on the typed `oci_spec::image` structs.
//!
//! An image holds wasm in one of two ways:
//! - **a wasm layer**: a layer whose media type is one of [`WASM_LAYER_TYPES`] is the binary itself (the CNCF
//!   TAG-Runtime artifact, with config [`WASM_CONFIG_TYPE`], or an OCI image that carries such a layer);
//! - **a file in a tar layer**: a standard image whose config's entrypoint names a `.wasm` file.

use oci_spec::image::{Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

/// OCI image manifest.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker schema 2 manifest (what many registries still hold).
pub const DOCKER_MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// OCI image index.
pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list.
pub const DOCKER_LIST_TYPE: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Every manifest or index media type a registry may answer with.
pub const MANIFEST_TYPES: [&str; 4] = [
    MANIFEST_TYPE,
    DOCKER_MANIFEST_TYPE,
    INDEX_TYPE,
    DOCKER_LIST_TYPE,
];
/// OCI image config.
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Config of the CNCF TAG-Runtime wasm artifact.
pub const WASM_CONFIG_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// An uncompressed OCI tar layer.
pub const TAR_LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// The layer type `wasmhttp image build --format artifact` writes.
pub const WASM_LAYER_TYPE: &str = "application/wasm";
/// Layer media types whose blob is a wasm binary as it is (the CNCF artifact's, and two that other wasm
/// tooling publishes).
pub const WASM_LAYER_TYPES: [&str; 3] = [
    WASM_LAYER_TYPE,
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
];

/// Whether a layer of this media type is a wasm binary as it is.
pub fn is_wasm_layer(media_type: &MediaType) -> bool {
    WASM_LAYER_TYPES.contains(&media_type.to_string().as_str())
}

/// This host's architecture as OCI platforms spell it (`amd64`, `arm64`, `ppc64le`, …).
pub fn host_architecture() -> Arch {
    Arch::default()
}

/// A manifest or an index, as a registry or a content store hands it over.
#[derive(Debug)]
pub enum Document {
    /// An image index (or Docker manifest list): pick an entry with [`choose_entry`].
    Index(Box<ImageIndex>),
    /// An image manifest.
    Manifest(Box<ImageManifest>),
}

impl Document {
    /// Parses manifest or index JSON; an index is told by its media type or by its `manifests` list.
    pub fn parse(bytes: &[u8]) -> Result<Document, String> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let media_type = value["mediaType"].as_str().unwrap_or_default();
        let is_index = media_type == INDEX_TYPE
            || media_type == DOCKER_LIST_TYPE
            || value.get("manifests").is_some();
        if is_index {
            serde_json::from_value(value)
                .map(|index| Document::Index(Box::new(index)))
                .map_err(|e| format!("not an image index: {e}"))
        } else {
            serde_json::from_value(value)
                .map(|manifest| Document::Manifest(Box::new(manifest)))
                .map_err(|e| format!("not an image manifest: {e}"))
        }
    }
}

/// The index entry to run: the one for wasm, else the one for this host's architecture, else the first
/// (a wasm binary runs on any architecture, so an entry for another one still holds usable code).
pub fn choose_entry(index: &ImageIndex) -> Option<&Descriptor> {
    fn is_for(entry: &Descriptor, wanted: &Arch) -> bool {
        entry
            .platform()
            .as_ref()
            .is_some_and(|p| p.architecture() == wanted)
    }
    let entries = index.manifests();
    let host = host_architecture();
    entries
        .iter()
        .find(|e| is_for(e, &Arch::Wasm))
        .or_else(|| entries.iter().find(|e| is_for(e, &host)))
        .or(entries.first())
}

/// The manifest's wasm layer, when the image carries the binary as a layer of its own.
pub fn wasm_layer(manifest: &ImageManifest) -> Option<&Descriptor> {
    manifest
        .layers()
        .iter()
        .find(|layer| is_wasm_layer(layer.media_type()))
}

/// The path the image config names to run: the first entrypoint word, else the first command word.
pub fn entrypoint(config: &ImageConfiguration) -> Option<&str> {
    fn first(words: &Option<Vec<String>>) -> Option<&str> {
        words.as_ref()?.first().map(String::as_str)
    }
    let config = config.config().as_ref()?;
    first(config.entrypoint()).or_else(|| first(config.cmd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST_A: &str =
        "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const DIGEST_W: &str =
        "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn index(entries: &[(&str, &str)]) -> ImageIndex {
        let manifests: Vec<_> = entries
            .iter()
            .map(|(digest, arch)| {
                serde_json::json!({"mediaType": MANIFEST_TYPE, "digest": digest, "size": 1,
                                   "platform": {"architecture": arch, "os": "linux"}})
            })
            .collect();
        let json = serde_json::json!({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": manifests});
        match Document::parse(json.to_string().as_bytes()).unwrap() {
            Document::Index(index) => *index,
            Document::Manifest(_) => panic!("an index was read as a manifest"),
        }
    }

    #[test]
    fn an_index_resolves_to_wasm_then_this_host_then_the_first() {
        let host = host_architecture().to_string();
        let other = if host == "s390x" { "riscv64" } else { "s390x" };
        let both = index(&[(DIGEST_A, &host), (DIGEST_W, "wasm")]);
        assert_eq!(choose_entry(&both).unwrap().digest().to_string(), DIGEST_W);
        let native = index(&[(DIGEST_W, other), (DIGEST_A, &host)]);
        assert_eq!(
            choose_entry(&native).unwrap().digest().to_string(),
            DIGEST_A
        );
        let foreign = index(&[(DIGEST_W, other)]);
        assert_eq!(
            choose_entry(&foreign).unwrap().digest().to_string(),
            DIGEST_W
        );
        assert!(choose_entry(&index(&[])).is_none());
    }

    #[test]
    fn the_host_architecture_uses_oci_names() {
        let expected = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        if !std::env::consts::ARCH.starts_with("powerpc") {
            assert_eq!(host_architecture().to_string(), expected);
        }
    }

    #[test]
    fn wasm_layers_and_entrypoints_are_found() {
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": WASM_CONFIG_TYPE, "digest": DIGEST_A, "size": 2},
            "layers": [{"mediaType": "application/vnd.wasm.content.layer.v1+wasm", "digest": DIGEST_W, "size": 3}]
        });
        let Document::Manifest(manifest) =
            Document::parse(manifest.to_string().as_bytes()).unwrap()
        else {
            panic!("a manifest was read as an index")
        };
        assert_eq!(
            wasm_layer(&manifest).unwrap().digest().to_string(),
            DIGEST_W
        );

        let config = |inner: serde_json::Value| -> ImageConfiguration {
            serde_json::from_value(serde_json::json!({"architecture": "amd64", "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []}, "config": inner}))
            .unwrap()
        };
        let both = config(serde_json::json!({"Entrypoint": ["/app.wasm"], "Cmd": ["x"]}));
        assert_eq!(entrypoint(&both), Some("/app.wasm"));
        let cmd = config(serde_json::json!({"Cmd": ["/srv.wasm"]}));
        assert_eq!(entrypoint(&cmd), Some("/srv.wasm"));
        assert_eq!(entrypoint(&config(serde_json::json!({}))), None);
        assert!(Document::parse(b"{oops").unwrap_err().contains("not JSON"));
    }
}
