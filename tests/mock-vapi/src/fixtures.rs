//! The data the mock serves and the facts tests assert with: the five phone-number fixtures
//! (compiled in from `fixtures/phone-numbers/`), their ids, where their planted secrets are, and
//! the constant bodies Vapi answers with.

use std::sync::OnceLock;

use serde_json::Value;

/// Marker contained in every planted secret value of the fixtures, and in no other value.
pub const PLANTED: &str = "PLANTED";

/// The token the mock rejects by default (any other bearer token is accepted).
pub const INVALID_TOKEN: &str = "invalid-key";

/// Vapi's real 401 body.
pub const UNAUTHORIZED_BODY: &str = r#"{"message":"Invalid Key. Hot tip, you may be using the private key instead of the public key, or vice versa.","error":"Unauthorized","statusCode":401}"#;

/// Vapi's 404 body for an unknown phone-number id.
pub const NOT_FOUND_BODY: &str =
    r#"{"message":"Phone number not found","error":"Not Found","statusCode":404}"#;

/// Content type of every JSON answer.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// Content type of the Cloudflare-like HTML error pages.
pub const HTML_CONTENT_TYPE: &str = "text/html; charset=UTF-8";

/// The body of [`Behavior::Garbage`](crate::Behavior::Garbage): neither JSON nor UTF-8.
pub(crate) const GARBAGE_BODY: &[u8] =
    b"<<mock-vapi garbage>> {\"id\": \"3b1f6a52\", \"number\": +1415\xff\xfe, oops";

pub const TWILIO_ID: &str = "3b1f6a52-8c7e-4d19-a2f4-6e0b9c3d7a15";
pub const VONAGE_ID: &str = "7c4e2d90-1a5b-4f3c-8e67-2d9a0b4f6c38";
pub const VAPI_ID: &str = "a9d3e1f4-6b2c-4a87-b5d0-9e1c3f7a2b64";
pub const TELNYX_ID: &str = "d2f8b4a6-3e9c-4b1d-9a75-4c6e8f0a1d93";
pub const BYO_ID: &str = "e5a7c3b9-0d4f-4e62-8b1a-7f3d5c9e2a06";

/// `(provider, id)` of the five fixtures, in a fixed order.
pub const FIXTURE_IDS: &[(&str, &str)] = &[
    ("twilio", TWILIO_ID),
    ("vonage", VONAGE_ID),
    ("vapi", VAPI_ID),
    ("telnyx", TELNYX_ID),
    ("byo-phone-number", BYO_ID),
];

const FIXTURE_SOURCES: &[(&str, &str)] = &[
    (
        "twilio",
        include_str!("../fixtures/phone-numbers/twilio.json"),
    ),
    (
        "vonage",
        include_str!("../fixtures/phone-numbers/vonage.json"),
    ),
    ("vapi", include_str!("../fixtures/phone-numbers/vapi.json")),
    (
        "telnyx",
        include_str!("../fixtures/phone-numbers/telnyx.json"),
    ),
    (
        "byo-phone-number",
        include_str!("../fixtures/phone-numbers/byo.json"),
    ),
];

/// JSON pointers (RFC 6901) of values that are wholly secret, present in every fixture.
pub const SECRET_POINTERS: &[&str] = &[
    "/server/headers/Authorization",
    "/server/headers/X-Api-Key",
    "/server/headers/X-Vapi-Secret",
    "/server/secret",
    "/serverUrlSecret",
    "/fallbackDestination/sipHeaders/X-Auth-Token",
    "/fallbackDestination/sipHeaders/X-Customer-Key",
    "/hooks/0/do/0/destination/sipHeaders/X-Screening-Token",
    "/hooks/1/do/destination/sipHeaders/X-Trunk-Password",
    "/hooks/1/do/destination/sipHeaders/X-Routing-Key",
];

