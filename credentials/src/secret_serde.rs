//! Writing a `SecretString` where it must be shown or stored in clear: the
//! answer that shows a minted API key once, a consumer's signing secret in
//! its stored definition. `secrecy` serializes no `SecretString` on its
//! own, so each such field opts in here, by name, with
//! `#[serde(serialize_with = "credentials::secret_serde::expose")]`.
//! Reading one needs nothing: `secrecy`'s `serde` feature deserializes it.

use secrecy::{ExposeSecret, SecretString};
use serde::Serializer;

/// The secret in clear.
pub fn expose<S: Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose_secret())
}

/// The secret in clear, or `null`.
pub fn expose_option<S: Serializer>(
    secret: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => serializer.serialize_some(secret.expose_secret()),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct Shown {
        #[serde(serialize_with = "expose")]
        key: SecretString,
        #[serde(serialize_with = "expose_option")]
        maybe: Option<SecretString>,
    }

    #[test]
    fn an_opted_in_secret_serializes_in_clear() {
        let shown = Shown {
            key: SecretString::from("hunter2".to_owned()),
            maybe: None,
        };
        let json = serde_json::to_string(&shown).expect("serializes");
        assert_eq!(json, r#"{"key":"hunter2","maybe":null}"#);
    }
}
