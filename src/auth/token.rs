//! Verifying and classifying a JWT, without the database.
//!
//! audiobookshelf signs with HS256 and verifies HS256, HS384 and HS512 over the UTF-8 bytes of its
//! secret. The `type` claim says what a token is: `api` is an API key and nothing else, `refresh`
//! never authenticates a socket, anything else with a `userId` is a user token (access or legacy).
//! `exp` and `nbf` are judged here with no leeway, as node's `jsonwebtoken` does; an API key's `exp`
//! is only reported, because its expiry must also deactivate the key's row (see [`super`]).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

const ACCEPTED: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// What a verified token says it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Verified {
    /// An access or legacy token naming a user by `users.id` or `extraData.oldUserId`.
    User {
        user_id: String,
        /// `exp` in seconds since the epoch; legacy tokens have none.
        exp: Option<f64>,
    },
    /// An API key naming its `apiKeys` row.
    ApiKey { key_id: String, exp: Option<f64> },
}

/// Why a token was refused before the database was asked. Each of these is `"Invalid token"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a JWT signed with HS256, HS384 or HS512 by this server")]
    Signature,
    #[error("claims are not a JSON object")]
    NotAnObject,
    #[error("a time claim is not a number")]
    BadTimeClaim,
    #[error("token expired")]
    Expired,
    #[error("token not active yet")]
    NotYetValid,
    #[error("refresh tokens do not authenticate sockets")]
    Refresh,
    #[error("an API key without a keyId")]
    NoKeyId,
    #[error("no userId")]
    NoUserId,
}

/// The HMAC secret, as bytes of the secret string (audiobookshelf does not base64-decode it).
#[derive(Clone)]
pub struct Secret {
    decoding: DecodingKey,
    encoding: EncodingKey,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// An empty secret would accept tokens anyone can sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the JWT secret must not be empty")]
pub struct EmptySecret;

impl Secret {
    pub fn new(secret: &str) -> Result<Self, EmptySecret> {
        Ok(Self {
            decoding: DecodingKey::from_secret(secret.as_bytes()).map_err(|_| EmptySecret)?,
            encoding: EncodingKey::from_secret(secret.as_bytes()).map_err(|_| EmptySecret)?,
        })
    }

    /// Signs `claims` with HS256, as audiobookshelf does.
    pub fn sign(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HMAC signing of a JSON value cannot fail")
    }

    /// Checks the signature and the time claims and says what the token is. `now` is in seconds.
    pub fn verify(&self, token: &str, now: f64) -> Result<Verified, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Signature)?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(TokenError::Signature);
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = ACCEPTED.to_vec();
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Value>(token, &self.decoding, &validation)
            .map_err(|_| TokenError::Signature)?;
        let Value::Object(claims) = data.claims else {
            return Err(TokenError::NotAnObject);
        };
        classify(&claims, now)
    }
}

fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(TokenError::BadTimeClaim),
    }
}

/// Classification of verified claims, by the `type` claim first.
pub fn classify(claims: &Map<String, Value>, now: f64) -> Result<Verified, TokenError> {
    let exp = time_claim(claims, "exp")?;
    let nbf = time_claim(claims, "nbf")?;
    time_claim(claims, "iat")?;
    if nbf.is_some_and(|nbf| nbf > now) {
        return Err(TokenError::NotYetValid);
    }
    match claims.get("type").and_then(Value::as_str) {
        Some("api") => {
            let key_id = claims
                .get("keyId")
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty())
                .ok_or(TokenError::NoKeyId)?;
            Ok(Verified::ApiKey {
                key_id: key_id.to_owned(),
                exp,
            })
        }
        Some("refresh") => Err(TokenError::Refresh),
        _ => {
            let user_id = claims
                .get("userId")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
                .ok_or(TokenError::NoUserId)?;
            if exp.is_some_and(|exp| now >= exp) {
                return Err(TokenError::Expired);
            }
            Ok(Verified::User {
                user_id: user_id.to_owned(),
                exp,
            })
        }
    }
}

