//! Reading a wasm image's code from containerd's content store, for images whose wasm is a layer of its own
//! (the CNCF wasm OCI artifact, `application/wasm` layers) rather than a file in an unpacked rootfs.
//!
//! The path is the one containerd itself follows: container → image → manifest (an index is resolved to its
//! wasm entry) → the wasm layer, read through containerd's gRPC Content API and checked against its digest.
//! Only the broker process calls it ([`crate::broker`]): the shim server cannot reach containerd.

use crate::containerd_api::Client;
use crate::error::{Result, ShimError};
use sha2::{Digest, Sha256};
use tonic::{Code, Status};
use wasmhttp_oci::{Document, choose_entry, wasm_layer};

/// Where to reach containerd's gRPC API, and in which namespace.
#[derive(Debug, Clone)]
pub struct ContentStore {
    /// containerd's socket (the shim's `-address`).
    pub address: String,
    /// The containerd namespace of this shim's containers.
    pub namespace: String,
}

/// Which images a container may take its wasm from, and how large a layer may be: the node configuration's
/// `[security] image-annotation` and `[engine] max-component-size`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePolicy {
    /// `wasmhttp.io/image` may name any image of the namespace, not only the container's own.
    pub any: bool,
    /// The largest wasm layer read.
    pub max_bytes: u64,
}

impl ImagePolicy {
    /// The policy of `node`.
    pub fn of(node: &crate::node_config::NodeConfig) -> Self {
        ImagePolicy {
            any: node.security.any_image_annotation,
            max_bytes: node.engine.max_component_size,
        }
    }
}

impl std::fmt::Display for ImagePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let images = if self.any { "any" } else { "own" };
        write!(f, "{images} {}", self.max_bytes)
    }
}

impl std::str::FromStr for ImagePolicy {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let (images, max_bytes) = text
            .split_once(' ')
            .ok_or_else(|| format!("{text:?}: expected \"own|any MAX_BYTES\""))?;
        let any = match images {
            "own" => false,
            "any" => true,
            other => return Err(format!("{other:?}: expected \"own\" or \"any\"")),
        };
        let max_bytes = max_bytes
            .parse()
            .map_err(|e| format!("{max_bytes:?}: {e}"))?;
        Ok(ImagePolicy { any, max_bytes })
    }
}

/// The most an index or manifest may weigh: they are small JSON documents.
const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

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
    async fn image_of_container(&self, id: &str) -> Result<String> {
        let reply = self
            .connect()
            .await?
            .get_container(id)
            .await
            .map_err(|e| unavailable(&format!("container {id}"), e))?;
        Ok(reply.container.map(|c| c.image).unwrap_or_default())
    }

    /// The wasm layer of container `id`'s image, or of the image its `wasmhttp.io/image` annotation names
    /// when `images` lets it name that one; `Ok(None)` when there is no image or it has no wasm layer.
    pub async fn wasm_layer_of_container(
        &self,
        id: &str,
        annotation: Option<&str>,
        images: &ImagePolicy,
    ) -> Result<Option<WasmLayer>> {
        let image = match annotation {
            Some(image) if images.any => image.to_string(),
            Some(image) => {
                let own = self.image_of_container(id).await?;
                if image != own {
                    return Err(ShimError::InvalidArgument(format!(
                        "annotation wasmhttp.io/image={image} names an image other than the container's \
                         own ({}); this node lets it name only the container's own image (its [security] \
                         image-annotation = \"any\" allows any)",
                        if own.is_empty() { "none" } else { &own }
                    )));
                }
                own
            }
            None => self.image_of_container(id).await?,
        };
        if image.is_empty() {
            return Ok(None);
        }
        self.wasm_layer(&image, images.max_bytes).await
    }

    /// The wasm layer of image `name`; `Ok(None)` when the image has no wasm layer (its code is in the rootfs).
    /// A layer larger than `max_bytes` is refused before it is read.
    async fn wasm_layer(&self, name: &str, max_bytes: u64) -> Result<Option<WasmLayer>> {
        let mut client = self.connect().await?;
        let target = client
            .get_image(name)
            .await
            .map_err(|e| {
                if e.code() == Code::NotFound {
                    ShimError::InvalidArgument(format!(
                        "image {name} is not in containerd namespace {} (pull it, or import it with \
                         `ctr image import --no-unpack`)",
                        self.namespace
                    ))
                } else {
                    unavailable(&format!("image {name}"), e)
                }
            })?
            .image
            .and_then(|i| i.target)
            .ok_or_else(|| ShimError::InvalidArgument(format!("image {name} has no target")))?;
        let mut document = self
            .read_document(&mut client, name, &target.digest)
            .await?;
        if let Document::Index(index) = &document {
            let entry = choose_entry(index).ok_or_else(|| {
                ShimError::InvalidArgument(format!("image {name} is an empty index"))
            })?;
            let digest = entry.digest().to_string();
            document = self.read_document(&mut client, name, &digest).await?;
        }
        let Document::Manifest(manifest) = document else {
            return Err(ShimError::InvalidArgument(format!(
                "image {name}: its index points at another index"
            )));
        };
        let Some(layer) = wasm_layer(&manifest) else {
            return Ok(None);
        };
        let digest = layer.digest().to_string();
        if layer.size() > max_bytes {
            return Err(ShimError::InvalidArgument(format!(
                "image {name}: its wasm layer {digest} is {} bytes, more than the node's [engine] \
                 max-component-size ({max_bytes} bytes)",
                layer.size()
            )));
        }
        let bytes = self.read(&mut client, name, &digest, max_bytes).await?;
        Ok(Some(WasmLayer {
            image: name.to_string(),
            digest,
            bytes,
        }))
    }

    async fn connect(&self) -> Result<Client> {
        Client::connect(&self.address, &self.namespace)
            .await
            .map_err(|e| {
                ShimError::Internal(format!(
                    "cannot reach containerd at {} to read the image: {e}",
                    self.address
                ))
            })
    }

    async fn read_document(
        &self,
        client: &mut Client,
        image: &str,
        digest: &str,
    ) -> Result<Document> {
        let bytes = self.read(client, image, digest, MAX_DOCUMENT_BYTES).await?;
        Document::parse(&bytes)
            .map_err(|e| ShimError::InvalidArgument(format!("image {image}: {digest} is {e}")))
    }

    /// A whole blob, checked against its digest: the content store is trusted for bytes, not for integrity.
    /// More than `max_bytes` is refused (a store's blob may not match the size its descriptor claims).
    async fn read(
        &self,
        client: &mut Client,
        image: &str,
        digest: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>> {
        let blob = || format!("image {image}: blob {digest}");
        let mut stream = client
            .read_content(digest)
            .await
            .map_err(|e| missing_blob(&blob(), e))?;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|e| missing_blob(&blob(), e))?
        {
            if (bytes.len() + chunk.data.len()) as u64 > max_bytes {
                return Err(ShimError::InvalidArgument(format!(
                    "{}: more than {max_bytes} bytes",
                    blob()
                )));
            }
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

fn unavailable(what: &str, status: Status) -> ShimError {
    ShimError::Internal(format!(
        "reading {what} from containerd failed: {}",
        status.message()
    ))
}

fn missing_blob(what: &str, status: Status) -> ShimError {
    if status.code() == Code::NotFound {
        ShimError::InvalidArgument(format!(
            "{what} is not in containerd's content store (fetch it: `ctr content fetch`)"
        ))
    } else {
        unavailable(what, status)
    }
}
