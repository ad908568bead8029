//! Who a client is and what it may touch.
//!
//! - [`Identity`]: a client's subject and [`Grants`], set on its socket by a connect middleware
//!   ([`Socket::set_identity`]); [`JwtVerifier`] makes one from a JSON Web Token.
//! - [`Access`]: an operation a client asks for (join a room, relay to it, publish to a stream,
//!   subscribe with a consumer). The server asks its authorizer ([`crate::Io::set_authorizer`])
//!   before each one; the default, [`check_grants`], holds a socket with an identity to its
//!   grants and lets a socket without one do anything.
//! - [`Pattern`]: names as NATS subjects: tokens split on `.`, `*` matches one token, `>` the
//!   rest (one token or more).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::Socket;

/// A name pattern in NATS subject syntax: `parcel.*` matches `parcel.7` but neither `parcel`
/// nor `parcel.7.x`; `notices.>` matches `notices.a` and `notices.a.b`; `>` matches anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(Vec<Token>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    One,
    Rest,
}

impl Pattern {
    /// Parses `text`; `>` is only allowed as the last token, and no token may be empty.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        Self::parse_with(text, None)
    }

    /// Parses `text`, replacing `{sub}` with `sub` as literal text: a subject of `*` or `a.b`
    /// matches only itself, never widens the pattern.
    pub fn parse_with(text: &str, sub: Option<&str>) -> Result<Pattern, String> {
        let mut tokens = Vec::new();
        let parts: Vec<&str> = text.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            match *part {
                "" => return Err(format!("{text:?}: empty token")),
                "*" => tokens.push(Token::One),
                ">" if i + 1 == parts.len() => tokens.push(Token::Rest),
                ">" => return Err(format!("{text:?}: `>` must be the last token")),
                p if p.contains("{sub}") => {
                    let Some(sub) = sub else {
                        return Err(format!("{text:?}: {{sub}} outside [auth.default]"));
                    };
                    if sub.is_empty() {
                        return Err("{sub} with an empty subject".into());
                    }
                    // The subject's own dots make more literal tokens.
                    let filled = p.replace("{sub}", sub);
                    tokens.extend(filled.split('.').map(|t| Token::Literal(t.to_owned())));
                }
                p => tokens.push(Token::Literal(p.to_owned())),
            }
        }
        Ok(Pattern(tokens))
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let mut parts = name.split('.');
        for token in &self.0 {
            match (token, parts.next()) {
                (Token::Rest, Some(_)) => return true,
                (Token::One, Some(_)) => {}
                (Token::Literal(l), Some(p)) if l == p => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

/// What the HTTP API lets a bearer do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Emit to clients and disconnect them.
    Emit,
    /// Publish to streams.
    Publish,
    /// Every GET.
    Read,
    /// Create and change streams, purge them, delete consumers.
    Manage,
}

impl Scope {
    /// The scope's name, as tokens list it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Emit => "emit",
            Scope::Publish => "publish",
            Scope::Read => "read",
            Scope::Manage => "manage",
        }
    }
}

/// What an identity may touch, as patterns per kind of operation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grants {
    /// Rooms it may join (and relay its events to).
    pub rooms: Vec<Pattern>,
    /// Streams it may publish to.
    pub publish: Vec<Pattern>,
    /// Streams it may subscribe to.
    pub subscribe: Vec<Pattern>,
    /// Consumer names it may use; `None`: only its own subject.
    pub consumers: Option<Vec<Pattern>>,
    /// Scopes on the HTTP API.
    pub api: Vec<Scope>,
}

/// Grants as written in a token's `courier` claim or in configuration: pattern strings, where
/// configuration may use `{sub}` for the token's subject.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrantSpec {
    /// Patterns of rooms.
    pub rooms: Vec<String>,
    /// Patterns of streams to publish to.
    pub publish: Vec<String>,
    /// Patterns of streams to subscribe to.
    pub subscribe: Vec<String>,
    /// Patterns of consumer names; absent: only the subject's own name.
    pub consumers: Option<Vec<String>>,
    /// API scopes: `emit`, `publish`, `read`, `manage`.
    pub api: Vec<Scope>,
}

