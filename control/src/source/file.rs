//! Kubernetes objects from YAML files: several documents per file, typed
//! with k8s-openapi, unknown fields rejected, every problem named by file,
//! document and field path.

use std::fs;
use std::path::Path;

use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::grpcroutes::GrpcRoute;

use crate::crd::AuthorizationPolicy;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;

use crate::error::{Problem, ProblemKind, Rejected};

/// An object weft reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// `v1/Namespace`.
    Namespace(Box<Namespace>),
    /// `v1/Pod`.
    Pod(Box<Pod>),
    /// `v1/Service`.
    Service(Box<Service>),
    /// `discovery.k8s.io/v1` EndpointSlice (Kubernetes mode; in files, a
    /// service without slices gets the pods its selector selects).
    EndpointSlice(Box<EndpointSlice>),
    /// `gateway.networking.k8s.io/v1` HTTPRoute.
    HttpRoute(Box<HttpRoute>),
    /// `gateway.networking.k8s.io/v1` GRPCRoute.
    GrpcRoute(Box<GrpcRoute>),
    /// `weft.io/v1alpha1` AuthorizationPolicy.
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    /// `weft.io/v1alpha1` Telemetry.
    Telemetry(Box<crate::crd::Telemetry>),
}

/// Identifies an object: kind, namespace (empty when cluster-scoped), name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// `Namespace`, `Pod`, `Service`.
    pub kind: &'static str,
    /// Namespace, or empty.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// An object and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The file.
    pub file: String,
    /// 1-based document number in the file.
    pub document: usize,
    /// The object.
    pub object: Object,
}

impl Object {
    /// Its kind and metadata.
    fn kind_and_meta(&self) -> (&'static str, &ObjectMeta) {
        match self {
            Object::Namespace(o) => ("Namespace", &o.metadata),
            Object::Pod(o) => ("Pod", &o.metadata),
            Object::Service(o) => ("Service", &o.metadata),
            Object::EndpointSlice(o) => ("EndpointSlice", &o.metadata),
            Object::HttpRoute(o) => ("HTTPRoute", &o.metadata),
            Object::GrpcRoute(o) => ("GRPCRoute", &o.metadata),
            Object::AuthorizationPolicy(o) => ("AuthorizationPolicy", &o.metadata),
            Object::Telemetry(o) => ("Telemetry", &o.metadata),
        }
    }

    /// Its metadata, to change.
    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::HttpRoute(o) => &mut o.metadata,
            Object::GrpcRoute(o) => &mut o.metadata,
            Object::AuthorizationPolicy(o) => &mut o.metadata,
            Object::Telemetry(o) => &mut o.metadata,
        }
    }

    /// Its metadata.
    pub fn meta(&self) -> &ObjectMeta {
        self.kind_and_meta().1
    }
}

impl Document {
    /// When the object was created (`metadata.creationTimestamp`), in
    /// seconds since the epoch.
    pub fn created(&self) -> Option<i64> {
        self.object
            .meta()
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
    }

