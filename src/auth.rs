//! Secrets: bearer tokens, the supporter pseudonyms, and the Ed25519 release-signing key.
//!
//! The only module that imports `ring`. Tokens are 256 random bits, shown once and stored only
//! as an HMAC under the server key, so a copy of the data directory without that key does not
//! let anyone test a guessed token. Pseudonyms are HMACs of a token id under a secret drawn for
//! each period and deleted with the period's raw data. Must not depend on storage or HTTP.

use std::fmt;

use data_encoding::{BASE64URL_NOPAD, HEXLOWER};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use thiserror::Error;

/// Length in bytes of every secret this module draws (256 bits).
pub const SECRET_LEN: usize = 32;

/// The prefix of generated tokens, so a leaked one is recognisable by secret scanners.
pub const TOKEN_PREFIX: &str = "tst_";

/// Shortest operator-chosen admin token accepted from `TELLESTREK_ADMIN_TOKEN`.
pub const MIN_CHOSEN_TOKEN_LEN: usize = 20;

/// Failures of the operating system's random generator or of key material.
#[derive(Debug, Error)]
pub enum AuthError {
    /// The system random generator failed (should not happen on a healthy machine).
    #[error("the system random generator failed")]
    Random,
    /// Stored key material could not be parsed.
    #[error("stored key material is invalid: {0}")]
    BadKey(&'static str),
}

/// Draws `SECRET_LEN` bytes from the operating system's secure generator.
pub fn random_secret() -> Result<[u8; SECRET_LEN], AuthError> {
    let mut buf = [0u8; SECRET_LEN];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| AuthError::Random)?;
    Ok(buf)
}

/// A random public identifier (64 bits, hex) for a token, used to list and revoke it.
pub fn random_id() -> Result<String, AuthError> {
    let mut buf = [0u8; 8];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| AuthError::Random)?;
    Ok(HEXLOWER.encode(&buf))
}

/// A bearer token in clear text: exists only in the response that shows it once, and in the
/// request that presents it. `Debug` prints nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A fresh token of 256 random bits.
    pub fn generate() -> Result<Token, AuthError> {
        Ok(Token(format!(
            "{TOKEN_PREFIX}{}",
            BASE64URL_NOPAD.encode(&random_secret()?)
        )))
    }

    /// Wraps a presented or operator-chosen token.
    pub fn from_presented(text: &str) -> Token {
        Token(text.to_string())
    }

    /// The clear text, to show once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The server's HMAC key for token hashes. Kept in the data directory; `Debug` prints nothing.
#[derive(Clone)]
pub struct ServerKey(hmac::Key);

impl ServerKey {
    /// The key of one period's pseudonyms: derived from the period's stored secret *and* this
    /// key, so that a copy of the data directory without the server key (kept in a key file)
    /// cannot link a supporter's counter to their token, and once the period's secret is
    /// deleted nobody can, with or without the key.
    pub fn period_secret(&self, stored: &[u8]) -> Result<PeriodSecret, AuthError> {
        if stored.len() != SECRET_LEN {
            return Err(AuthError::BadKey("period secret must be 32 bytes"));
        }
        let mut message = b"tellestrek period secret\0".to_vec();
        message.extend_from_slice(stored);
        let tag = hmac::sign(&self.0, &message);
        PeriodSecret::from_bytes(tag.as_ref())
    }

