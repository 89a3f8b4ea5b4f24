//! A wasm binary to run: its bytes and their sha256 digest.

use crate::precompiled::PrecompiledStore;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// The bytes of a wasm binary with their content digest, which keys the compile cache.
#[derive(Clone)]
pub struct Source {
    bytes: Arc<[u8]>,
    digest: String,
    name: String,
    precompiled: Option<Arc<dyn PrecompiledStore>>,
}

impl Source {
    /// Wraps bytes; `name` is used in error messages (a file path, an image reference).
    pub fn from_bytes(name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> Self {
        let bytes = bytes.into();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        Source {
            bytes,
            digest,
            name: name.into(),
            precompiled: None,
        }
    }

    /// The same bytes with a place to look for their precompiled code (see [`crate::precompiled`]).
    pub fn with_precompiled(self, store: Arc<dyn PrecompiledStore>) -> Self {
        Source {
            precompiled: Some(store),
            ..self
        }
    }

    /// Where precompiled code for these bytes may be found.
    pub(crate) fn precompiled(&self) -> Option<&dyn PrecompiledStore> {
        self.precompiled.as_deref()
    }

    /// The same bytes under another name, e.g. one that says which container they belong to.
    pub fn with_name(self, name: impl Into<String>) -> Self {
        Source {
            name: name.into(),
            ..self
        }
    }

    /// Reads a file; the error names the path.
    pub fn from_file(path: &Path) -> Result<Self, crate::Error> {
        let bytes = std::fs::read(path).map_err(|source| crate::Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self::from_bytes(path.display().to_string(), bytes))
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `sha256:<hex>` of the bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The name given at construction, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("len", &self.bytes.len())
            .field("precompiled", &self.precompiled.is_some())
            .finish()
    }
}
