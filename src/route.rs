//! What a target means: HTTP method and path normalization, route templates, and the mapping
//! of route-generated MCP tools (`GET_/user/profile`) onto their routes.
//!
//! Path normalization is a security boundary: a policy written for `/admin/*` must not be
//! sidestepped by `/public/../admin/users`, `//admin/users`, `/admin/users/` or
//! `/%61dmin/users`. Ambiguous forms are refused rather than guessed at.

use crate::model::{quote, Extra};

/// Longest path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// Most `{parameters}` a route template may have. matchit panics from 26 on; no real route
/// needs more than a handful.
pub const MAX_TEMPLATE_PARAMS: usize = 16;

/// Longest route template accepted, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 1024;

/// Methods that can appear in a route-generated tool name.
const TOOL_METHODS: [&str; 7] = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"];

/// Why a target cannot be decided on. Maps to a 400 / `INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// No tool and no route.
    #[error("target is missing: set `tool` or `route`")]
    Missing,
    /// The method is not an HTTP token.
    #[error("route.method `{0}` is not an HTTP method")]
    Method(String),
    /// The path is malformed or ambiguous.
    #[error("route.path is invalid: {0}")]
    Path(&'static str),
    /// The tool name is empty or too long.
    #[error("tool.name must be 1 to 256 characters")]
    ToolName,
    /// An MCP request without a kind.
    #[error("mcp.kind must be set")]
    McpKind,
    /// A route template that does not parse.
    #[error("route.template `{0}` is not a route template")]
    Template(String),
    /// The name of a prompt, resource or method is empty, too long or has control characters.
    #[error("MCP name must be 1 to 2048 characters without control characters")]
    McpName,
    /// A route-generated tool lacks a template parameter.
    #[error("tool `{tool}` needs argument `{parameter}` to fill its route")]
    MissingArgument {
        /// Tool name.
        tool: String,
        /// Template parameter.
        parameter: String,
    },
    /// A tool argument cannot stand in a single path segment.
    #[error("argument `{parameter}` of tool `{tool}` must be a string or number without `/`")]
    BadArgument {
        /// Tool name.
        tool: String,
        /// Template parameter.
        parameter: String,
    },
    /// Arguments or context nest too deep or hold too many values.
    #[error("arguments and context may nest at most 32 deep and hold at most 10000 values")]
    Structure,
    /// Too many targets in one batch.
    #[error("too many targets: {count} (at most {max})")]
    TooMany {
        /// Targets sent.
        count: usize,
        /// The configured cap.
        max: usize,
    },
}

/// A route after normalization and template matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRoute {
    /// Upper-case method.
    pub method: String,
    /// Normalized path.
    pub path: String,
    /// The matching template, or the path itself.
    pub template: String,
    /// Template parameters, in template order.
    pub params: Vec<(String, String)>,
}

/// The configured route templates (`/users/{id}`, `/files/{*rest}`).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    router: matchit::Router<String>,
    rules: PathRules,
}

impl RouteTable {
    /// Builds the table.
    ///
    /// Fails on a template that does not start with `/` or conflicts with another one.
    pub fn new<'a>(templates: impl IntoIterator<Item = &'a str>, rules: PathRules) -> Result<Self, String> {
        let mut router = matchit::Router::new();
        for template in templates {
            check_template(template)
                .map_err(|reason| format!("route template `{}` {reason}", quote(template)))?;
            router
                .insert(template, template.to_owned())
                .map_err(|error| format!("route template `{}`: {error}", quote(template)))?;
        }
        Ok(Self { router, rules })
    }

    /// The path forms this table accepts.
    pub fn rules(&self) -> PathRules {
        self.rules
    }

    /// Normalizes `method` and `path` and matches the path against the templates.
    ///
    /// Fails when the method is not an HTTP token or the path is malformed or ambiguous.
    pub fn resolve(&self, method: &str, path: &str) -> Result<ResolvedRoute, TargetError> {
        let method = normalize_method(method)?;
        let path = normalize_path(path, self.rules)?;
        let (template, params) = match self.router.at(&path) {
            Ok(matched) => (
                matched.value.clone(),
                matched.params.iter().map(|(key, value)| (key.to_owned(), value.to_owned())).collect(),
            ),
            Err(_) => (path.clone(), Vec::new()),
        };
        Ok(ResolvedRoute { method, path, template, params })
    }

    /// Decides `path` as `template` (named by the caller, for example in an Envoy route's
    /// `context_extensions`) rather than by the configured templates. A path the template does
    /// not match keeps the template as its id, without parameters.
    ///
    /// Fails when the method, the path or the template is malformed.
    pub fn resolve_as(&self, method: &str, path: &str, template: &str) -> Result<ResolvedRoute, TargetError> {
        let method = normalize_method(method)?;
        let path = normalize_path(path, self.rules)?;
        let mut router = matchit::Router::new();
        if check_template(template).is_err() || router.insert(template, ()).is_err() {
            return Err(TargetError::Template(quote(template)));
        }
        let params = router.at(&path).map_or_else(
            |_| Vec::new(),
            |matched| matched.params.iter().map(|(key, value)| (key.to_owned(), value.to_owned())).collect(),
        );
        Ok(ResolvedRoute { method, path, template: template.to_owned(), params })
    }
}

