//! Discord's request signatures: Ed25519, by the application's key, over the
//! `X-Signature-Timestamp` header followed by the raw body; a timestamp outside the window
//! around now is refused too, so a captured request cannot be replayed later.

use std::time::{Duration, SystemTime};

use ed25519_dalek::{Signature, VerifyingKey};
use http::HeaderMap;

/// The header with the hex-encoded signature.
pub const SIGNATURE_HEADER: &str = "x-signature-ed25519";
/// The header with the Unix time (seconds) the request was signed at.
pub const TIMESTAMP_HEADER: &str = "x-signature-timestamp";

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A signature header is absent or not text.
    #[error("the {0} header is missing")]
    Missing(&'static str),
    /// The signature is not 64 hex-encoded bytes.
    #[error("the signature is not 64 hex-encoded bytes")]
    Malformed,
    /// The timestamp is not a Unix time in seconds.
    #[error("the timestamp is not a Unix time in seconds")]
    BadTimestamp,
    /// The timestamp is too far from now.
    #[error("the timestamp is {off_secs} s away from now (window: {window_secs} s)")]
    Stale {
        /// How far from now.
        off_secs: u64,
        /// The window allowed.
        window_secs: u64,
    },
    /// The signature does not match the key, timestamp and body.
    #[error("the signature does not match")]
    Mismatch,
}

/// Checks the signatures of one application's interactions.
#[derive(Debug, Clone)]
pub struct Verifier {
    key: VerifyingKey,
    window: Duration,
}

impl Verifier {
    /// A verifier for `public_key`, accepting timestamps within `window` of now.
    pub fn new(
        public_key: &[u8; 32],
        window: Duration,
    ) -> Result<Self, ed25519_dalek::SignatureError> {
        Ok(Self {
            key: VerifyingKey::from_bytes(public_key)?,
            window,
        })
    }

    /// Accepts the request if its signature is the application's and its timestamp is within
    /// the window around `now`.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), Rejection> {
        let header = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or(Rejection::Missing(name))
        };
        let signature = header(SIGNATURE_HEADER)?;
        let timestamp = header(TIMESTAMP_HEADER)?;

        let mut bytes = [0u8; 64];
        hex::decode_to_slice(signature, &mut bytes).map_err(|_| Rejection::Malformed)?;
        let signature = Signature::from_bytes(&bytes);

        let signed_at: u64 = timestamp.parse().map_err(|_| Rejection::BadTimestamp)?;
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let off_secs = now.abs_diff(signed_at);
        if off_secs > self.window.as_secs() {
            return Err(Rejection::Stale {
                off_secs,
                window_secs: self.window.as_secs(),
            });
        }

        let mut message = Vec::with_capacity(timestamp.len() + body.len());
        message.extend_from_slice(timestamp.as_bytes());
        message.extend_from_slice(body);
        self.key
            .verify_strict(&message, &signature)
            .map_err(|_| Rejection::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn signed(key: &SigningKey, timestamp: &str, body: &[u8]) -> HeaderMap {
        let mut message = timestamp.as_bytes().to_vec();
        message.extend_from_slice(body);
        let mut h = HeaderMap::new();
        h.insert(
            SIGNATURE_HEADER,
            hex::encode(key.sign(&message).to_bytes()).parse().unwrap(),
        );
        h.insert(TIMESTAMP_HEADER, timestamp.parse().unwrap());
        h
    }

    fn setup() -> (SigningKey, Verifier) {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let verifier =
            Verifier::new(&key.verifying_key().to_bytes(), Duration::from_secs(60)).unwrap();
        (key, verifier)
    }

    #[test]
    fn accepts_a_fresh_signature_and_refuses_everything_else() {
        let (key, v) = setup();
        let body = br#"{"type":1}"#;
        let ts = NOW.to_string();
        assert_eq!(v.verify(&signed(&key, &ts, body), body, at(NOW)), Ok(()));
        // Within the window either way.
        assert_eq!(
            v.verify(&signed(&key, &ts, body), body, at(NOW + 60)),
            Ok(())
        );
        assert_eq!(
            v.verify(&signed(&key, &ts, body), body, at(NOW - 60)),
            Ok(())
        );

        assert_eq!(
            v.verify(&signed(&key, &ts, body), br#"{"type":2}"#, at(NOW)),
            Err(Rejection::Mismatch)
        );
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert_eq!(
            v.verify(&signed(&other, &ts, body), body, at(NOW)),
            Err(Rejection::Mismatch)
        );
        // The timestamp is signed: changing it breaks the signature.
        let mut h = signed(&key, &ts, body);
        h.insert(TIMESTAMP_HEADER, (NOW + 1).to_string().parse().unwrap());
        assert_eq!(v.verify(&h, body, at(NOW)), Err(Rejection::Mismatch));

        assert_eq!(
            v.verify(&signed(&key, &ts, body), body, at(NOW + 61)),
            Err(Rejection::Stale {
                off_secs: 61,
                window_secs: 60
            })
        );
        assert!(matches!(
            v.verify(&signed(&key, &ts, body), body, at(NOW - 3600)),
            Err(Rejection::Stale { .. })
        ));
        assert_eq!(
            v.verify(&HeaderMap::new(), body, at(NOW)),
            Err(Rejection::Missing(SIGNATURE_HEADER))
        );
        let mut h = signed(&key, &ts, body);
        h.remove(TIMESTAMP_HEADER);
        assert_eq!(
            v.verify(&h, body, at(NOW)),
            Err(Rejection::Missing(TIMESTAMP_HEADER))
        );
        let mut h = signed(&key, &ts, body);
        h.insert(SIGNATURE_HEADER, "zz".parse().unwrap());
        assert_eq!(v.verify(&h, body, at(NOW)), Err(Rejection::Malformed));
        let h = signed(&key, "yesterday", body);
        assert_eq!(v.verify(&h, body, at(NOW)), Err(Rejection::BadTimestamp));
    }
}
