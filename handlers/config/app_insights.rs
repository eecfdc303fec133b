//! Application Insights export settings: `APPLICATIONINSIGHTS_CONNECTION_STRING` read the way
//! Azure Monitor's SDKs read it (`Key=Value` pairs, keys case-insensitive: `InstrumentationKey`,
//! `IngestionEndpoint`, else `EndpointSuffix` + `Location`, else the global endpoint;
//! `AADAudience` for sovereign clouds) and `APPLICATIONINSIGHTS_AUTHENTICATION_STRING`
//! (`Authorization=AAD`, optionally `ClientId=<id>`), as the Functions host reads them too.

use super::table::{APPLICATIONINSIGHTS_AUTHENTICATION_STRING, APPLICATIONINSIGHTS_CONNECTION_STRING, echo};
use super::{ConfigError, is_guid};

/// Where and how the handler exports to Application Insights, from
/// `APPLICATIONINSIGHTS_CONNECTION_STRING` and `APPLICATIONINSIGHTS_AUTHENTICATION_STRING`.
#[derive(Clone)]
pub struct AppInsightsSettings {
    /// `{IngestionEndpoint}/v2.1/track`: the route that takes Entra tokens (`/v2/track` refuses them).
    pub track_url: String,
    pub instrumentation_key: String,
    /// `Some` with `Authorization=AAD`: every request carries a bearer token, never the key alone.
    pub aad: Option<AadIngestion>,
}

impl std::fmt::Debug for AppInsightsSettings {
    /// The instrumentation key is not a secret, but it needs no place in logs either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppInsightsSettings").field("track_url", &self.track_url).field("aad", &self.aad).finish()
    }
}

/// Entra authentication for ingestion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AadIngestion {
    /// `ClientId=`: a user-assigned identity. `None`: the system-assigned identity (or, off Azure,
    /// the signed-in CLI user).
    pub client_id: Option<String>,
    /// The connection string's `AADAudience` (sovereign clouds); `None`: `https://monitor.azure.com`.
    pub audience: Option<String>,
}

/// The connection string (keys case-insensitive, `;`-separated, as Azure Monitor's SDKs read it)
/// and the authentication string; `None` without a connection string.
pub(super) fn app_insights(get: &impl Fn(&str) -> Option<String>) -> Result<Option<AppInsightsSettings>, ConfigError> {
    const CONNECTION: &str = APPLICATIONINSIGHTS_CONNECTION_STRING.name;
    const AUTHENTICATION: &str = APPLICATIONINSIGHTS_AUTHENTICATION_STRING.name;
    let Some(connection) = APPLICATIONINSIGHTS_CONNECTION_STRING.text(get)? else { return Ok(None) };
    let fields = key_values(CONNECTION, &connection)?;
    let field = |key: &str| fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.clone());
    let instrumentation_key = field("InstrumentationKey").ok_or_else(|| {
        ConfigError::new(
            CONNECTION,
            "has no InstrumentationKey: copy the whole connection string from the Application Insights resource's Overview page",
        )
    })?;
    if !is_guid(&instrumentation_key) {
        return Err(ConfigError::new(CONNECTION, "InstrumentationKey is not a GUID"));
    }
    let endpoint = match (field("IngestionEndpoint"), field("EndpointSuffix")) {
        (Some(endpoint), _) => endpoint,
        (None, Some(suffix)) => match field("Location") {
            Some(location) => format!("https://{location}.dc.{suffix}"),
            None => format!("https://dc.{suffix}"),
        },
        (None, None) => "https://dc.services.visualstudio.com".to_owned(),
    };
    let url = reqwest::Url::parse(&endpoint).map_err(|e| {
        ConfigError::new(CONNECTION, format!("IngestionEndpoint `{}` is not a URL ({e})", echo(&endpoint)))
    })?;
    let loopback = matches!(url.host_str().unwrap_or_default(), "127.0.0.1" | "localhost" | "[::1]");
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(ConfigError::new(
            CONNECTION,
            format!(
                "IngestionEndpoint `{}` must use https (http only for a local emulator on 127.0.0.1 or localhost): bearer tokens are never sent in clear text",
                echo(&endpoint)
            ),
        ));
    }
    let track_url = format!("{}/v2.1/track", endpoint.trim_end_matches('/'));
    let aad = match APPLICATIONINSIGHTS_AUTHENTICATION_STRING.text(get)? {
        None => None,
        Some(text) => {
            let auth = key_values(AUTHENTICATION, &text)?;
            let mut aad = false;
            let mut client_id = None;
            for (key, value) in auth {
                if key.eq_ignore_ascii_case("Authorization") && value.eq_ignore_ascii_case("AAD") {
                    aad = true;
                } else if key.eq_ignore_ascii_case("ClientId") {
                    if !is_guid(&value) {
                        return Err(ConfigError::new(
                            AUTHENTICATION,
                            format!("ClientId `{}` is not a client id (a GUID)", echo(&value)),
                        ));
                    }
                    client_id = Some(value);
                } else {
                    return Err(ConfigError::new(
                        AUTHENTICATION,
                        format!(
                            "`{}` is not supported: use `Authorization=AAD` (system-assigned identity) or `ClientId=<client-id>;Authorization=AAD` (user-assigned)",
                            echo(&format!("{key}={value}"))
                        ),
                    ));
                }
            }
            if !aad {
                return Err(ConfigError::new(AUTHENTICATION, "must contain `Authorization=AAD`"));
            }
            Some(AadIngestion { client_id, audience: field("AADAudience") })
        }
    };
    Ok(Some(AppInsightsSettings { track_url, instrumentation_key, aad }))
}

