//! Bearer-token authentication: when the host hands out a token, every request must carry it.

use http::HeaderMap;
use subtle::ConstantTimeEq;

/// The token every request must present, compared in constant time.
#[derive(Clone)]
pub(crate) struct Auth {
    expected: Box<[u8]>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth(..)")
    }
}

impl Auth {
    /// Requires `Authorization: Bearer <token>`. An empty token means no authentication.
    pub(crate) fn new(token: &str) -> Option<Self> {
        (!token.is_empty()).then(|| Self {
            expected: token.as_bytes().into(),
        })
    }

    /// True when `headers` carry the token.
    pub(crate) fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        // The scheme is case-insensitive (RFC 9110); the token is compared in constant time.
        if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        self.allows_token(&value[7..])
    }

    /// True when `presented` is the token (a multiplexed connection's preface carries it).
    pub(crate) fn allows_token(&self, presented: &[u8]) -> bool {
        bool::from(presented.ct_eq(&self.expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn tokens_are_checked() {
        assert!(Auth::new("").is_none());
        let a = Auth::new("s3cret").unwrap();
        assert!(a.allows(&with("Bearer s3cret")));
        assert!(a.allows(&with("bearer s3cret")));
        assert!(!a.allows(&with("Bearer s3cre")));
        assert!(!a.allows(&with("Bearer s3cretx")));
        assert!(!a.allows(&with("Basic s3cret")));
        assert!(!a.allows(&with("Bearer")));
        assert!(!a.allows(&HeaderMap::new()));
        assert_eq!(format!("{a:?}"), "Auth(..)");
    }
}
