//! Credential errors turned into one line a person can act on.
//!
//! The Azure CLI credential's error is `az`'s stderr verbatim. For a network, proxy or DNS
//! failure that is an 8-10 KB Python traceback which mentions `login.microsoftonline.com`, so
//! looking for "login" anywhere sends people to `az login` for a network problem. We read only
//! `az`'s own `ERROR:` lines (the traceback below them is for `--debug`), sort on those, and
//! keep one bounded line of them in the message.

use super::COGNITIVE_SERVICES_SCOPE;
use crate::config::CredentialKind;
use crate::error::ApiError;

/// The longest piece of a tool's or service's own words we copy into an error.
const QUOTE_LIMIT: usize = 300;
/// What `azure_identity` puts before the tool's stderr.
const CRATE_PREFIXES: [&str; 2] =
    ["AzureCliCredential authentication failed.", "AzureDeveloperCliCredential authentication failed."];
/// az's header line for an unexpected exception; the next `ERROR:` line says what it was.
const AZ_UNEXPECTED: &str = "the command failed with an unexpected error";

/// Why a CLI credential failed, read from the tool's own error lines.
#[derive(Debug, PartialEq)]
pub(crate) enum CliFailure {
    /// The tool is not installed (or not on PATH).
    NotFound,
    /// The tool says to sign in (again).
    LoginNeeded(String),
    /// The tool could not reach Microsoft Entra ID: network, proxy, DNS, TLS.
    Network(String),
    /// Anything else, in the tool's words.
    Other(String),
}

/// Sorts a CLI credential's error text (`az`'s stderr, as the crate passes it on).
pub(crate) fn classify_cli(text: &str) -> CliFailure {
    let lower = text.to_ascii_lowercase();
    if lower.contains("not found on path") || lower.contains("wasn't found on path") {
        return CliFailure::NotFound;
    }
    // The crate puts the tool's first line right after its own "<Credential> authentication failed.".
    let lines: Vec<&str> = text
        .lines()
        .map(|l| {
            let l = l.trim();
            CRATE_PREFIXES.iter().find_map(|prefix| l.strip_prefix(prefix)).unwrap_or(l).trim()
        })
        .collect();
    let errors: Vec<&str> =
        lines.iter().filter_map(|l| l.strip_prefix("ERROR:")).map(str::trim).filter(|l| !l.is_empty()).collect();
    // The line that says what went wrong: az's first error line that is not its generic header;
    // without any `ERROR:` line (azd, an older az), the first line that is not the crate's own
    // wording or a traceback.
    let said = errors
        .iter()
        .find(|l| !l.to_ascii_lowercase().starts_with(AZ_UNEXPECTED))
        .or(errors.first())
        .or_else(|| {
            lines.iter().find(|l| !l.is_empty() && !l.starts_with("To troubleshoot") && !l.starts_with("Traceback"))
        })
        .copied()
        .unwrap_or("no error message");
    let said = quote(said);
    // Sort on az's own words only, never on the traceback.
    let judged = if errors.is_empty() { said.to_ascii_lowercase() } else { errors.join("\n").to_ascii_lowercase() };
    const NETWORK: [&str; 16] = [
        "connectionpool",
        "max retries exceeded",
        "failed to resolve",
        "name resolution",
        "name or service not known",
        "nodename nor servname",
        "failed to establish a new connection",
        "connection refused",
        "connection reset",
        "connection aborted",
        "connectionerror",
        "proxyerror",
        "unable to connect to proxy",
        "certificate verify failed",
        "ssl",
        "network connection",
    ];
    if NETWORK.iter().any(|m| judged.contains(m)) || judged.contains("timed out") {
        CliFailure::Network(said)
    } else if judged.contains("az login")
        || judged.contains("azd auth login")
        || judged.contains("interactive authentication is needed")
        || judged.contains("not logged in")
    {
        CliFailure::LoginNeeded(said)
    } else {
        CliFailure::Other(said)
    }
}