impl GrantSpec {
    /// The grants for subject `sub` (what `{sub}` becomes, when given).
    pub fn compile(&self, sub: Option<&str>) -> Result<Grants, String> {
        let all = |v: &[String]| -> Result<Vec<Pattern>, String> {
            v.iter().map(|p| Pattern::parse_with(p, sub)).collect()
        };
        Ok(Grants {
            rooms: all(&self.rooms)?,
            publish: all(&self.publish)?,
            subscribe: all(&self.subscribe)?,
            consumers: self.consumers.as_deref().map(all).transpose()?,
            api: self.api.clone(),
        })
    }
}

/// Who a client is: the token's subject, what it may touch, and until when.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The subject (`sub` claim).
    pub sub: String,
    /// What it may touch.
    pub grants: Grants,
    /// When its token expires; the server closes the connection then (see
    /// [`Socket::set_identity`]).
    pub expires: Option<SystemTime>,
    /// Every claim of the token, for handlers that need more than the subject.
    pub claims: Value,
}

/// An operation a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<'a> {
    /// Join a room (`courier:join`, or a room restored by recovery).
    Join(&'a str),
    /// Send an event to a room's other members (relay of client events).
    Relay(&'a str),
    /// Publish to a stream (creating it if it does not exist).
    Publish(&'a str),
    /// Subscribe to a stream through a consumer (creating either if it does not exist).
    Subscribe {
        /// The stream.
        stream: &'a str,
        /// The consumer's name.
        consumer: &'a str,
    },
}

impl Access<'_> {
    /// Whether `id` may do this.
    pub fn allowed_for(&self, id: &Identity) -> bool {
        let any = |ps: &[Pattern], name: &str| ps.iter().any(|p| p.matches(name));
        let g = &id.grants;
        match *self {
            Access::Join(room) | Access::Relay(room) => any(&g.rooms, room),
            Access::Publish(stream) => any(&g.publish, stream),
            Access::Subscribe { stream, consumer } => {
                any(&g.subscribe, stream)
                    && match &g.consumers {
                        Some(ps) => any(ps, consumer),
                        None => consumer == id.sub,
                    }
            }
        }
    }

    /// What a refusal says.
    pub fn denied(&self) -> String {
        match *self {
            Access::Join(room) => format!("not allowed to join room {room:?}"),
            Access::Relay(room) => format!("not allowed to send to room {room:?}"),
            Access::Publish(stream) => format!("not allowed to publish to stream {stream:?}"),
            Access::Subscribe { stream, consumer } => {
                format!("not allowed to subscribe to stream {stream:?} as consumer {consumer:?}")
            }
        }
    }
}

/// The default authorizer: a socket with an identity may do what its grants say; a socket
/// without one (no authentication, or a static token) may do anything.
pub fn check_grants(socket: &Socket, access: &Access<'_>) -> Result<(), String> {
    match socket.identity() {
        Some(id) if !access.allowed_for(&id) => Err(access.denied()),
        _ => Ok(()),
    }
}

/// Why a token was refused; [`TokenError::code`] is what the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was given.
    #[error("no token given")]
    Missing,
    /// Its `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// Anything else: bad signature, wrong algorithm, issuer or audience, not yet valid.
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl TokenError {
    /// `missing_token`, `expired_token` or `invalid_token`.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing_token",
            TokenError::Expired => "expired_token",
            TokenError::Invalid(_) => "invalid_token",
        }
    }
}

/// Where [`JwtVerifier`] finds its keys and what it checks besides the signature.
#[derive(Debug, Clone, Default)]
pub struct JwtOptions {
    /// HMAC secret (HS256, HS384, HS512).
    pub secret: Option<Vec<u8>>,
    /// A PEM public key (RSA for RS*/PS*, EC for ES*, Ed25519 for EdDSA).
    pub public_key_pem: Option<Vec<u8>>,
    /// A JWKS document; a token's `kid` picks its key.
    pub jwks_json: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (JWT times are whole seconds).
    pub leeway: Duration,
    /// Grants of a token without a `courier` claim (`{sub}` stands for its subject).
    pub default_grants: GrantSpec,
}

