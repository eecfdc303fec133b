//! JWT-shaped bearer tokens: issued for the managed identity and the CLI, remembered in a
//! registry, and validated by lookup plus expiry.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::clock::unix_secs;
use crate::state::Shared;

/// Azure OpenAI's audience: the only one its data plane accepts.
pub(crate) const AUDIENCE: &str = "https://cognitiveservices.azure.com";
/// Azure Monitor's audience (Application Insights ingestion).
pub(crate) const MONITOR_AUDIENCE: &str = "https://monitor.azure.com";
/// Azure Storage's audience (the Blob service with Microsoft Entra authorization).
pub(crate) const STORAGE_AUDIENCE: &str = "https://storage.azure.com";
/// The resources the token issuers know; any other is `AADSTS500011`.
pub(crate) const KNOWN_AUDIENCES: [&str; 3] = [AUDIENCE, MONITOR_AUDIENCE, STORAGE_AUDIENCE];
pub(crate) const SYSTEM_OID: &str = "5a1f0c5e-0000-4000-8000-00000000a11d";
pub(crate) const SYSTEM_APPID: &str = "5a1f0c5e-0000-4000-8000-0000000c11d0";
pub(crate) const CLI_OID: &str = "de5e1000-0000-4000-8000-000000000d3f";
pub(crate) const CLI_UPN: &str = "dev@contoso.example";

/// Who a token is for.
pub(crate) enum Principal {
    /// A managed identity: object id and app (client) id.
    App { oid: String, appid: String },
    /// The signed-in developer of the Azure CLI.
    User,
}

/// What the registry remembers of an issued token.
#[derive(Clone, Debug)]
pub(crate) struct Claims {
    /// The resource the token is for (`aud`).
    pub aud: String,
    pub oid: String,
    pub tid: String,
    pub exp: SystemTime,
}

/// An issued token and its expiry.
pub(crate) struct Issued {
    pub token: String,
    pub exp: SystemTime,
    pub lifetime: Duration,
}

/// The known audience a `resource` (or a scope ending in `/.default`) names, if any.
pub(crate) fn audience_of(resource: &str) -> Option<&'static str> {
    let resource = resource.trim_end_matches("/.default").trim_end_matches('/');
    KNOWN_AUDIENCES.into_iter().find(|a| *a == resource)
}

/// Issues a unique token for `principal` in tenant `tid` and audience `aud`, with the current
/// token lifetime.
pub(crate) fn issue(shared: &Shared, principal: &Principal, tid: &str, aud: &str) -> Issued {
    let mut inner = shared.lock();
    let lifetime = inner.token_lifetime;
    let now = SystemTime::now();
    let exp = now + lifetime;
    let oid = match principal {
        Principal::App { oid, .. } => oid.as_str(),
        Principal::User => CLI_OID,
    };
    let mut claims = json!({
        "aud": aud,
        "iss": format!("https://sts.windows.net/{tid}/"),
        "iat": unix_secs(now),
        "nbf": unix_secs(now),
        "exp": unix_secs(exp),
        "oid": oid,
        "tid": tid,
        "sub": oid,
        "uti": uuid::Uuid::new_v4().simple().to_string(),
        "ver": "1.0",
    });
    let extra = match principal {
        Principal::App { appid, .. } => json!({"appid": appid, "idtyp": "app"}),
        Principal::User => json!({"upn": CLI_UPN, "idtyp": "user", "name": "Dev Eloper"}),
    };
    if let (Value::Object(c), Value::Object(e)) = (&mut claims, extra) {
        c.extend(e);
    }
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signature = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let token = format!("{header}.{payload}.{signature}");
    inner.tokens.insert(token.clone(), Claims { aud: aud.to_owned(), oid: oid.to_owned(), tid: tid.to_owned(), exp });
    Issued { token, exp, lifetime }
}

/// Why a bearer token was refused.
pub(crate) enum Invalid {
    Unknown,
    Expired,
}

/// Looks `token` up; a token is expired when now >= exp.
pub(crate) fn validate(shared: &Shared, token: &str) -> Result<Claims, Invalid> {
    let claims = shared.lock().tokens.get(token).cloned().ok_or(Invalid::Unknown)?;
    if SystemTime::now() >= claims.exp { Err(Invalid::Expired) } else { Ok(claims) }
}

/// A stable v4-shaped GUID derived from `seed` (for user-assigned identities).
pub(crate) fn derived_guid(seed: &str) -> String {
    let a = fnv1a(seed.as_bytes(), 0xcbf2_9ce4_8422_2325);
    let b = fnv1a(seed.as_bytes(), a ^ 0x9e37_79b9_7f4a_7c15);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}

/// FNV-1a, 64-bit: a hash that is the same in every build (unlike `DefaultHasher`).
pub(crate) fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The claims of a JWT-shaped token, decoded (for tests and diagnostics).
pub fn decode_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}