/// What matchit is never given: a template that does not start with `/`, is too long, holds
/// control characters or has more than [`MAX_TEMPLATE_PARAMS`] parameters.
fn check_template(template: &str) -> Result<(), String> {
    if !template.starts_with('/') {
        return Err("must start with `/`".to_owned());
    }
    if template.len() > MAX_TEMPLATE_BYTES {
        return Err(format!("is longer than {MAX_TEMPLATE_BYTES} bytes"));
    }
    if template.chars().any(char::is_control) {
        return Err("holds a control character".to_owned());
    }
    if template.matches('{').count() > MAX_TEMPLATE_PARAMS {
        return Err(format!("has more than {MAX_TEMPLATE_PARAMS} parameters"));
    }
    Ok(())
}

/// Upper-cases a method after checking it is an HTTP token of letters.
pub fn normalize_method(method: &str) -> Result<String, TargetError> {
    if method.is_empty() || method.len() > 16 || !method.bytes().all(|byte| byte.is_ascii_alphabetic()) {
        return Err(TargetError::Method(quote(method)));
    }
    Ok(method.to_ascii_uppercase())
}

/// Path forms that are refused unless allowed (`paths:` in the config). Each is refused by
/// default because some upstream reads it as a different path than cedargate would decide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathRules {
    /// `;` or `%3B` in a segment (path parameters, which Tomcat and Spring drop).
    pub semicolons: bool,
    /// `%25`, which an upstream that decodes twice reads as the start of another escape.
    pub encoded_percent: bool,
    /// Percent-encoded bytes outside ASCII (overlong UTF-8 and full-width dots among them).
    pub non_ascii: bool,
    /// A trailing `/`, decided as sent (`/users/` is not `/users`).
    pub trailing_slash: bool,
}

/// Checks that a request path is in the one form cedargate decides, and returns it without
/// its query, with percent escapes in upper-case hex.
///
/// The path is never rewritten into another one: the upstream gets the path as sent, so a
/// form it could read differently (`//`, a trailing `/`, `%61`, `..`) is refused, not
/// normalized.
///
/// Fails on a path that does not start with `/`, is too long, has an empty or dot segment,
/// control, non-ASCII or backslash characters, a bad escape, an encoded slash, backslash,
/// control or unreserved character, or a form `rules` do not allow.
pub fn normalize_path(path: &str, rules: PathRules) -> Result<String, TargetError> {
    let path = path.split('?').next().unwrap_or_default();
    // A fragment is never sent: a `#` in a request target is an attempt to hide what follows
    // it from cedargate while the proxy forwards it all.
    if path.contains('#') {
        return Err(TargetError::Path("`#` is not allowed in a request path"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(TargetError::Path("longer than 4096 bytes"));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(TargetError::Path("must start with `/`"));
    };
    if rest.is_empty() {
        return Ok("/".to_owned());
    }
    let (rest, trailing) = match rest.strip_suffix('/') {
        Some(rest) if rules.trailing_slash => (rest, true),
        Some(_) => {
            return Err(TargetError::Path("a trailing `/` is not allowed (paths.allow_trailing_slash)"))
        }
        None => (rest, false),
    };
    let mut normalized = String::with_capacity(path.len());
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err(TargetError::Path("empty segments (`//`) are not allowed"));
        }
        // With path parameters allowed, `..;x` is still `..` to the servers that drop them.
        let name = segment.split(';').next().unwrap_or_default();
        let name = if name.contains('%') {
            name.find("%3B").or_else(|| name.find("%3b")).map_or(name, |end| &name[..end])
        } else {
            name
        };
        if name == "." || name == ".." {
            return Err(TargetError::Path("dot segments are not allowed"));
        }
        normalized.push('/');
        check_segment(segment, rules, &mut normalized)?;
    }
    if trailing {
        normalized.push('/');
    }
    Ok(normalized)
}