/// One key and the algorithms it may verify: a key of one family never verifies a token that
/// names another (no HS256 token checked against an RSA public key used as a secret).
struct Key {
    key: DecodingKey,
    validation: Validation,
}

/// Verifies JSON Web Tokens and makes [`Identity`]s from them.
pub struct JwtVerifier {
    hmac: Option<Key>,
    public: Option<Key>,
    by_kid: HashMap<String, Key>,
    leeway: Duration,
    defaults: GrantSpec,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hmac", &self.hmac.is_some())
            .field("public", &self.public.is_some())
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl JwtVerifier {
    /// A verifier for `options`; an error names the key that cannot be used.
    pub fn new(options: JwtOptions) -> Result<JwtVerifier, String> {
        let validation = |algorithms: &[Algorithm]| {
            let mut v = Validation::new(algorithms[0]);
            v.algorithms = algorithms.to_vec();
            v.validate_nbf = true;
            v.leeway = options.leeway.as_secs() + u64::from(options.leeway.subsec_nanos() > 0);
            v.required_spec_claims = ["sub".to_owned()].into();
            if let Some(iss) = &options.issuer {
                v.set_issuer(&[iss]);
                v.required_spec_claims.insert("iss".into());
            }
            match &options.audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    v.required_spec_claims.insert("aud".into());
                }
                None => v.validate_aud = false,
            }
            v
        };
        let hmac = match &options.secret {
            Some(s) if s.is_empty() => return Err("the JWT secret is empty".into()),
            Some(s) => Some(Key {
                key: DecodingKey::from_secret(s).map_err(|e| format!("JWT secret: {e}"))?,
                validation: validation(AlgorithmFamily::Hmac.algorithms()),
            }),
            None => None,
        };
        let public = match &options.public_key_pem {
            Some(pem) => Some(public_key(pem, validation)?),
            None => None,
        };
        let mut by_kid = HashMap::new();
        if let Some(json) = &options.jwks_json {
            let set: JwkSet = serde_json::from_str(json).map_err(|e| format!("JWKS: {e}"))?;
            for jwk in &set.keys {
                let Some(kid) = &jwk.common.key_id else {
                    return Err("JWKS: a key without a `kid`".into());
                };
                let family = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
                    AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
                    AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
                    // A shared secret does not belong in a published key set.
                    AlgorithmParameters::OctetKey(_) => {
                        return Err(format!("JWKS key {kid:?}: symmetric keys are not accepted"));
                    }
                    _ => return Err(format!("JWKS key {kid:?}: unsupported key type")),
                };
                let key =
                    DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key {kid:?}: {e}"))?;
                let algorithms = match jwk.common.key_algorithm.and_then(key_algorithm) {
                    Some(a) => vec![a],
                    None => family.algorithms().to_vec(),
                };
                let validation = validation(&algorithms);
                by_kid.insert(kid.clone(), Key { key, validation });
            }
        }
        if hmac.is_none() && public.is_none() && by_kid.is_empty() {
            return Err("no JWT key configured".into());
        }
        Ok(JwtVerifier {
            hmac,
            public,
            by_kid,
            leeway: options.leeway,
            defaults: options.default_grants,
        })
    }

    /// Checks `token` and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let invalid = |why: &str| TokenError::Invalid(why.to_owned());
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| map_error(&e))?;
        let key = match &header.kid {
            Some(kid) if !self.by_kid.is_empty() => self
                .by_kid
                .get(kid)
                .ok_or_else(|| invalid("unknown key id"))?,
            _ => match header.alg.family() {
                AlgorithmFamily::Hmac => self.hmac.as_ref(),
                _ => self.public.as_ref(),
            }
            .ok_or_else(|| invalid("algorithm not accepted"))?,
        };
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &key.validation)
            .map_err(|e| map_error(&e))?;
        let claims = data.claims;
        let sub = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(invalid("`sub` must be a non-empty string")),
        };
        let grants = match claims.get("courier") {
            Some(c) => GrantSpec::deserialize(c)
                .map_err(|e| TokenError::Invalid(format!("`courier` claim: {e}")))?
                .compile(None),
            None => self.defaults.compile(Some(&sub)),
        }
        .map_err(TokenError::Invalid)?;
        let expires = claims
            .get("exp")
            .and_then(Value::as_u64)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s) + self.leeway);
        Ok(Identity {
            sub,
            grants,
            expires,
            claims,
        })
    }
}