/// JSON pointers of URL strings, present in every fixture, that embed a secret (userinfo
/// password and/or `token`, `sig`, `X-Amz-Signature`, `X-Amz-Credential` query parameters).
/// Their scheme, host and path are not secret.
pub const SECRET_URL_POINTERS: &[&str] = &[
    "/server/url",
    "/serverUrl",
    "/statusWebhookUrl",
    "/fallbackDestination/transferPlan/holdAudioUrl",
    "/fallbackDestination/transferPlan/transferCompleteAudioUrl",
];

/// JSON pointers of non-secret values, present in every fixture, that must survive redaction.
pub const KEPT_POINTERS: &[&str] = &[
    "/id",
    "/orgId",
    "/provider",
    "/createdAt",
    "/updatedAt",
    "/status",
    "/name",
    "/number",
    "/assistantId",
    "/isServerUrlSecretSet",
    "/server/credentialId",
    "/server/timeoutSeconds",
    "/server/encryptedPaths/0",
    "/server/backoffPlan/maxRetries",
    "/fallbackDestination/type",
    "/fallbackDestination/sipUri",
    "/fallbackDestination/message",
    "/fallbackDestination/transferPlan/mode",
    "/hooks/0/on",
    "/hooks/0/do/0/destination/sipUri",
    "/hooks/0/do/1/exact",
    "/hooks/1/on",
    "/hooks/1/do/destination/sipUri",
    "/hooks/1/do/destination/callerId",
    "/hooks/1/do/destination/message",
];

/// Provider-specific wholly-secret JSON pointers (in addition to [`SECRET_POINTERS`]).
/// Accepts `byo` as an alias of `byo-phone-number`; unknown providers give an empty list.
pub fn provider_secret_pointers(provider: &str) -> &'static [&'static str] {
    match canonical_provider(provider) {
        Some("twilio") => &[
            "/twilioAuthToken",
            "/twilioApiKey",
            "/twilioApiSecret",
            "/webhookPrivateKey",
        ],
        Some("vonage") => &["/vonageApiSecret", "/vonageApplicationPrivateKey"],
        Some("vapi") => &[
            "/authentication/username",
            "/authentication/password",
            "/webhookSigningSecret",
        ],
        Some("telnyx") => &["/telnyxApiToken"],
        Some("byo-phone-number") => &["/someNewApiKey", "/carrierPassword"],
        _ => &[],
    }
}

/// Provider-specific non-secret JSON pointers (in addition to [`KEPT_POINTERS`]).
pub fn provider_kept_pointers(provider: &str) -> &'static [&'static str] {
    match canonical_provider(provider) {
        Some("twilio") => &[
            "/twilioAccountSid",
            "/credentialId",
            "/smsEnabled",
            "/stripeSubscriptionId",
            "/stripeSubscriptionStatus",
        ],
        Some("vonage") => &["/credentialId"],
        Some("vapi") => &["/sipUri", "/authentication/realm", "/numberDesiredAreaCode"],
        Some("telnyx") => &["/credentialId"],
        Some("byo-phone-number") => &["/credentialId", "/numberE164CheckEnabled"],
        _ => &[],
    }
}

/// The provider's name as in [`FIXTURE_IDS`] (`byo` is an alias of `byo-phone-number`), or
/// `None` for a provider without a fixture.
pub(crate) fn canonical_provider(provider: &str) -> Option<&'static str> {
    let p = if provider == "byo" {
        "byo-phone-number"
    } else {
        provider
    };
    FIXTURE_IDS
        .iter()
        .find(|(name, _)| *name == p)
        .map(|(name, _)| *name)
}

fn parsed() -> &'static [(&'static str, Value)] {
    static FIXTURES: OnceLock<Vec<(&'static str, Value)>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        FIXTURE_SOURCES
            .iter()
            .map(|(provider, src)| {
                // The sources are compiled in and checked by the tests below: a parse failure
                // here is a broken checkout, not a runtime condition.
                let value: Value = serde_json::from_str(src)
                    .unwrap_or_else(|e| panic!("fixture {provider}.json is not valid JSON: {e}"));
                (*provider, value)
            })
            .collect()
    })
}

