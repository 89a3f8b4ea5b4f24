//! The three calls of containerd's gRPC API the shim makes (Containers.Get, Images.Get, Content.Read), and
//! the runtime options message, with their messages declared for prost by hand.
//!
//! Why not the `containerd-client` crate: its build script compiles containerd's `.proto` files with `protoc`,
//! so every build of the shim (`cargo install --path shim` on a node included) would need a protobuf compiler.
//! These messages carry only the fields the shim reads; protobuf decoding skips the others, so containerd
//! can keep adding fields. Field numbers are those of containerd's `api/services/*/v1/*.proto`, which
//! containerd keeps stable across 1.6, 1.7 and 2.x.

use http::uri::PathAndQuery;
use tonic::client::Grpc;
use tonic::codec::Streaming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tonic_prost::ProstCodec;

/// `containerd.services.containers.v1.GetContainerRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetContainerRequest {
    /// The container's id.
    #[prost(string, tag = "1")]
    pub id: String,
}

/// `containerd.services.containers.v1.GetContainerResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetContainerResponse {
    /// The container, when it exists.
    #[prost(message, optional, tag = "1")]
    pub container: Option<Container>,
}

/// `containerd.services.containers.v1.Container`: only the image reference.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Container {
    /// The image the container was created from (empty for a bare rootfs).
    #[prost(string, tag = "3")]
    pub image: String,
}

/// `containerd.services.images.v1.GetImageRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetImageRequest {
    /// The image's name.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `containerd.services.images.v1.GetImageResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetImageResponse {
    /// The image, when it exists.
    #[prost(message, optional, tag = "1")]
    pub image: Option<Image>,
}

/// `containerd.services.images.v1.Image`: only its target.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    /// The manifest or index the name points at.
    #[prost(message, optional, tag = "3")]
    pub target: Option<Descriptor>,
}

/// `containerd.types.Descriptor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Descriptor {
    /// The blob's media type.
    #[prost(string, tag = "1")]
    pub media_type: String,
    /// `sha256:…`.
    #[prost(string, tag = "2")]
    pub digest: String,
    /// Size in bytes.
    #[prost(int64, tag = "3")]
    pub size: i64,
}

/// `containerd.services.content.v1.ReadContentRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadContentRequest {
    /// The blob to read.
    #[prost(string, tag = "1")]
    pub digest: String,
    /// Where to start.
    #[prost(int64, tag = "2")]
    pub offset: i64,
    /// How much to read; 0 reads to the end.
    #[prost(int64, tag = "3")]
    pub size: i64,
}

/// `containerd.services.content.v1.ReadContentResponse`: one chunk of a blob.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadContentResponse {
    /// The chunk's offset in the blob.
    #[prost(int64, tag = "1")]
    pub offset: i64,
    /// The chunk.
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

/// `runtimeoptions.v1.Options`: what containerd's CRI plugin (and `ctr --runtime-config-path`) passes to a
/// runtime that is not runc, from `[...runtimes.NAME.options]`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RuntimeOptions {
    /// The type of the options (unused by containerd).
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// `ConfigPath`: a file to read.
    #[prost(string, tag = "2")]
    pub config_path: String,
    /// `ConfigBody`: the configuration itself.
    #[prost(string, tag = "3")]
    pub config_body: String,
}

/// A connection to containerd's gRPC socket, scoped to one containerd namespace.
pub struct Client {
    grpc: Grpc<Channel>,
    namespace: String,
}

impl Client {
    /// Connects to the unix socket at `address`.
    pub async fn connect(address: &str, namespace: &str) -> Result<Self, tonic::transport::Error> {
        let path = std::path::PathBuf::from(address.trim_start_matches("unix://"));
        // The URI is required by the API and unused: the connector dials the socket.
        let channel = Endpoint::from_static("http://[::]")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await?;
        Ok(Client {
            grpc: Grpc::new(channel),
            namespace: namespace.to_string(),
        })
    }

    /// `Containers.Get`.
    pub async fn get_container(&mut self, id: &str) -> Result<GetContainerResponse, Status> {
        let request = GetContainerRequest { id: id.into() };
        self.unary("/containerd.services.containers.v1.Containers/Get", request)
            .await
    }

    /// `Images.Get`.
    pub async fn get_image(&mut self, name: &str) -> Result<GetImageResponse, Status> {
        let request = GetImageRequest { name: name.into() };
        self.unary("/containerd.services.images.v1.Images/Get", request)
            .await
    }

    /// `Content.Read` of a whole blob, as a stream of chunks.
    pub async fn read_content(
        &mut self,
        digest: &str,
    ) -> Result<Streaming<ReadContentResponse>, Status> {
        let request = self.request(ReadContentRequest {
            digest: digest.into(),
            offset: 0,
            size: 0,
        });
        self.ready().await?;
        let path = PathAndQuery::from_static("/containerd.services.content.v1.Content/Read");
        let reply = self
            .grpc
            .server_streaming(request, path, ProstCodec::default())
            .await?;
        Ok(reply.into_inner())
    }

    async fn unary<Q, R>(&mut self, path: &'static str, message: Q) -> Result<R, Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        let request = self.request(message);
        self.ready().await?;
        let path = PathAndQuery::from_static(path);
        let reply = self
            .grpc
            .unary(request, path, ProstCodec::default())
            .await?;
        Ok(reply.into_inner())
    }

    /// containerd takes the namespace from this metadata key on every call.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(value) = self.namespace.parse() {
            request.metadata_mut().insert("containerd-namespace", value);
        }
        request
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("containerd is not ready: {e}")))
    }
}
