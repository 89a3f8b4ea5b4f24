//! Reading a wasm image's code from containerd's content store, for images whose wasm is a layer of its own
//! (the CNCF wasm OCI artifact, `application/wasm` layers) rather than a file in an unpacked rootfs.
//!
//! The path is the one containerd itself follows: container → image → manifest (an index is resolved to its
//! wasm entry) → the wasm layer, read through containerd's gRPC Content API and checked against its digest.

use crate::error::{Result, ShimError};
use containerd_client::services::v1::{
    GetContainerRequest, GetImageRequest, ReadContentRequest, containers_client::ContainersClient,
    content_client::ContentClient, images_client::ImagesClient,
};
use containerd_client::tonic::{Request, transport::Channel};
use containerd_client::with_namespace;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Layer media types that hold a wasm binary as they are.
pub const WASM_LAYER_TYPES: [&str; 2] = [
    "application/wasm",
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
];

/// Where to reach containerd's gRPC API, and in which namespace.
#[derive(Debug, Clone)]
pub struct ContentStore {
    /// containerd's socket (the shim's `-address`).
    pub address: String,
    /// The containerd namespace of this shim's containers.
    pub namespace: String,
}

/// A wasm layer read from the content store.
pub struct WasmLayer {
    /// The image it came from.
    pub image: String,
    /// The layer's digest (`sha256:…`), which is also the wasm's.
    pub digest: String,
    /// The wasm binary.
    pub bytes: Vec<u8>,
}

impl ContentStore {
    /// The image containerd recorded for container `id` (empty when it was created from a bare rootfs).
    pub async fn image_of_container(&self, id: &str) -> Result<String> {
        let mut containers = ContainersClient::new(self.connect().await?);
        let request = with_namespace!(GetContainerRequest { id: id.to_string() }, self.namespace);
        let reply = containers
            .get(request)
            .await
            .map_err(|e| unavailable(&format!("container {id}"), e))?;
        Ok(reply
            .into_inner()
            .container
            .map(|c| c.image)
            .unwrap_or_default())
    }

    /// The wasm layer of image `name`; `Ok(None)` when the image has no wasm layer (its code is in the rootfs).
    pub async fn wasm_layer(&self, name: &str) -> Result<Option<WasmLayer>> {
        let channel = self.connect().await?;
        let mut images = ImagesClient::new(channel.clone());
        let request = with_namespace!(
            GetImageRequest {
                name: name.to_string()
            },
            self.namespace
        );
        let image = images
            .get(request)
            .await
            .map_err(|e| {
                if e.code() == containerd_client::tonic::Code::NotFound {
                    ShimError::InvalidArgument(format!(
                        "image {name} is not in containerd namespace {} (pull it, or import it with \
                         `ctr image import --no-unpack`)",
                        self.namespace
                    ))
                } else {
                    unavailable(&format!("image {name}"), e)
                }
            })?
            .into_inner()
            .image
            .and_then(|i| i.target)
            .ok_or_else(|| ShimError::InvalidArgument(format!("image {name} has no target")))?;
        let mut content = ContentClient::new(channel);
        let mut manifest = self
            .read_json(&mut content, name, &image.digest, image.size)
            .await?;
        if let Some(entries) = manifest["manifests"].as_array() {
            let (digest, size) = wasm_entry(entries).ok_or_else(|| {
                ShimError::InvalidArgument(format!("image {name} is an empty index"))
            })?;
            manifest = self.read_json(&mut content, name, &digest, size).await?;
        }
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        let Some(layer) = layers
            .iter()
            .find(|l| WASM_LAYER_TYPES.contains(&l["mediaType"].as_str().unwrap_or_default()))
        else {
            return Ok(None);
        };
        let digest = layer["digest"].as_str().unwrap_or_default().to_string();
        let size = layer["size"].as_i64().unwrap_or(0);
        let bytes = self.read(&mut content, name, &digest, size).await?;
        Ok(Some(WasmLayer {
            image: name.to_string(),
            digest,
            bytes,
        }))
    }

    async fn connect(&self) -> Result<Channel> {
        containerd_client::connect(&self.address)
            .await
            .map_err(|e| {
                ShimError::Internal(format!(
                    "cannot reach containerd at {} to read the image: {e}",
                    self.address
                ))
            })
    }

    async fn read_json(
        &self,
        content: &mut ContentClient<Channel>,
        image: &str,
        digest: &str,
        size: i64,
    ) -> Result<Value> {
        let bytes = self.read(content, image, digest, size).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ShimError::InvalidArgument(format!("image {image}: {digest} is not JSON: {e}"))
        })
    }

    /// A whole blob, checked against its digest: the content store is trusted for bytes, not for integrity.
    async fn read(
        &self,
        content: &mut ContentClient<Channel>,
        image: &str,
        digest: &str,
        size: i64,
    ) -> Result<Vec<u8>> {
        let blob = || format!("image {image}: blob {digest}");
        let request = with_namespace!(
            ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            },
            self.namespace
        );
        let mut stream = content
            .read(request)
            .await
            .map_err(|e| missing_blob(&blob(), e))?
            .into_inner();
        let mut bytes = Vec::with_capacity(size.max(0) as usize);
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|e| missing_blob(&blob(), e))?
        {
            bytes.extend_from_slice(&chunk.data);
        }
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest {
            return Err(ShimError::InvalidArgument(format!(
                "{}: digest mismatch, the content store holds {actual}",
                blob()
            )));
        }
        Ok(bytes)
    }
}

/// The index entry to run: one for wasm, else for this host's architecture, else the first.
fn wasm_entry(entries: &[Value]) -> Option<(String, i64)> {
    fn arch<'a>(entry: &&'a Value) -> &'a str {
        entry["platform"]["architecture"]
            .as_str()
            .unwrap_or_default()
    }
    let host = if cfg!(target_arch = "x86_64") {
        "amd64"
    } else {
        "arm64"
    };
    let entry = entries
        .iter()
        .find(|e| arch(e) == "wasm")
        .or_else(|| entries.iter().find(|e| arch(e) == host))
        .or(entries.first())?;
    Some((
        entry["digest"].as_str()?.to_string(),
        entry["size"].as_i64().unwrap_or(0),
    ))
}

fn unavailable(what: &str, status: containerd_client::tonic::Status) -> ShimError {
    ShimError::Internal(format!(
        "reading {what} from containerd failed: {}",
        status.message()
    ))
}

fn missing_blob(what: &str, status: containerd_client::tonic::Status) -> ShimError {
    if status.code() == containerd_client::tonic::Code::NotFound {
        ShimError::InvalidArgument(format!(
            "{what} is not in containerd's content store (fetch it: `ctr content fetch`)"
        ))
    } else {
        unavailable(what, status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_resolves_to_its_wasm_entry_first() {
        let entries: Vec<Value> = serde_json::from_str(
            r#"[{"digest":"sha256:a","size":1,"platform":{"architecture":"amd64","os":"linux"}},
                {"digest":"sha256:w","size":2,"platform":{"architecture":"wasm","os":"wasip2"}}]"#,
        )
        .unwrap();
        assert_eq!(wasm_entry(&entries), Some(("sha256:w".into(), 2)));
        assert_eq!(wasm_entry(&entries[..1]), Some(("sha256:a".into(), 1)));
        assert_eq!(wasm_entry(&[]), None);
    }
}