/// Whether an `exp` (seconds) has passed at `now` (seconds): node's `jsonwebtoken` rule.
pub fn expired(exp: Option<f64>, now: f64) -> bool {
    exp.is_some_and(|exp| now >= exp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::json;

    const NOW: f64 = 1_800_000_000.0;

    fn secret() -> Secret {
        Secret::new("test-secret-for-abs-socket").unwrap()
    }

    fn b64(v: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    fn sign_with(alg: Algorithm, key: &[u8], claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_secret(key).unwrap(),
        )
        .unwrap()
    }

    /// HS256 by hand, for keys jsonwebtoken refuses to sign with (the empty key).
    fn hs256_raw(key: &[u8], claims: &Value) -> String {
        use hmac::{Hmac, Mac};
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64(claims.to_string().as_bytes())
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(&mac.finalize().into_bytes()))
    }

    #[test]
    fn legacy_token_never_expires() {
        let t = secret().sign(&json!({"userId": "u1", "username": "tom", "iat": 1}));
        assert_eq!(
            secret().verify(&t, NOW),
            Ok(Verified::User {
                user_id: "u1".into(),
                exp: None
            })
        );
    }

    #[test]
    fn access_token_until_exp_and_not_at_exp() {
        let claims = json!({"userId": "u1", "username": "tom", "jti": "j", "type": "access", "iat": NOW - 10.0, "exp": NOW + 1.0});
        let t = secret().sign(&claims);
        assert!(matches!(
            secret().verify(&t, NOW),
            Ok(Verified::User { .. })
        ));
        assert_eq!(secret().verify(&t, NOW + 1.0), Err(TokenError::Expired));
        assert_eq!(secret().verify(&t, NOW + 30.0), Err(TokenError::Expired));
    }

    #[test]
    fn a_future_nbf_is_refused_without_leeway() {
        let t = secret().sign(&json!({"userId": "u1", "nbf": NOW + 1.0}));
        assert_eq!(secret().verify(&t, NOW), Err(TokenError::NotYetValid));
        assert!(secret().verify(&t, NOW + 1.0).is_ok());
    }

    #[test]
    fn refresh_tokens_are_refused() {
        let t = secret().sign(&json!({"userId": "u1", "type": "refresh", "exp": NOW + 100.0}));
        assert_eq!(secret().verify(&t, NOW), Err(TokenError::Refresh));
    }

    #[test]
    fn api_keys_are_classified_by_type_and_userid_is_ignored() {
        let t = secret()
            .sign(&json!({"keyId": "k1", "name": "n", "type": "api", "userId": "u1", "iat": 1}));
        assert_eq!(
            secret().verify(&t, NOW),
            Ok(Verified::ApiKey {
                key_id: "k1".into(),
                exp: None
            })
        );
        // An expired API key is still classified; its expiry is judged with its row.
        let t = secret().sign(&json!({"keyId": "k1", "type": "api", "exp": NOW - 1.0}));
        assert_eq!(
            secret().verify(&t, NOW),
            Ok(Verified::ApiKey {
                key_id: "k1".into(),
                exp: Some(NOW - 1.0)
            })
        );
        let t = secret().sign(&json!({"type": "api", "userId": "u1"}));
        assert_eq!(secret().verify(&t, NOW), Err(TokenError::NoKeyId));
    }

    #[test]
    fn unknown_types_with_a_user_id_are_user_tokens() {
        let t = secret().sign(&json!({"userId": "u1", "type": "something"}));
        assert!(matches!(
            secret().verify(&t, NOW),
            Ok(Verified::User { .. })
        ));
        let t = secret().sign(&json!({"username": "tom"}));
        assert_eq!(secret().verify(&t, NOW), Err(TokenError::NoUserId));
        let t = secret().sign(&json!({"userId": 42}));
        assert_eq!(secret().verify(&t, NOW), Err(TokenError::NoUserId));
    }

    #[test]
    fn hs384_and_hs512_verify() {
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let t = sign_with(alg, b"test-secret-for-abs-socket", &json!({"userId": "u1"}));
            assert!(secret().verify(&t, NOW).is_ok(), "{alg:?}");
        }
    }

    #[test]
    fn wrong_key_and_empty_key_are_refused() {
        let t = sign_with(Algorithm::HS256, b"other", &json!({"userId": "u1"}));
        assert_eq!(secret().verify(&t, NOW), Err(TokenError::Signature));
        let t = hs256_raw(b"", &json!({"userId": "u1"}));
        assert_eq!(secret().verify(&t, NOW), Err(TokenError::Signature));
        // The hand-made signer is right: with the real key it verifies.
        let t = hs256_raw(b"test-secret-for-abs-socket", &json!({"userId": "u1"}));
        assert!(secret().verify(&t, NOW).is_ok());
        assert_eq!(Secret::new("").unwrap_err(), EmptySecret);
    }

    #[test]
    fn alg_none_is_refused() {
        let t = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(br#"{"userId":"u1"}"#)
        );
        assert_eq!(secret().verify(&t, NOW), Err(TokenError::Signature));
        // ...also with a signature glued on.
        let t2 = format!("{t}c2ln");
        assert_eq!(secret().verify(&t2, NOW), Err(TokenError::Signature));
    }

    #[test]
    fn asymmetric_algorithms_are_refused_even_with_an_hmac_signature() {
        // The classic confusion attack: header says RS256, body signed with HMAC over the secret.
        let header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
        let body = b64(br#"{"userId":"u1"}"#);
        let good = secret().sign(&json!({"userId": "u1"}));
        let sig = good.rsplit('.').next().unwrap();
        let t = format!("{header}.{body}.{sig}");
        assert_eq!(secret().verify(&t, NOW), Err(TokenError::Signature));
        for alg in ["ES256", "PS256", "EdDSA", "HS1", ""] {
            let h = b64(format!(r#"{{"alg":"{alg}"}}"#).as_bytes());
            assert_eq!(
                secret().verify(&format!("{h}.{body}.{sig}"), NOW),
                Err(TokenError::Signature)
            );
        }
    }

    #[test]
    fn malformed_strings_are_refused() {
        let good = secret().sign(&json!({"userId": "u1"}));
        for bad in [
            "".to_owned(),
            "42".into(),
            "a.b.c".into(),
            format!("Bearer {good}"),
            format!("{good} "),
            format!(" {good}"),
            "x".repeat(900_000),
        ] {
            assert_eq!(
                secret().verify(&bad, NOW),
                Err(TokenError::Signature),
                "{:.40}",
                bad
            );
        }
    }

    #[test]
    fn non_object_claims_and_non_numeric_times_are_refused() {
        let t = secret().sign(&json!(["userId", "u1"]));
        assert!(secret().verify(&t, NOW).is_err());
        let t = secret().sign(&json!({"userId": "u1", "exp": "soon"}));
        assert!(secret().verify(&t, NOW).is_err());
        let t = secret().sign(&json!({"userId": "u1", "exp": 1e300}));
        assert!(
            secret().verify(&t, NOW).is_ok(),
            "a huge exp is merely far away"
        );
    }

    #[test]
    fn hostile_corpus() {
        let s = secret();
        // JSON nested a thousand deep, as claims and as a header.
        let deep = format!("{}1{}", "[".repeat(1000), "]".repeat(1000));
        let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        for t in [
            format!("{header}.{}.sig", b64(deep.as_bytes())),
            format!("{}.{}.sig", b64(deep.as_bytes()), b64(b"{}")),
            format!("{header}.{}.", b64(&[0xff, 0xfe, 0x00, 0x80])),
            "..".to_owned(),
            ".".repeat(10_000),
            "\u{0}".to_owned(),
        ] {
            assert!(s.verify(&t, NOW).is_err());
        }
        // Signed, but deep: still refused, never a stack overflow.
        let nested: Value =
            serde_json::from_str(&format!("{}1{}", "[".repeat(100), "]".repeat(100))).unwrap();
        let t = hs256_raw(b"test-secret-for-abs-socket", &nested);
        assert!(s.verify(&t, NOW).is_err());
        // A huge or negative exp, a huge nbf.
        for exp in [1e308, f64::MAX, -1e308] {
            let t = s.sign(&json!({"userId": "u1", "exp": exp}));
            let expect_ok = exp > NOW;
            assert_eq!(s.verify(&t, NOW).is_ok(), expect_ok, "exp {exp}");
        }
        let t = s.sign(&json!({"userId": "u1", "nbf": 1e308}));
        assert_eq!(s.verify(&t, NOW), Err(TokenError::NotYetValid));
        let t = s.sign(&json!({"userId": "u1", "exp": u64::MAX}));
        assert!(s.verify(&t, NOW).is_ok());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn claim_value() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                (-1e12f64..1e12).prop_map(Value::from),
                "[a-z0-9-]{0,12}".prop_map(Value::from),
                prop_oneof![Just("api"), Just("refresh"), Just("access"), Just("")]
                    .prop_map(Value::from),
            ]
        }

        fn claims() -> impl Strategy<Value = Map<String, Value>> {
            proptest::collection::btree_map(
                prop_oneof![
                    Just("type".to_owned()),
                    Just("userId".to_owned()),
                    Just("keyId".to_owned()),
                    Just("exp".to_owned()),
                    Just("nbf".to_owned()),
                    Just("iat".to_owned()),
                    "[a-z]{1,6}",
                ],
                claim_value(),
                0..7,
            )
            .prop_map(|m| m.into_iter().collect())
        }

        proptest! {
            /// Classification follows the `type` claim, whatever else the claims hold.
            #[test]
            fn classification_follows_type(claims in claims(), now in 0f64..4e9) {
                let result = classify(&claims, now);
                let kind = claims.get("type").and_then(Value::as_str);
                match &result {
                    Ok(Verified::ApiKey { key_id, .. }) => {
                        prop_assert_eq!(kind, Some("api"));
                        prop_assert_eq!(claims.get("keyId").and_then(Value::as_str), Some(key_id.as_str()));
                    }
                    Ok(Verified::User { user_id, exp }) => {
                        prop_assert!(kind != Some("api") && kind != Some("refresh"));
                        prop_assert_eq!(claims.get("userId").and_then(Value::as_str), Some(user_id.as_str()));
                        prop_assert!(!expired(*exp, now));
                    }
                    Err(_) => {}
                }
                if kind == Some("refresh") {
                    prop_assert!(result.is_err());
                }
                if claims.get("nbf").and_then(Value::as_f64).is_some_and(|nbf| nbf > now) {
                    prop_assert!(result.is_err());
                }
            }

            /// Signing and verifying agrees with classifying the claims directly.
            #[test]
            fn signed_tokens_verify_as_classified(claims in claims(), now in 0f64..4e9) {
                let s = secret();
                let t = s.sign(&Value::Object(claims.clone()));
                prop_assert_eq!(s.verify(&t, now), classify(&claims, now));
                // One flipped character anywhere in the signature is refused.
                let mut bad = t.clone().into_bytes();
                let last = bad.len() - 2;
                bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
                let bad = String::from_utf8(bad).unwrap();
                prop_assert_eq!(s.verify(&bad, now), Err(TokenError::Signature));
            }

            /// Arbitrary text never panics and never verifies.
            #[test]
            fn arbitrary_strings_are_refused(text in ".{0,400}") {
                prop_assert!(secret().verify(&text, NOW).is_err());
            }
        }
    }

    #[test]
    fn verifies_a_real_audiobookshelf_token() {
        let fixture = include_str!("../../../shared/fixtures/abs-2.36/tokens.json");
        let v: Value = serde_json::from_str(fixture).unwrap();
        let s = Secret::new(v["jwtSecret"].as_str().unwrap()).unwrap();
        let legacy = v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["label"] == "legacy_tom")
            .unwrap();
        assert_eq!(
            s.verify(legacy["jwt"].as_str().unwrap(), NOW),
            Ok(Verified::User {
                user_id: "ef4dcfa7-7916-4ed1-b628-3c5614cc1ffd".into(),
                exp: None
            })
        );
    }
}