/// The fixture of that provider (see [`canonical_provider`]). Panics on another name.
pub(crate) fn fixture(provider: &str) -> Value {
    match try_fixture(provider) {
        Some(v) => v,
        None => panic!(
            "no fixture for provider {provider:?}; known: twilio, vonage, vapi, telnyx, byo-phone-number"
        ),
    }
}

pub(crate) fn try_fixture(provider: &str) -> Option<Value> {
    let provider = canonical_provider(provider)?;
    parsed()
        .iter()
        .find(|(p, _)| *p == provider)
        .map(|(_, v)| v.clone())
}

/// The fixture with that id (case-insensitive).
pub(crate) fn fixture_by_id(id: &str) -> Option<Value> {
    parsed()
        .iter()
        .find(|(_, v)| id_matches(v, id))
        .map(|(_, v)| v.clone())
}

/// The fixture `/phone-number/{id}` names, if any.
pub(crate) fn fixture_for_path(path: &str) -> Option<Value> {
    fixture_by_id(path.strip_prefix("/phone-number/")?)
}

/// All five fixtures, in [`FIXTURE_IDS`] order.
pub(crate) fn all() -> Vec<Value> {
    parsed().iter().map(|(_, v)| v.clone()).collect()
}

/// Whether `obj` has that id (compared case-insensitively, like the real API).
pub(crate) fn id_matches(obj: &Value, id: &str) -> bool {
    obj.get("id")
        .and_then(Value::as_str)
        .is_some_and(|own| own.eq_ignore_ascii_case(id))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::MockVapi;

    fn json_at<'a>(v: &'a Value, pointer: &str) -> &'a Value {
        v.pointer(pointer)
            .unwrap_or_else(|| panic!("missing {pointer}"))
    }

    /// Every string leaf of a JSON value, with its pointer.
    fn string_leaves(v: &Value, path: String, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                for (k, x) in map {
                    let k = k.replace('~', "~0").replace('/', "~1");
                    string_leaves(x, format!("{path}/{k}"), out);
                }
            }
            Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    string_leaves(x, format!("{path}/{i}"), out);
                }
            }
            Value::String(s) => out.push((path, s.clone())),
            _ => {}
        }
    }

    #[test]
    fn fixtures_plant_secrets_exactly_where_expected() {
        assert_eq!(MockVapi::ids().len(), 5);
        let mut seen_ids = std::collections::HashSet::new();
        for &(provider, id) in MockVapi::ids() {
            let fx = MockVapi::fixture(provider);
            assert_eq!(fx["provider"], provider);
            assert_eq!(fx["id"], id);
            assert!(seen_ids.insert(id.to_owned()), "duplicate id {id}");
            let parsed = uuid::Uuid::parse_str(id).expect("uuid");
            assert_eq!(parsed.get_version_num(), 4, "{id} is not a v4 uuid");
            assert_eq!(
                MockVapi::fixture_by_id(&id.to_uppercase()),
                Some(fx.clone())
            );

            // Every secret location carries the marker.
            let secret_pointers: Vec<&str> = SECRET_POINTERS
                .iter()
                .chain(provider_secret_pointers(provider))
                .copied()
                .collect();
            for &p in secret_pointers.iter().chain(SECRET_URL_POINTERS) {
                let v = json_at(&fx, p)
                    .as_str()
                    .unwrap_or_else(|| panic!("{provider}{p} not a string"));
                assert!(
                    v.contains(PLANTED),
                    "{provider}{p} = {v:?} lacks the marker"
                );
            }
            // Every kept location does not.
            for &p in KEPT_POINTERS.iter().chain(provider_kept_pointers(provider)) {
                let v = json_at(&fx, p);
                assert!(
                    !v.to_string().contains(PLANTED),
                    "{provider}{p} = {v} has the marker"
                );
            }
            // And the lists are complete: no other string carries the marker.
            let mut leaves = Vec::new();
            string_leaves(&fx, String::new(), &mut leaves);
            for (p, v) in &leaves {
                if v.contains(PLANTED) {
                    assert!(
                        secret_pointers.contains(&p.as_str())
                            || SECRET_URL_POINTERS.contains(&p.as_str()),
                        "{provider}{p} = {v:?} has the marker but is not listed as a secret"
                    );
                }
            }
            // No key carries the marker either.
            for (p, _) in &leaves {
                assert!(!p.contains(PLANTED));
            }

            // The secret URLs keep a marker-free scheme://host/path.
            for &p in SECRET_URL_POINTERS {
                let url = json_at(&fx, p).as_str().unwrap_or_default();
                let uri: http::Uri = url.parse().unwrap_or_else(|e| panic!("{p}: {e}"));
                assert_eq!(uri.scheme_str(), Some("https"), "{p}");
                assert!(!uri.host().unwrap_or_default().contains(PLANTED), "{p}");
                assert!(!uri.path().contains(PLANTED), "{p}");
            }
        }

        // Specific shapes the proxy must handle.
        let twilio = MockVapi::fixture("twilio");
        assert!(
            twilio["twilioAccountSid"]
                .as_str()
                .unwrap()
                .starts_with("AC")
        );
        assert!(twilio["hooks"][0]["do"].is_array());
        assert!(twilio["hooks"][1]["do"].is_object());
        assert_eq!(twilio["isServerUrlSecretSet"], json!(true));
        assert_eq!(
            twilio["hooks"][0]["do"][1]["exact"],
            "Premium-rate callers are not supported."
        );
        let hold = twilio["fallbackDestination"]["transferPlan"]["holdAudioUrl"]
            .as_str()
            .unwrap();
        assert!(hold.contains("X-Amz-Signature=PLANTED"));
        assert!(hold.contains("X-Amz-Credential=PLANTED"));
        let done = twilio["fallbackDestination"]["transferPlan"]["transferCompleteAudioUrl"]
            .as_str()
            .unwrap();
        assert!(done.contains("sig=PLANTED"));
        assert!(
            twilio["server"]["url"]
                .as_str()
                .unwrap()
                .contains("?token=PLANTED")
        );
        assert!(
            twilio["serverUrl"]
                .as_str()
                .unwrap()
                .contains("?token=PLANTED")
        );
        assert!(
            twilio["statusWebhookUrl"]
                .as_str()
                .unwrap()
                .contains(":PLANTED-twilio-userinfo-password@hooks.example.com/")
        );
        let vapi = MockVapi::fixture("vapi");
        assert!(
            vapi["server"]["url"]
                .as_str()
                .unwrap()
                .contains(":PLANTED-")
        );
        assert_eq!(vapi["sipUri"], "sip:demo-line-4821@sip.vapi.ai");
        assert_eq!(
            MockVapi::fixture("byo"),
            MockVapi::fixture("byo-phone-number")
        );
        assert!(MockVapi::try_fixture("plivo").is_none());
        assert!(
            twilio["webhookPrivateKey"]
                .as_str()
                .unwrap()
                .contains(PLANTED)
        );
        assert!(
            MockVapi::fixture("vonage")["vonageApiSecret"]
                .as_str()
                .unwrap()
                .contains(PLANTED)
        );
        assert!(
            MockVapi::fixture("telnyx")["telnyxApiToken"]
                .as_str()
                .unwrap()
                .contains(PLANTED)
        );
        assert!(
            MockVapi::fixture("byo")["someNewApiKey"]
                .as_str()
                .unwrap()
                .contains(PLANTED)
        );
    }

    #[test]
    fn fixture_lookups() {
        assert_eq!(
            fixture_for_path(&format!("/phone-number/{VAPI_ID}")),
            Some(fixture("vapi"))
        );
        assert_eq!(
            fixture_for_path(&format!("/v2/phone-number/{VAPI_ID}")),
            None
        );
        assert_eq!(fixture_for_path("/phone-number/nope"), None);
        assert_eq!(canonical_provider("byo"), Some("byo-phone-number"));
        assert_eq!(canonical_provider("plivo"), None);
        assert!(provider_secret_pointers("plivo").is_empty());
        assert_eq!(all().len(), FIXTURE_IDS.len());
        assert!(serde_json::from_slice::<Value>(GARBAGE_BODY).is_err());
    }
}