/// Turns a credential error into one message a person can act on.
pub(crate) fn classify(kind: CredentialKind, description: &str, scope: &str, error: &azure_core::Error) -> ApiError {
    let text = error.to_string();
    match kind {
        CredentialKind::AzureCli | CredentialKind::AzureDeveloperCli => {
            let (tool, login) =
                if kind == CredentialKind::AzureCli { ("az", "az login") } else { ("azd", "azd auth login") };
            let tenant_hint = if scope == COGNITIVE_SERVICES_SCOPE {
                " (add --tenant <tenant-id> if the Azure OpenAI resource is in another tenant)"
            } else {
                " (add --tenant <tenant-id> if the resource is in another tenant)"
            };
            match classify_cli(&text) {
                CliFailure::NotFound => ApiError::UpstreamAuthFailed {
                    message: format!(
                        "{description}: the `{tool}` command was not found on PATH. Install it and run `{login}`, or set AZURE_TOKEN_CREDENTIALS to another credential."
                    ),
                    transient: true,
                },
                CliFailure::LoginNeeded(said) => ApiError::UpstreamAuthFailed {
                    message: format!(
                        "{description}: not logged in. Run `{login}`{tenant_hint}, then retry. {tool} said: {said}"
                    ),
                    transient: true,
                },
                CliFailure::Network(said) => ApiError::UpstreamUnavailable {
                    message: format!(
                        "{description}: `{tool}` could not reach Microsoft Entra ID (a network, proxy or DNS failure; logging in again will not help). Check the connection and HTTPS_PROXY/NO_PROXY. {tool} said: {said}"
                    ),
                },
                CliFailure::Other(said) => ApiError::UpstreamAuthFailed {
                    message: format!(
                        "{description}: could not get a token for {scope}: {said}. Check `{login}` and AZURE_TENANT_ID."
                    ),
                    transient: true,
                },
            }
        }
        CredentialKind::ManagedIdentity => {
            let said = quote(&one_line(text.split("To troubleshoot").next().unwrap_or_default()));
            let message = format!("{description} could not get a token for {scope}: {said}");
            match http_status(error) {
                Some(400) => ApiError::UpstreamAuthFailed {
                    message: format!(
                        "{message}. Enable the Function App's system-assigned identity, or check that AZURE_CLIENT_ID names a user-assigned identity attached to the app."
                    ),
                    transient: true,
                },
                Some(s) if (400..500).contains(&s) && s != 408 && s != 429 => {
                    ApiError::UpstreamAuthFailed { message, transient: true }
                }
                // Connection errors, timeouts, 5xx: the identity endpoint is unavailable.
                _ => ApiError::UpstreamUnavailable {
                    message: format!("{message} (the identity endpoint is unavailable)"),
                },
            }
        }
    }
}

/// The HTTP status of the innermost `azure_core` error that has one.
fn http_status(error: &azure_core::Error) -> Option<u16> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(core) = e.downcast_ref::<azure_core::Error>()
            && let Some(status) = core.http_status()
        {
            return Some(u16::from(status));
        }
        current = e.source();
    }
    None
}

/// Text on one line: lines trimmed and joined with spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Someone else's words, fit to quote: control characters replaced, at most [`QUOTE_LIMIT`] characters.
fn quote(text: &str) -> String {
    let clean: String = text.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    match clean.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}...", &clean[..cut]),
        None => clean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUFFIX: &str = "\nTo troubleshoot, visit https://aka.ms/azsdk/rust/identity/troubleshoot#azure-cli";

    #[test]
    fn az_asking_for_a_login_is_a_login() {
        let text =
            format!("AzureCliCredential authentication failed. ERROR: Please run 'az login' to setup account.{SUFFIX}");
        assert_eq!(classify_cli(&text), CliFailure::LoginNeeded("Please run 'az login' to setup account.".into()));
    }

    #[test]
    fn a_traceback_naming_login_microsoftonline_com_is_a_network_failure_quoted_by_its_error_line() {
        let text = "AzureCliCredential authentication failed. ERROR: The command failed with an unexpected error. Here is the traceback:\n\
            ERROR: HTTPSConnectionPool(host='login.microsoftonline.com', port=443): Max retries exceeded with url: /organizations/oauth2/v2.0/token (Caused by NameResolutionError(\"Failed to resolve 'login.microsoftonline.com'\"))\n\
            Traceback (most recent call last):\n  File \"/opt/az/lib/python3.12/site-packages/msal/application.py\", line 1455, in acquire_token_silent_with_error\n\
            requests.exceptions.ConnectionError: HTTPSConnectionPool(host='login.microsoftonline.com', port=443)\n\
            To open an issue, please run: 'az feedback'"
            .to_owned()
            + SUFFIX;
        let CliFailure::Network(said) = classify_cli(&text) else { panic!("{:?}", classify_cli(&text)) };
        assert!(said.starts_with("HTTPSConnectionPool(host='login.microsoftonline.com'"), "{said}");
        assert!(!said.contains("Traceback") && said.chars().count() <= QUOTE_LIMIT + 3, "{said}");
    }

    #[test]
    fn login_in_a_traceback_frame_is_not_a_login_problem() {
        let text = "ERROR: Something odd happened\nTraceback (most recent call last):\n  File \"login.py\", line 1, in az login\n";
        assert_eq!(classify_cli(text), CliFailure::Other("Something odd happened".into()));
    }

    #[test]
    fn a_proxy_failure_is_a_network_failure() {
        let text = "ERROR: HTTPSConnectionPool(host='login.microsoftonline.com', port=443): Max retries exceeded (Caused by ProxyError('Unable to connect to proxy', OSError('Tunnel connection failed: 403 Forbidden')))";
        assert!(matches!(classify_cli(text), CliFailure::Network(_)));
    }

    #[test]
    fn not_on_path_and_text_without_error_lines() {
        assert_eq!(
            classify_cli("AzureCliCredential authentication failed. az not found on PATH"),
            CliFailure::NotFound
        );
        let azd = "AzureDeveloperCliCredential authentication failed. \nnot logged in, run `azd auth login` to login";
        assert!(matches!(classify_cli(azd), CliFailure::LoginNeeded(_)), "{:?}", classify_cli(azd));
    }

    #[test]
    fn quotes_are_bounded_and_on_one_line() {
        let long = format!("ERROR: {}\u{1b}[31m", "é".repeat(1000));
        let CliFailure::Other(said) = classify_cli(&long) else { panic!() };
        assert_eq!(said.chars().count(), QUOTE_LIMIT + 3);
        assert!(!said.contains('\u{1b}'));
    }
}
