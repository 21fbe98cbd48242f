//! Route filters applied to requests and responses: header modifiers,
//! redirects and rewrites (Gateway API semantics for a Service parent).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{StatusCode, Uri};

use crate::config::{Filter, HeaderModifier, PathModifier, Redirect, Rewrite};

/// What the request filters decided.
#[derive(Debug)]
pub enum Outcome {
    /// Forward the (edited) request.
    Forward,
    /// Answer with this redirect instead.
    Redirect {
        /// The status.
        status: StatusCode,
        /// The `Location`.
        location: String,
    },
}

/// Applies `filters` in order to the request; response header modifiers
/// are collected into `on_response`. `prefix` is the path prefix the rule
/// matched (for `ReplacePrefixMatch`); `port` the service port.
pub fn request<'a>(
    filters: &'a [Filter],
    parts: &mut Parts,
    prefix: Option<&str>,
    port: u16,
    on_response: &mut Vec<&'a HeaderModifier>,
) -> Outcome {
    for f in filters {
        match f {
            Filter::RequestHeaderModifier(m) => modify(m, &mut parts.headers),
            Filter::ResponseHeaderModifier(m) => on_response.push(m),
            Filter::RequestRedirect(r) => return redirect(r, parts, prefix, port),
            Filter::UrlRewrite(r) => rewrite(r, parts, prefix),
            // Resolved with the route (`route::Rule::mirrors`), copied by
            // the router once the request is final.
            Filter::RequestMirror(_) => {}
        }
    }
    Outcome::Forward
}

/// Applies a header modifier: remove, then set, then add. Invalid names or
/// values (the control plane checks them) are skipped.
pub fn modify(m: &HeaderModifier, headers: &mut HeaderMap) {
    for name in &m.remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(n);
        }
    }
    for h in &m.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) {
            headers.insert(n, v);
        }
    }
    for h in &m.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) {
            headers.append(n, v);
        }
    }
}

/// The request's authority: `:authority`, else `Host`.
pub fn authority(parts: &Parts) -> Option<String> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

/// The request's host, without a port.
fn host(parts: &Parts) -> Option<String> {
    let authority: http::uri::Authority = authority(parts)?.parse().ok()?;
    Some(authority.host().to_owned())
}

/// The path after a path modifier.
fn new_path(m: &PathModifier, path: &str, prefix: Option<&str>) -> String {
    match m {
        PathModifier::ReplaceFullPath(p) => p.clone(),
        PathModifier::ReplacePrefixMatch(p) => {
            let rest = prefix.map_or(path, |pre| path.get(pre.len()..).unwrap_or_default());
            let joined = format!("{}{rest}", p.trim_end_matches('/'));
            if joined.is_empty() {
                "/".to_owned()
            } else if joined.starts_with('/') {
                joined
            } else {
                format!("/{joined}")
            }
        }
    }
}

fn redirect(r: &Redirect, parts: &Parts, prefix: Option<&str>, port: u16) -> Outcome {
    let scheme = r.scheme.clone().unwrap_or_else(|| "http".to_owned());
    let host = r
        .hostname
        .clone()
        .or_else(|| host(parts))
        .unwrap_or_default();
    // No port given: the scheme's own when the scheme changes, else the
    // service port; a scheme's well-known port is not written.
    let port = r.port.unwrap_or(match r.scheme.as_deref() {
        Some("https") => 443,
        Some(_) => 80,
        None => port,
    });
    let default_port = if scheme == "https" { 443 } else { 80 };
    let path = match &r.path {
        Some(m) => new_path(m, parts.uri.path(), prefix),
        None => parts.uri.path().to_owned(),
    };
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let location = if port == default_port {
        format!("{scheme}://{host}{path}{query}")
    } else {
        format!("{scheme}://{host}:{port}{path}{query}")
    };
    Outcome::Redirect {
        status: StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND),
        location,
    }
}

