//! Authorization server metadata: RFC 8414 (`/.well-known/oauth-authorization-server`), then
//! OpenID Connect Discovery (`/.well-known/openid-configuration`).

use serde::Deserialize;

/// The metadata fields cedargate uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    /// Must equal the issuer it was fetched for (RFC 8414 §3.3).
    pub issuer: String,
    /// Where the signing keys are.
    pub jwks_uri: Option<String>,
    /// RFC 7662 endpoint.
    pub introspection_endpoint: Option<String>,
}

/// The metadata URLs for `issuer`, in the order they are tried. RFC 8414 §3.1 puts the
/// well-known segment between the host and the issuer's path.
fn metadata_urls(issuer: &str) -> Result<Vec<String>, String> {
    let url = url::Url::parse(issuer).map_err(|error| format!("issuer `{issuer}` is not a URL: {error}"))?;
    let path = url.path().trim_end_matches('/');
    let origin = url.origin().ascii_serialization();
    Ok(vec![
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/')),
    ])
}

/// Fetches and checks the metadata of `issuer`.
///
/// Fails when no metadata document answers, or the one that does names another issuer.
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Metadata, String> {
    let mut failures = Vec::new();
    for url in metadata_urls(issuer)? {
        let answer = super::http::send("discovery", issuer, http.get(&url)).await;
        let metadata = match answer {
            Ok(response) if response.status().is_success() => response.json::<Metadata>().await,
            Ok(response) => {
                failures.push(format!("{url}: HTTP {}", response.status().as_u16()));
                continue;
            }
            Err(error) => {
                failures.push(format!("{url}: {}", super::http::describe(&error)));
                continue;
            }
        };
        match metadata {
            Ok(metadata) if metadata.issuer == issuer => return Ok(metadata),
            Ok(metadata) => {
                return Err(format!("{url} names the issuer `{}`, not `{issuer}`", metadata.issuer));
            }
            Err(error) => failures.push(format!("{url}: not metadata: {error}")),
        }
    }
    Err(format!("no metadata for `{issuer}`: {}", failures.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::metadata_urls;

    #[test]
    fn rfc_8414_inserts_the_well_known_segment_before_the_path() {
        assert_eq!(
            metadata_urls("https://as.example/tenant1").unwrap(),
            [
                "https://as.example/.well-known/oauth-authorization-server/tenant1",
                "https://as.example/tenant1/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            metadata_urls("https://as.example").unwrap()[0],
            "https://as.example/.well-known/oauth-authorization-server"
        );
        assert!(metadata_urls("not a url").is_err());
    }
}
