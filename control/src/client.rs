//! Reaching a control plane: over TCP (`http://host:port`) or a unix socket
//! (a path), for `weft apply` and friends.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use weft_control_api::discovery::discovery_client::DiscoveryClient;

/// Where a control plane listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `http://host:port`.
    Tcp(String),
    /// A unix socket path.
    Unix(PathBuf),
}

/// Connects to a control plane.
pub async fn connect(target: &Target) -> Result<DiscoveryClient<Channel>, tonic::transport::Error> {
    let channel = match target {
        Target::Tcp(url) => Endpoint::from_shared(url.clone())?.connect().await?,
        Target::Unix(path) => {
            let path = path.clone();
            // The URI is not used: the connector opens the socket.
            Endpoint::from_static("http://control.invalid")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await?
        }
    };
    Ok(DiscoveryClient::new(channel))
}