fn rewrite(r: &Rewrite, parts: &mut Parts, prefix: Option<&str>) {
    if let Some(h) = &r.hostname
        && let Ok(v) = HeaderValue::from_str(h)
    {
        parts.headers.insert(header::HOST, v);
        if parts.uri.authority().is_some() {
            let mut p = parts.uri.clone().into_parts();
            p.authority = h.parse().ok();
            if let Ok(uri) = Uri::from_parts(p) {
                parts.uri = uri;
            }
        }
    }
    if let Some(m) = &r.path {
        let path = new_path(m, parts.uri.path(), prefix);
        let pq = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut p = parts.uri.clone().into_parts();
        p.path_and_query = pq.parse().ok();
        if let Ok(uri) = Uri::from_parts(p) {
            parts.uri = uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeaderValue as Hv;

    fn parts(uri: &str, host: &str) -> Parts {
        http::Request::get(uri)
            .header("host", host)
            .header("x-old", "1")
            .header("x-keep", "a")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn a_header_modifier_removes_then_sets_then_adds() {
        let mut p = parts("/", "svc");
        let m = HeaderModifier {
            set: vec![Hv {
                name: "x-keep".into(),
                value: "b".into(),
            }],
            add: vec![Hv {
                name: "x-keep".into(),
                value: "c".into(),
            }],
            remove: vec!["x-old".into()],
        };
        modify(&m, &mut p.headers);
        assert!(p.headers.get("x-old").is_none());
        let kept: Vec<_> = p.headers.get_all("x-keep").iter().collect();
        assert_eq!(kept, ["b", "c"]);
    }

    #[test]
    fn redirects_replace_scheme_host_port_and_path_and_keep_the_query() {
        let p = parts("/api/v1/x?q=1", "echo:8080");
        let r = |scheme: Option<&str>, hostname: Option<&str>, port: Option<u16>, path| Redirect {
            scheme: scheme.map(str::to_owned),
            hostname: hostname.map(str::to_owned),
            path,
            port,
            status: 301,
        };
        let loc = |r: &Redirect| match redirect(r, &p, Some("/api"), 80) {
            Outcome::Redirect { location, status } => {
                assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
                location
            }
            Outcome::Forward => panic!("a redirect"),
        };
        assert_eq!(loc(&r(None, None, None, None)), "http://echo/api/v1/x?q=1");
        assert_eq!(
            loc(&r(Some("https"), None, None, None)),
            "https://echo/api/v1/x?q=1"
        );
        assert_eq!(
            loc(&r(None, Some("other"), Some(8443), None)),
            "http://other:8443/api/v1/x?q=1"
        );
        assert_eq!(
            loc(&r(
                None,
                None,
                None,
                Some(PathModifier::ReplacePrefixMatch("/new".into()))
            )),
            "http://echo/new/v1/x?q=1"
        );
        assert_eq!(
            loc(&r(
                None,
                None,
                None,
                Some(PathModifier::ReplaceFullPath("/full".into()))
            )),
            "http://echo/full?q=1"
        );
    }

    #[test]
    fn a_rewrite_replaces_the_matched_prefix_or_the_whole_path_and_the_host() {
        let mut p = parts("/api/x?q=1", "echo");
        rewrite(
            &Rewrite {
                hostname: Some("elsewhere".into()),
                path: Some(PathModifier::ReplacePrefixMatch("/".into())),
            },
            &mut p,
            Some("/api"),
        );
        assert_eq!(p.uri.to_string(), "/x?q=1");
        assert_eq!(p.headers["host"], "elsewhere");
        assert_eq!(
            new_path(
                &PathModifier::ReplacePrefixMatch("/".into()),
                "/api",
                Some("/api")
            ),
            "/"
        );
        assert_eq!(
            new_path(
                &PathModifier::ReplacePrefixMatch("/v2/".into()),
                "/api/x",
                Some("/api")
            ),
            "/v2/x"
        );
    }
}