    /// The object's key.
    pub fn key(&self) -> ObjectKey {
        let (kind, meta) = self.object.kind_and_meta();
        let namespace = if kind == "Namespace" {
            String::new()
        } else {
            meta.namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned())
        };
        ObjectKey {
            kind,
            namespace,
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// A problem about this document.
    pub fn problem(&self, path: &str, message: impl Into<String>) -> Problem {
        Problem {
            file: self.file.clone(),
            document: self.document,
            path: path.to_owned(),
            message: message.into(),
            kind: ProblemKind::Invalid,
        }
    }
}

/// Parses every document of one file; empty documents are skipped.
pub fn parse(file: &str, text: &str) -> Result<Vec<Document>, Rejected> {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let problem = |path: &str, message: String| Problem {
            file: file.to_owned(),
            document,
            path: path.to_owned(),
            message,
            kind: ProblemKind::Invalid,
        };
        let value: serde_yaml::Value = match serde::Deserialize::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                problems.push(problem("", format!("not YAML: {e}")));
                // A syntax error ends the stream: later documents cannot be read.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let (api, kind) = match (field("apiVersion"), field("kind")) {
            (Some(a), Some(k)) => (a, k),
            (None, _) => {
                problems.push(problem("apiVersion", "missing".into()));
                continue;
            }
            (_, None) => {
                problems.push(problem("kind", "missing".into()));
                continue;
            }
        };
        let object = match (api.as_str(), kind.as_str()) {
            ("v1", "Namespace") => {
                typed(value, document, file).map(|o| Object::Namespace(Box::new(o)))
            }
            ("v1", "Pod") => typed(value, document, file).map(|o| Object::Pod(Box::new(o))),
            ("v1", "Service") => typed(value, document, file).map(|o| Object::Service(Box::new(o))),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                typed(value, document, file).map(|o| Object::EndpointSlice(Box::new(o)))
            }
            ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
                typed(value, document, file).map(|o| Object::HttpRoute(Box::new(o)))
            }
            ("gateway.networking.k8s.io/v1", "GRPCRoute") => {
                typed(value, document, file).map(|o| Object::GrpcRoute(Box::new(o)))
            }
            ("weft.io/v1alpha1", "AuthorizationPolicy") => {
                typed(value, document, file).map(|o| Object::AuthorizationPolicy(Box::new(o)))
            }
            ("weft.io/v1alpha1", "Telemetry") => {
                typed(value, document, file).map(|o| Object::Telemetry(Box::new(o)))
            }
            _ => Err(problem(
                "kind",
                format!(
                    "{api} {kind} is not supported: weft reads v1 Namespace, Pod and Service, \
                     discovery.k8s.io/v1 EndpointSlice, gateway.networking.k8s.io/v1 HTTPRoute and GRPCRoute, weft.io/v1alpha1 AuthorizationPolicy and Telemetry"
                ),
            )),
        };
        match object {
            Ok(object) => {
                let doc = Document {
                    file: file.to_owned(),
                    document,
                    object,
                };
                if doc.key().name.is_empty() {
                    problems.push(doc.problem("metadata.name", "missing"));
                } else {
                    docs.push(doc);
                }
            }
            Err(p) => problems.push(p),
        }
    }
    Rejected::check(problems)?;
    Ok(docs)
}

/// Deserializes a document into its type; a wrong type or an unknown field
/// is a problem naming the field path.
fn typed<T: DeserializeOwned>(
    value: serde_yaml::Value,
    document: usize,
    file: &str,
) -> Result<T, Problem> {
    let mut unknown = Vec::new();
    // Custom resource types (HTTPRoute) know their apiVersion and kind
    // without storing them: those two are read, not unknown.
    let mut note = |path: serde_ignored::Path<'_>| {
        let path = path.to_string();
        if path != "apiVersion" && path != "kind" {
            unknown.push(path);
        }
    };
    let result: Result<T, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut note));
    let problem = |path: String, message: String| Problem {
        file: file.to_owned(),
        document,
        path,
        message,
        kind: ProblemKind::Invalid,
    };
    match result {
        Err(e) => {
            let path = e.path().to_string();
            Err(problem(
                if path == "." { String::new() } else { path },
                e.into_inner().to_string(),
            ))
        }
        Ok(_) if !unknown.is_empty() => {
            Err(problem(tidy_path(&unknown[0]), "unknown field".into()))
        }
        Ok(v) => Ok(v),
    }
}

/// serde_ignored writes `spec.?.containers.0.x` (`?` for an `Option`);
/// make it `spec.containers[0].x`, as serde_path_to_error writes paths.
fn tidy_path(raw: &str) -> String {
    let mut out = String::new();
    for seg in raw.split('.').filter(|s| *s != "?") {
        if seg.bytes().all(|b| b.is_ascii_digit()) && !seg.is_empty() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// Reads every `*.yaml` and `*.yml` file of a directory, in name order (or
/// one file).
pub fn load(path: &Path) -> Result<Vec<Document>, Rejected> {
    let io = |e: std::io::Error| Rejected {
        problems: vec![Problem {
            file: path.display().to_string(),
            document: 0,
            path: String::new(),
            message: format!("cannot read: {e}"),
            kind: ProblemKind::Invalid,
        }],
    };
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        let mut files: Vec<_> = fs::read_dir(path)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_owned()]
    };
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    for f in files {
        let name = f.display().to_string();
        match fs::read_to_string(&f) {
            Ok(text) => match parse(&name, &text) {
                Ok(mut d) => docs.append(&mut d),
                Err(mut r) => problems.append(&mut r.problems),
            },
            Err(e) => problems.push(Problem {
                file: name,
                document: 0,
                path: String::new(),
                message: format!("cannot read: {e}"),
                kind: ProblemKind::Invalid,
            }),
        }
    }
    Rejected::check(problems)?;
    Ok(docs)
}

#[cfg(test)]
mod tests;