fn public_key(pem: &[u8], validation: impl Fn(&[Algorithm]) -> Validation) -> Result<Key, String> {
    let text = String::from_utf8_lossy(pem);
    // Tried in turn: the PEM's label does not always say which kind of key it holds.
    type Parse = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
    let tries: [(AlgorithmFamily, Parse); 3] = [
        (AlgorithmFamily::Rsa, DecodingKey::from_rsa_pem),
        (AlgorithmFamily::Ec, DecodingKey::from_ec_pem),
        (AlgorithmFamily::Ed, DecodingKey::from_ed_pem),
    ];
    for (family, parse) in tries {
        if let Ok(key) = parse(text.as_bytes()) {
            let mut algorithms = family.algorithms().to_vec();
            if family == AlgorithmFamily::Rsa {
                algorithms.extend([Algorithm::PS256, Algorithm::PS384, Algorithm::PS512]);
                algorithms.dedup();
            }
            return Ok(Key {
                key,
                validation: validation(&algorithms),
            });
        }
    }
    Err("the JWT public key is not an RSA, EC or Ed25519 public key in PEM".into())
}

fn key_algorithm(a: jsonwebtoken::jwk::KeyAlgorithm) -> Option<Algorithm> {
    a.to_string().parse().ok()
}

fn map_error(e: &jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => TokenError::Expired,
        K::ImmatureSignature => TokenError::Invalid("not valid yet (nbf)".into()),
        K::InvalidSignature => TokenError::Invalid("bad signature".into()),
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
            TokenError::Invalid("algorithm not accepted".into())
        }
        K::InvalidIssuer => TokenError::Invalid("wrong issuer".into()),
        K::InvalidAudience => TokenError::Invalid("wrong audience".into()),
        K::MissingRequiredClaim(c) => TokenError::Invalid(format!("`{c}` claim missing")),
        _ => TokenError::Invalid("malformed token".into()),
    }
}

