//! HTTP/1.1 `Upgrade` (WebSocket and the like) and `CONNECT`: the request
//! is routed like any other; when the upstream agrees (`101 Switching
//! Protocols`, or a 2xx to `CONNECT`) both connections stop speaking HTTP
//! and their bytes are relayed both ways until either side ends. Shared by
//! the source side (the router) and the destination side (L7
//! authorization), and importing neither.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::answer::strip_hop_by_hop;

/// What a request asks to switch to.
#[derive(Debug)]
pub struct Switch {
    /// The `Upgrade` header's value; `None` for `CONNECT`.
    protocol: Option<HeaderValue>,
    /// The downstream connection, once the answer is sent.
    downstream: OnUpgrade,
}

impl Switch {
    /// Takes the switch an HTTP/1.1 request asks for, if any: `CONNECT`,
    /// or `Connection: upgrade` with an `Upgrade` header.
    pub fn take(parts: &mut http::request::Parts) -> Option<Switch> {
        if parts.version != http::Version::HTTP_11 {
            return None;
        }
        let protocol = if parts.method == Method::CONNECT {
            None
        } else {
            let asked = parts
                .headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
            Some(
                parts
                    .headers
                    .get(header::UPGRADE)
                    .filter(|_| asked)?
                    .clone(),
            )
        };
        let downstream = parts.extensions.remove::<OnUpgrade>()?;
        Some(Switch {
            protocol,
            downstream,
        })
    }

    /// Puts back the headers that ask the upstream for the switch (the
    /// hop-by-hop cleanup removed them).
    pub fn ask(&self, headers: &mut HeaderMap) {
        if let Some(p) = &self.protocol {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, p.clone());
        }
    }

    /// Whether the upstream's answer accepts the switch.
    fn accepted(&self, status: StatusCode) -> bool {
        match self.protocol {
            Some(_) => status == StatusCode::SWITCHING_PROTOCOLS,
            None => status.is_success(),
        }
    }

    /// Cleans the upstream's answer of hop-by-hop headers; when it
    /// accepts the switch, puts the switch's headers back and relays the
    /// two connections' bytes in a task of its own, holding `hold` (such as
    /// the endpoint's load) until the relay ends. Otherwise the answer
    /// stays an ordinary one.
    pub fn splice<B, H: Send + 'static>(self, mut res: Response<B>, hold: H) -> Response<B> {
        let offered = res.headers().get(header::UPGRADE).cloned();
        strip_hop_by_hop(res.headers_mut());
        if !self.accepted(res.status()) {
            return res;
        }
        if self.protocol.is_some() {
            let h = res.headers_mut();
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(p) = offered {
                h.insert(header::UPGRADE, p);
            }
        }
        let upstream = hyper::upgrade::on(&mut res);
        let downstream = self.downstream;
        tokio::spawn(async move {
            let (down, up) = match tokio::try_join!(downstream, upstream) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(error = %e, "a switched connection ended before its relay began");
                    return;
                }
            };
            let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
            match tokio::io::copy_bidirectional(&mut down, &mut up).await {
                Ok((sent, received)) => {
                    tracing::debug!(sent, received, "switched connection relayed");
                }
                Err(e) => tracing::debug!(error = %e, "switched connection ended"),
            }
            drop(hold);
        });
        res
    }
}