/// `k=v;k=v` (empty parts skipped, whitespace trimmed, the value may contain `=`).
fn key_values(name: &str, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    text.split(';')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                Ok((k.trim().to_owned(), v.trim().to_owned()))
            }
            _ => Err(ConfigError::new(name, format!("`{}` is not a `Key=Value` pair", echo(part)))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::settings;
    use super::*;

    #[test]
    fn application_insights_reads_the_connection_and_authentication_strings() {
        assert!(settings(&[]).unwrap().log.app_insights.is_none(), "no connection string, no export");
        let key = "00000000-0000-4000-8000-0000000a1b2c";
        let s = settings(&[
            (
                "APPLICATIONINSIGHTS_CONNECTION_STRING",
                &format!("InstrumentationKey={key};IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/;LiveEndpoint=https://westeurope.livediagnostics.monitor.azure.com/;ApplicationId=x"),
            ),
            ("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "Authorization=AAD"),
            ("WEBSITE_SITE_NAME", "func-jobs"),
        ])
        .unwrap();
        let ai = s.log.app_insights.unwrap();
        assert_eq!(ai.track_url, "https://westeurope-5.in.applicationinsights.azure.com/v2.1/track");
        assert_eq!(ai.instrumentation_key, key);
        assert_eq!(ai.aad, Some(AadIngestion { client_id: None, audience: None }));
        assert_eq!(s.log.site_name.as_deref(), Some("func-jobs"));

        let client = "0f6c3a52-9b9e-4c1a-8f43-2a6e1f0c9d11";
        let s = settings(&[
            ("APPLICATIONINSIGHTS_CONNECTION_STRING", &format!("instrumentationkey={key};EndpointSuffix=applicationinsights.us;Location=usgovvirginia;AADAudience=https://monitor.azure.us")),
            ("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", &format!("ClientId={client};Authorization=AAD")),
        ])
        .unwrap();
        let ai = s.log.app_insights.unwrap();
        assert_eq!(ai.track_url, "https://usgovvirginia.dc.applicationinsights.us/v2.1/track");
        assert_eq!(
            ai.aad,
            Some(AadIngestion { client_id: Some(client.into()), audience: Some("https://monitor.azure.us".into()) })
        );
        let s = settings(&[("APPLICATIONINSIGHTS_CONNECTION_STRING", &format!("InstrumentationKey={key}"))]).unwrap();
        let ai = s.log.app_insights.unwrap();
        assert_eq!((ai.track_url.as_str(), ai.aad), ("https://dc.services.visualstudio.com/v2.1/track", None));

        let bad: &[(&[(&str, &str)], &str)] = &[
            (
                &[("APPLICATIONINSIGHTS_CONNECTION_STRING", "IngestionEndpoint=https://x/")],
                "APPLICATIONINSIGHTS_CONNECTION_STRING",
            ),
            (
                &[("APPLICATIONINSIGHTS_CONNECTION_STRING", "InstrumentationKey")],
                "APPLICATIONINSIGHTS_CONNECTION_STRING",
            ),
            (
                &[(
                    "APPLICATIONINSIGHTS_CONNECTION_STRING",
                    "InstrumentationKey=00000000-0000-4000-8000-0000000a1b2c;IngestionEndpoint=http://in.example.com/",
                )],
                "APPLICATIONINSIGHTS_CONNECTION_STRING",
            ),
            (
                &[
                    (
                        "APPLICATIONINSIGHTS_CONNECTION_STRING",
                        "InstrumentationKey=00000000-0000-4000-8000-0000000a1b2c",
                    ),
                    ("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "Authorization=ikey"),
                ],
                "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
            ),
            (
                &[
                    (
                        "APPLICATIONINSIGHTS_CONNECTION_STRING",
                        "InstrumentationKey=00000000-0000-4000-8000-0000000a1b2c",
                    ),
                    ("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "ClientId=abc;Authorization=AAD"),
                ],
                "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
            ),
        ];
        for (pairs, name) in bad {
            let err = settings(pairs).unwrap_err();
            assert_eq!(err.setting, *name, "{pairs:?} -> {err}");
        }
    }
}