/// Seconds since the epoch, for tests and callers that mint tokens.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn patterns_match_as_nats_subjects() {
        assert!(p("parcel.*").matches("parcel.7"));
        assert!(!p("parcel.*").matches("parcel"));
        assert!(!p("parcel.*").matches("parcel.7.x"));
        assert!(p("notices.>").matches("notices.a"));
        assert!(p("notices.>").matches("notices.a.b"));
        assert!(!p("notices.>").matches("notices"));
        assert!(p(">").matches("anything.at.all"));
        assert!(p("orders.vendor-7").matches("orders.vendor-7"));
        assert!(!p("orders.vendor-7").matches("orders.vendor-70"));
        assert!(!p("a.*.c").matches("a.b.d"));
        assert!(Pattern::parse("a.>.c").is_err());
        assert!(Pattern::parse("a..c").is_err());
    }

    #[test]
    fn a_subject_in_a_template_is_literal() {
        let t = |sub: &str| Pattern::parse_with("user.{sub}", Some(sub)).unwrap();
        assert!(t("7").matches("user.7"));
        assert!(!t("*").matches("user.8"));
        assert!(t("*").matches("user.*"));
        assert!(!t(">").matches("user.x.y"));
        assert!(t("a.b").matches("user.a.b"));
        assert!(!t("a.b").matches("user.a"));
        assert!(Pattern::parse("user.{sub}").is_err());
    }

    #[test]
    fn consumers_default_to_the_subject() {
        let id = |consumers: Option<Vec<String>>| Identity {
            sub: "v7".into(),
            grants: GrantSpec {
                subscribe: vec!["orders.>".into()],
                consumers,
                ..GrantSpec::default()
            }
            .compile(None)
            .unwrap(),
            expires: None,
            claims: Value::Null,
        };
        let sub = |c| Access::Subscribe {
            stream: "orders.v7",
            consumer: c,
        };
        assert!(sub("v7").allowed_for(&id(None)));
        assert!(!sub("v8").allowed_for(&id(None)));
        assert!(sub("v8").allowed_for(&id(Some(vec!["v*".into(), "v8".into()]))));
        assert!(
            !Access::Subscribe {
                stream: "notices",
                consumer: "v7"
            }
            .allowed_for(&id(None))
        );
        assert!(!Access::Publish("orders.v7").allowed_for(&id(None)));
    }

    fn verifier(secret: &str, issuer: Option<&str>, audience: Option<&str>) -> JwtVerifier {
        JwtVerifier::new(JwtOptions {
            secret: Some(secret.as_bytes().to_vec()),
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            leeway: Duration::from_secs(2),
            default_grants: GrantSpec {
                rooms: vec!["user.{sub}".into()],
                ..GrantSpec::default()
            },
            ..JwtOptions::default()
        })
        .unwrap()
    }

    fn hs(alg: Algorithm, secret: &str, claims: Value) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn hmac_tokens_are_checked() {
        let v = verifier("s3cret", Some("courier-tests"), Some("hub"));
        let now = unix_now();
        let good = json!({"sub": "a", "exp": now + 60, "iss": "courier-tests", "aud": "hub"});
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let id = v.verify(&hs(alg, "s3cret", good.clone())).unwrap();
            assert_eq!(id.sub, "a");
            assert!(Access::Join("user.a").allowed_for(&id));
            assert!(!Access::Join("user.b").allowed_for(&id));
        }
        let with = |k: &str, val: Value| {
            let mut c = good.clone();
            c[k] = val;
            v.verify(&hs(Algorithm::HS256, "s3cret", c))
        };
        assert_eq!(
            with("exp", json!(now - 60)).unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(
            with("nbf", json!(now + 60)).unwrap_err().code(),
            "invalid_token"
        );
        assert_eq!(
            with("iss", json!("other")).unwrap_err().code(),
            "invalid_token"
        );
        assert_eq!(
            with("aud", json!("other")).unwrap_err().code(),
            "invalid_token"
        );
        assert_eq!(with("sub", json!("")).unwrap_err().code(), "invalid_token");
        // Within the leeway.
        assert!(with("exp", json!(now - 1)).is_ok());
        let wrong_key = v.verify(&hs(Algorithm::HS256, "other", good.clone()));
        assert_eq!(wrong_key.unwrap_err().code(), "invalid_token");
        assert_eq!(v.verify("").unwrap_err(), TokenError::Missing);
        assert_eq!(v.verify("not.a.jwt").unwrap_err().code(), "invalid_token");
    }

    #[test]
    fn alg_none_is_refused() {
        let v = verifier("s3cret", None, None);
        use base64::Engine as _;
        let b64 = |v: Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let token = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": "a", "exp": unix_now() + 60}))
        );
        assert_eq!(v.verify(&token).unwrap_err().code(), "invalid_token");
    }

    #[test]
    fn the_courier_claim_replaces_the_defaults() {
        let v = verifier("k", None, None);
        let token = hs(
            Algorithm::HS256,
            "k",
            json!({"sub": "vendor-7", "exp": unix_now() + 60,
                   "courier": {"rooms": ["parcel.*"], "publish": ["orders.vendor-7"], "api": ["read"]}}),
        );
        let id = v.verify(&token).unwrap();
        assert!(Access::Join("parcel.9").allowed_for(&id));
        assert!(!Access::Join("user.vendor-7").allowed_for(&id));
        assert!(Access::Publish("orders.vendor-7").allowed_for(&id));
        assert_eq!(id.grants.api, vec![Scope::Read]);
        let bad = hs(
            Algorithm::HS256,
            "k",
            json!({"sub": "x", "exp": unix_now() + 60, "courier": {"rooms": "all"}}),
        );
        assert_eq!(v.verify(&bad).unwrap_err().code(), "invalid_token");
    }
}