/// Appends `segment` to `out` after checking each byte and escape against `rules`.
fn check_segment(segment: &str, rules: PathRules, out: &mut String) -> Result<(), TargetError> {
    let bytes = segment.as_bytes();
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte.is_ascii_control() || !byte.is_ascii() || byte == b'\\' {
            return Err(TargetError::Path("control, non-ASCII or backslash character"));
        }
        if byte == b';' && !rules.semicolons {
            return Err(TargetError::Path("`;` is not allowed (paths.allow_semicolons)"));
        }
        if byte != b'%' {
            out.push(char::from(byte));
            index += 1;
            continue;
        }
        let decoded = bytes
            .get(index + 1..index + 3)
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .ok_or(TargetError::Path("bad percent escape"))?;
        let refusal = match decoded {
            b'/' | b'\\' => Some("encoded slash or backslash"),
            _ if decoded.is_ascii_control() => Some("encoded control character"),
            _ if decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~') => {
                Some("percent-encoded unreserved character: send it unencoded")
            }
            b'%' if !rules.encoded_percent => Some("`%25` is not allowed (paths.allow_encoded_percent)"),
            b';' if !rules.semicolons => Some("`%3B` is not allowed (paths.allow_semicolons)"),
            0x80.. if !rules.non_ascii => Some("percent-encoded non-ASCII byte (paths.allow_non_ascii)"),
            _ => None,
        };
        if let Some(reason) = refusal {
            return Err(TargetError::Path(reason));
        }
        out.push('%');
        out.push_str(&format!("{decoded:02X}"));
        index += 3;
    }
    Ok(())
}

/// If `name` is a route-generated tool (`METHOD_/path`), the method and the path with its
/// `{parameters}` filled from `arguments`.
///
/// Fails when a parameter is missing or its argument cannot stand in one path segment.
pub fn route_of_tool(name: &str, arguments: &Extra) -> Result<Option<(String, String)>, TargetError> {
    let Some((method, template)) = name.split_once('_') else {
        return Ok(None);
    };
    if !TOOL_METHODS.contains(&method) || !template.starts_with('/') {
        return Ok(None);
    }
    let mut path = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|close| open + close) else { break };
        path.push_str(&rest[..open]);
        let parameter = rest[open + 1..close].trim_start_matches('*');
        let value = match arguments.get(parameter) {
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(serde_json::Value::Number(number)) => number.to_string(),
            Some(_) => {
                return Err(TargetError::BadArgument { tool: quote(name), parameter: quote(parameter) })
            }
            None => {
                return Err(TargetError::MissingArgument { tool: quote(name), parameter: quote(parameter) })
            }
        };
        if value.is_empty() || value.contains(['/', '?', '#']) {
            return Err(TargetError::BadArgument { tool: quote(name), parameter: quote(parameter) });
        }
        path.push_str(&value);
        rest = &rest[close + 1..];
    }
    path.push_str(rest);
    Ok(Some((method.to_owned(), path)))
}

/// If `name` is a route-generated tool, the method and path it is listed as, before any call:
/// its template with each parameter standing for itself (`GET_/users/{id}` is
/// `GET /users/{id}`), so rules on the route's place decide it and rules on a parameter's
/// value are left to the call.
///
/// Fails as [`route_of_tool`] does on a template it cannot fill.
pub fn route_of_listed_tool(name: &str) -> Result<Option<(String, String)>, TargetError> {
    let mut placeholders = Extra::new();
    let mut rest = name;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|close| open + close) else { break };
        let parameter = rest[open + 1..close].trim_start_matches('*');
        placeholders.insert(parameter.to_owned(), serde_json::Value::from(format!("{{{parameter}}}")));
        rest = &rest[close + 1..];
    }
    route_of_tool(name, &placeholders)
}

#[cfg(test)]
mod tests;