    /// A fingerprint of the key (an HMAC of a fixed label), stored in a data directory whose
    /// key is kept outside it, to tell the right key file from a wrong one. Reveals nothing of
    /// the key.
    pub fn fingerprint(&self) -> [u8; 32] {
        let tag = hmac::sign(&self.0, b"tellestrek server key fingerprint");
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Builds the key from its stored bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<ServerKey, AuthError> {
        if bytes.len() != SECRET_LEN {
            return Err(AuthError::BadKey("server key must be 32 bytes"));
        }
        Ok(ServerKey(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// The stored form of a token: HMAC-SHA256 under the server key. Tokens are looked up by
    /// this value; as the key is secret, lookup timing tells an attacker nothing about any
    /// stored token, and a stolen hash cannot be checked against guesses without the key.
    pub fn token_hash(&self, token: &Token) -> [u8; 32] {
        let tag = hmac::sign(&self.0, token.0.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

impl ServerKey {
    /// An 8-byte tag of `bytes` (HMAC-SHA256 under the server key, truncated, domain-separated
    /// from token hashes), so a value handed to clients, such as a page cursor, is known to
    /// come back unchanged. 64 bits: enough against guessing, as a forged cursor gains nothing
    /// beyond a position in a listing the caller may read anyway.
    pub fn short_tag(&self, bytes: &[u8]) -> [u8; 8] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(b"tellestrek cursor v1\0");
        ctx.update(bytes);
        let mut out = [0u8; 8];
        out.copy_from_slice(&ctx.sign().as_ref()[..8]);
        out
    }
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerKey(<redacted>)")
    }
}

/// The secret of one period, from which supporter pseudonyms are derived. Deleted with the
/// period's raw data, after which pseudonyms can no longer be linked to tokens.
pub struct PeriodSecret(hmac::Key);

impl PeriodSecret {
    /// Builds the secret from its stored bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<PeriodSecret, AuthError> {
        if bytes.len() != SECRET_LEN {
            return Err(AuthError::BadKey("period secret must be 32 bytes"));
        }
        Ok(PeriodSecret(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// The keyed pseudonym of the supporter holding token `token_id` in this period.
    pub fn pseudonym(&self, token_id: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.0, token_id.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

impl PeriodSecret {
    /// The keyed hash under which a supporter's idempotency key is kept in this period.
    pub fn idempotency(&self, token_id: &str, key: &str) -> [u8; 32] {
        let message = format!("idempotency\0{token_id}\0{key}");
        let tag = hmac::sign(&self.0, message.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

impl fmt::Debug for PeriodSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeriodSecret(<redacted>)")
    }
}

/// The Ed25519 key that signs releases and exports.
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// A new key pair, returned with its PKCS#8 document for storage.
    pub fn generate() -> Result<(SigningKey, Vec<u8>), AuthError> {
        let doc =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| AuthError::Random)?;
        let key = SigningKey::from_pkcs8(doc.as_ref())?;
        Ok((key, doc.as_ref().to_vec()))
    }

    /// Loads a stored PKCS#8 document.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<SigningKey, AuthError> {
        Ed25519KeyPair::from_pkcs8(bytes)
            .map(SigningKey)
            .map_err(|_| AuthError::BadKey("signing key is not an Ed25519 PKCS#8 document"))
    }

    /// The public key, base64url without padding.
    pub fn public_key(&self) -> String {
        BASE64URL_NOPAD.encode(self.0.public_key().as_ref())
    }

    /// Signs `message`; the signature is base64url without padding.
    pub fn sign(&self, message: &[u8]) -> String {
        BASE64URL_NOPAD.encode(self.0.sign(message).as_ref())
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public_key())
    }
}

/// The SHA-256 digest of `bytes` in lowercase hex: the checksums of a backup's manifest
/// (ring's digest, so the crate keeps one implementation of SHA-256).
pub fn sha256_hex(bytes: &[u8]) -> String {
    HEXLOWER.encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Checks an Ed25519 signature (both base64url) over `message`, offline.
pub fn verify_signature(public_key: &str, message: &[u8], signature: &str) -> bool {
    let (Ok(pk), Ok(sig)) = (
        BASE64URL_NOPAD.decode(public_key.trim().as_bytes()),
        BASE64URL_NOPAD.decode(signature.trim().as_bytes()),
    ) else {
        return false;
    };
    signature::UnparsedPublicKey::new(&signature::ED25519, pk)
        .verify(message, &sig)
        .is_ok()
}

/// Why a signature could not be checked or did not match; the first two are mistakes in what
/// was given (a truncated key, a file of another format), the last is a changed or foreign file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    /// The public key is not 32 bytes of base64url (no padding).
    #[error("the public key is not valid base64url Ed25519 (32 bytes, no padding)")]
    MalformedKey,
    /// The signature is not 64 bytes of base64url (no padding).
    #[error("the signature is not valid base64url Ed25519 (64 bytes, no padding)")]
    MalformedSignature,
    /// Well-formed, but not a signature of this message by this key.
    #[error(
        "the signature does not match: the file was changed after it was signed, or signed by another key"
    )]
    Mismatch,
}

/// Checks an Ed25519 signature (both base64url, no padding) over `message`, telling a
/// malformed key or signature from one that does not match.
pub fn check_signature(
    public_key: &str,
    message: &[u8],
    signature: &str,
) -> Result<(), SignatureError> {
    let pk = BASE64URL_NOPAD
        .decode(public_key.trim().as_bytes())
        .ok()
        .filter(|k| k.len() == signature::ED25519_PUBLIC_KEY_LEN)
        .ok_or(SignatureError::MalformedKey)?;
    let sig = BASE64URL_NOPAD
        .decode(signature.trim().as_bytes())
        .ok()
        .filter(|s| s.len() == 64)
        .ok_or(SignatureError::MalformedSignature)?;
    signature::UnparsedPublicKey::new(&signature::ED25519, pk)
        .verify(message, &sig)
        .map_err(|_| SignatureError::Mismatch)
}

/// Whether two secrets are equal, compared as SHA-256 digests so that the time taken says
/// nothing about how many leading bytes matched (the `/metrics` bearer token).
pub fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    use ring::digest::{SHA256, digest};
    digest(&SHA256, presented).as_ref() == digest(&SHA256, expected).as_ref()
}

/// A public fingerprint of a document (the policy file's text): the first 16 hex digits of its
/// SHA-256, for the startup line, so an operator can tell which policy a server runs.
pub fn text_fingerprint(text: &str) -> String {
    use ring::digest::{SHA256, digest};
    HEXLOWER.encode(&digest(&SHA256, text.as_bytes()).as_ref()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_never_debug_printed() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_ne!(a, b);
        assert!(a.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose().len(), TOKEN_PREFIX.len() + 43);
        assert!(!format!("{a:?}").contains(&a.expose()[4..]));
    }

    #[test]
    fn token_hashes_depend_on_the_server_key() {
        let t = Token::generate().unwrap();
        let k1 = ServerKey::from_bytes(&random_secret().unwrap()).unwrap();
        let k2 = ServerKey::from_bytes(&random_secret().unwrap()).unwrap();
        assert_eq!(k1.token_hash(&t), k1.token_hash(&t));
        assert_ne!(k1.token_hash(&t), k2.token_hash(&t));
    }

    #[test]
    fn pseudonyms_change_with_the_period_secret() {
        let s1 = PeriodSecret::from_bytes(&random_secret().unwrap()).unwrap();
        let s2 = PeriodSecret::from_bytes(&random_secret().unwrap()).unwrap();
        assert_eq!(s1.pseudonym("abc"), s1.pseudonym("abc"));
        assert_ne!(s1.pseudonym("abc"), s2.pseudonym("abc"));
        assert_ne!(s1.pseudonym("abc"), s1.pseudonym("abd"));
    }

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let (key, pkcs8) = SigningKey::generate().unwrap();
        let again = SigningKey::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        let sig = key.sign(b"release");
        assert!(verify_signature(&key.public_key(), b"release", &sig));
        assert!(!verify_signature(&key.public_key(), b"releasf", &sig));
        assert!(!verify_signature(&key.public_key(), b"release", "AAAA"));
        assert_eq!(check_signature(&key.public_key(), b"release", &sig), Ok(()));
        assert_eq!(
            check_signature(&key.public_key(), b"releasf", &sig),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check_signature("not a key", b"release", &sig),
            Err(SignatureError::MalformedKey)
        );
        assert_eq!(
            check_signature(&key.public_key()[..20], b"release", &sig),
            Err(SignatureError::MalformedKey)
        );
        assert_eq!(
            check_signature(&key.public_key(), b"release", "AAAA"),
            Err(SignatureError::MalformedSignature)
        );
    }
}
