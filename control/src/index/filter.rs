//! Route rule filters and timeouts, from Gateway API objects to the model.
//!
//! A rule's filters and a backendRef's filters have distinct generated
//! types with the same fields; both are read through their JSON form into
//! one spec here, so there is one reader and one set of checks. Filters
//! weft does not implement (ExtensionRef, CORS) are
//! problems, not silently ignored: a strict apply refuses them.

use serde::Deserialize;

use super::Mode;
use super::{Refs, ServiceRef, is_unresolved_backend};
use crate::error::Problem;
use crate::model::{
    Filter, HeaderModifier, HeaderValue, Mirror, PathModifier, Redirect, Retry, Rewrite, Timeouts,
};
use crate::source::Document;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FilterSpec {
    r#type: String,
    request_header_modifier: Option<ModifierSpec>,
    response_header_modifier: Option<ModifierSpec>,
    request_redirect: Option<RedirectSpec>,
    url_rewrite: Option<RewriteSpec>,
    request_mirror: Option<MirrorSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MirrorSpec {
    backend_ref: RefSpec,
    percent: Option<i64>,
    fraction: Option<FractionSpec>,
}

#[derive(Deserialize)]
struct RefSpec {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<i64>,
}

#[derive(Deserialize)]
struct FractionSpec {
    numerator: i64,
    denominator: Option<i64>,
}

#[derive(Deserialize)]
struct ModifierSpec {
    #[serde(default)]
    set: Vec<HeaderSpec>,
    #[serde(default)]
    add: Vec<HeaderSpec>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
struct HeaderSpec {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RedirectSpec {
    scheme: Option<String>,
    hostname: Option<String>,
    path: Option<PathSpec>,
    port: Option<i64>,
    status_code: Option<i64>,
}

#[derive(Deserialize)]
struct RewriteSpec {
    hostname: Option<String>,
    path: Option<PathSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathSpec {
    r#type: String,
    replace_full_path: Option<String>,
    replace_prefix_match: Option<String>,
}

/// The filters at `at` (a list of Gateway API filters), checked; problems
/// name each bad field.
pub(super) fn filters<T: serde::Serialize>(
    refs: &Refs<'_>,
    at: &str,
    list: &[T],
    problems: &mut Vec<Problem>,
) -> Vec<Filter> {
    let doc = refs.doc;
    list.iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let at = format!("{at}[{i}]");
            let spec = serde_json::to_value(f)
                .and_then(serde_json::from_value::<FilterSpec>)
                .map_err(|e| problems.push(doc.problem(&at, format!("unreadable filter: {e}"))))
                .ok()?;
            filter(refs, &at, spec, problems)
        })
        .collect()
}

fn filter(refs: &Refs<'_>, at: &str, f: FilterSpec, problems: &mut Vec<Problem>) -> Option<Filter> {
    let doc = refs.doc;
    let missing = |problems: &mut Vec<Problem>, field: &str| {
        problems.push(doc.problem(
            &format!("{at}.{field}"),
            format!("required for a filter of type {}", f.r#type),
        ));
        None
    };
    match f.r#type.as_str() {
        "RequestHeaderModifier" => match f.request_header_modifier {
            Some(m) => Some(Filter::RequestHeaderModifier(modifier(
                doc,
                &format!("{at}.requestHeaderModifier"),
                m,
                problems,
            )?)),
            None => missing(problems, "requestHeaderModifier"),
        },
        "ResponseHeaderModifier" => match f.response_header_modifier {
            Some(m) => Some(Filter::ResponseHeaderModifier(modifier(
                doc,
                &format!("{at}.responseHeaderModifier"),
                m,
                problems,
            )?)),
            None => missing(problems, "responseHeaderModifier"),
        },
        "RequestRedirect" => match f.request_redirect {
            Some(r) => redirect(doc, &format!("{at}.requestRedirect"), r, problems),
            None => missing(problems, "requestRedirect"),
        },
        "URLRewrite" => match f.url_rewrite {
            Some(r) => {
                let path = match r.path {
                    Some(p) => Some(path(doc, &format!("{at}.urlRewrite.path"), p, problems)?),
                    None => None,
                };
                Some(Filter::UrlRewrite(Rewrite {
                    hostname: r.hostname,
                    path,
                }))
            }
            None => missing(problems, "urlRewrite"),
        },
        "RequestMirror" => match f.request_mirror {
            Some(m) => mirror(refs, &format!("{at}.requestMirror"), m, problems),
            None => missing(problems, "requestMirror"),
        },
        other => {
            problems.push(doc.problem(
                &format!("{at}.type"),
                format!(
                    "filter type {other} is not supported by weft (RequestHeaderModifier, \
                     ResponseHeaderModifier, RequestRedirect, URLRewrite and RequestMirror are)"
                ),
            ));
            None
        }
    }
}

/// A mirror: a Service backend with a port, and the share copied
/// (`percent` 0 to 100, or a `fraction` of at most 1; every request when
/// neither is given).
fn mirror(refs: &Refs<'_>, at: &str, m: MirrorSpec, problems: &mut Vec<Problem>) -> Option<Filter> {
    let doc = refs.doc;
    let before = problems.len();
    let r = &m.backend_ref;
    let target = ServiceRef {
        kind: r.kind.as_deref(),
        group: r.group.as_deref(),
        namespace: r.namespace.as_deref(),
        name: &r.name,
    };
    let ref_at = format!("{at}.backendRef");
    let service = match refs.service(&target, &ref_at, problems) {
        Some(s) => Some(s),
        // Kept, unresolved: no copies are made until the service exists.
        None if refs.mode != Mode::Strict && problems.last().is_some_and(is_unresolved_backend) => {
            Some(format!(
                "{}/{}",
                r.namespace.as_deref().unwrap_or(refs.namespace),
                r.name
            ))
        }
        None => None,
    };
    let port = match r.port.map(u16::try_from) {
        Some(Ok(p)) if p != 0 => Some(p),
        Some(_) => {
            problems.push(doc.problem(&format!("{ref_at}.port"), "not a port"));
            None
        }
        None => {
            problems.push(doc.problem(&format!("{ref_at}.port"), "required for a Service backend"));
            None
        }
    };
    let (numerator, denominator) = match (m.percent, m.fraction) {
        (Some(_), Some(_)) => {
            problems.push(doc.problem(at, "give percent or fraction, not both"));
            (0, 1)
        }
        (Some(p), None) if (0..=100).contains(&p) => (p, 100),
        (Some(p), None) => {
            problems.push(doc.problem(&format!("{at}.percent"), format!("{p} is not 0 to 100")));
            (0, 1)
        }
        (None, Some(f)) => {
            let d = f.denominator.unwrap_or(100);
            if d <= 0 || f.numerator < 0 || f.numerator > d {
                problems.push(doc.problem(
                    &format!("{at}.fraction"),
                    format!("{}/{d} is not a fraction from 0 to 1", f.numerator),
                ));
            }
            (f.numerator, d)
        }
        (None, None) => (1, 1),
    };
    if problems[before..].iter().any(|p| !is_unresolved_backend(p)) {
        return None;
    }
    Some(Filter::RequestMirror(Mirror {
        service: service?,
        port: port?,
        numerator: u32::try_from(numerator).ok()?,
        denominator: u32::try_from(denominator).ok()?,
    }))
}

fn modifier(
    doc: &Document,
    at: &str,
    m: ModifierSpec,
    problems: &mut Vec<Problem>,
) -> Option<HeaderModifier> {
    let before = problems.len();
    let mut check = |what: &str, i: usize, name: &str| {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            problems.push(doc.problem(
                &format!("{at}.{what}[{i}]"),
                format!("`{name}` is not a header name"),
            ));
        }
    };
    for (i, h) in m.set.iter().enumerate() {
        check("set", i, &h.name);
    }
    for (i, h) in m.add.iter().enumerate() {
        check("add", i, &h.name);
    }
    for (i, h) in m.remove.iter().enumerate() {
        check("remove", i, h);
    }
    let value = |h: HeaderSpec| HeaderValue {
        name: h.name.to_ascii_lowercase(),
        value: h.value,
    };
    (problems.len() == before).then(|| HeaderModifier {
        set: m.set.into_iter().map(value).collect(),
        add: m.add.into_iter().map(value).collect(),
        remove: m.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
    })
}

fn redirect(
    doc: &Document,
    at: &str,
    r: RedirectSpec,
    problems: &mut Vec<Problem>,
) -> Option<Filter> {
    let before = problems.len();
    let status = r.status_code.unwrap_or(302);
    if !matches!(status, 301 | 302 | 303 | 307 | 308) {
        problems.push(doc.problem(
            &format!("{at}.statusCode"),
            format!("{status} is not a redirect status weft sends (301, 302, 303, 307, 308)"),
        ));
    }
    if let Some(s) = &r.scheme
        && s != "http"
        && s != "https"
    {
        problems.push(doc.problem(
            &format!("{at}.scheme"),
            format!("`{s}` is not http or https"),
        ));
    }
    let port = match r.port.map(u16::try_from) {
        None => None,
        Some(Ok(p)) if p != 0 => Some(p),
        Some(_) => {
            problems.push(doc.problem(&format!("{at}.port"), "not a port"));
            None
        }
    };
    let path = match r.path {
        Some(p) => path(doc, &format!("{at}.path"), p, problems),
        None => None,
    };
    (problems.len() == before).then_some(Filter::RequestRedirect(Redirect {
        scheme: r.scheme,
        hostname: r.hostname,
        path,
        port,
        status: status as u16,
    }))
}

fn path(
    doc: &Document,
    at: &str,
    p: PathSpec,
    problems: &mut Vec<Problem>,
) -> Option<PathModifier> {
    let value = match p.r#type.as_str() {
        "ReplaceFullPath" => p.replace_full_path.map(PathModifier::ReplaceFullPath),
        "ReplacePrefixMatch" => p.replace_prefix_match.map(PathModifier::ReplacePrefixMatch),
        other => {
            problems.push(doc.problem(
                &format!("{at}.type"),
                format!("`{other}` is not ReplaceFullPath or ReplacePrefixMatch"),
            ));
            return None;
        }
    };
    if value.is_none() {
        problems.push(doc.problem(at, format!("a {} path needs its value", p.r#type)));
    }
    value
}

/// A rule's timeouts (GEP-1742): Gateway API durations (`500ms`, `10s`,
/// `1h30m`); `backendRequest` may not exceed `request`.
pub(super) fn timeouts(
    doc: &Document,
    at: &str,
    request: Option<&str>,
    backend_request: Option<&str>,
    problems: &mut Vec<Problem>,
) -> Timeouts {
    let mut parse = |field: &str, text: Option<&str>| {
        let text = text?;
        match duration_ms(text) {
            Some(ms) => Some(ms),
            None => {
                problems.push(doc.problem(
                    &format!("{at}.{field}"),
                    format!("`{text}` is not a Gateway API duration (like 500ms, 10s, 1h30m)"),
                ));
                None
            }
        }
    };
    let t = Timeouts {
        request_ms: parse("request", request).filter(|ms| *ms != 0),
        backend_request_ms: parse("backendRequest", backend_request).filter(|ms| *ms != 0),
    };
    if let (Some(r), Some(b)) = (t.request_ms, t.backend_request_ms)
        && b > r
    {
        problems.push(doc.problem(
            &format!("{at}.backendRequest"),
            "may not be longer than the request timeout",
        ));
    }
    t
}

/// A rule's retry (GEP-1731): attempts (default 1, at most 10), codes from
/// 500 to 599 (none: only connect failures and resets are retried), and
/// the least backoff.
pub(super) fn retry(
    doc: &Document,
    at: &str,
    attempts: Option<i64>,
    codes: &[i64],
    backoff: Option<&str>,
    problems: &mut Vec<Problem>,
) -> Retry {
    let attempts = match attempts.map(u32::try_from) {
        None => 1,
        Some(Ok(n)) if n <= 10 => n,
        Some(_) => {
            problems.push(doc.problem(&format!("{at}.attempts"), "must be 0 to 10"));
            0
        }
    };
    let mut out = Vec::new();
    for (i, c) in codes.iter().enumerate() {
        match u16::try_from(*c) {
            Ok(c) if (500..600).contains(&c) => out.push(c),
            _ => problems.push(doc.problem(
                &format!("{at}.codes[{i}]"),
                format!("{c} is not a code from 500 to 599"),
            )),
        }
    }
    let backoff_ms = backoff.and_then(|b| match duration_ms(b) {
        Some(ms) => Some(ms),
        None => {
            problems.push(doc.problem(
                &format!("{at}.backoff"),
                format!("`{b}` is not a Gateway API duration (like 100ms)"),
            ));
            None
        }
    });
    Retry {
        attempts,
        codes: out,
        backoff_ms,
    }
}

/// Milliseconds in a Gateway API duration: 1 to 4 parts of up to 5 digits
/// and a unit, `h`, `m`, `s` or `ms`.
fn duration_ms(text: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut parts = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += n * unit;
        parts += 1;
    }
    (1..=4).contains(&parts).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::duration_ms;

    #[test]
    fn gateway_api_durations_read_as_milliseconds_and_others_are_refused() {
        assert_eq!(duration_ms("500ms"), Some(500));
        assert_eq!(duration_ms("10s"), Some(10_000));
        assert_eq!(duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(duration_ms("0s"), Some(0));
        for bad in ["", "10", "1.5s", "s", "123456s", "1h1m1s1ms1h", "10us"] {
            assert_eq!(duration_ms(bad), None, "{bad}");
        }
    }
}
