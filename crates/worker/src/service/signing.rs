//! `[signing]` of `stepq.toml`: signed task messages (see [`stepq_broker::signing`]). With
//! the section present every process of the deployment signs what it sends and refuses, and
//! dead-letters, any task message not signed with an accepted key.
//!
//! ```toml
//! [signing]
//! key_env = "STEPQ_SIGNING_KEY"     # the environment variable holding the key that signs
//! # key = "..."                     # or the key itself (keep the file private)
//! # also_accept_key_env = "..."     # a second key accepted while keys rotate
//! # also_accept_key = "..."
//! accept_unsigned = false           # true only while a fleet moves to signing
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stepq_broker::signing::{MessageSigner, SigningKey};

use super::settings::ConfigError;

/// The `[signing]` section. `Debug` never shows a key.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningSettings {
    /// The key that signs (and is accepted), given in the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The environment variable holding the key that signs, instead of `key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    /// A second key accepted (not used to sign), while keys rotate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub also_accept_key: Option<String>,
    /// The environment variable holding the second accepted key, instead of `also_accept_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub also_accept_key_env: Option<String>,
    /// Accept unsigned messages too (wrongly signed ones are still refused). Default false.
    pub accept_unsigned: bool,
}

impl std::fmt::Debug for SigningSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |key: &Option<String>| key.as_ref().map(|_| "<redacted>");
        f.debug_struct("SigningSettings")
            .field("key", &shown(&self.key))
            .field("key_env", &self.key_env)
            .field("also_accept_key", &shown(&self.also_accept_key))
            .field("also_accept_key_env", &self.also_accept_key_env)
            .field("accept_unsigned", &self.accept_unsigned)
            .finish()
    }
}

impl SigningSettings {
    /// Whether the section asks for signing at all (any key or `accept_unsigned` set).
    pub fn is_on(&self) -> bool {
        *self != SigningSettings::default()
    }

    /// The signer the section describes, with keys named by variable read from `env`; `None`
    /// when the section is empty. The error names the key (`signing.key_env`, …) and never
    /// shows a secret.
    pub fn signer(
        &self,
        env: &BTreeMap<String, String>,
    ) -> Result<Option<MessageSigner>, ConfigError> {
        if !self.is_on() {
            return Ok(None);
        }
        let signing = read_key(
            ("signing.key", &self.key),
            ("signing.key_env", &self.key_env),
            env,
        )?
        .ok_or_else(|| {
            ConfigError::invalid(
                "signing.key_env",
                "[signing] needs the key that signs: set key_env (an environment variable) or key",
            )
        })?;
        let mut signer = MessageSigner::new(signing).accepting_unsigned(self.accept_unsigned);
        if let Some(also) = read_key(
            ("signing.also_accept_key", &self.also_accept_key),
            ("signing.also_accept_key_env", &self.also_accept_key_env),
            env,
        )? {
            signer = signer.also_accept(also);
        }
        Ok(Some(signer))
    }

    /// [`signer`](Self::signer) with the process environment.
    pub fn signer_from_process_env(&self) -> Result<Option<MessageSigner>, ConfigError> {
        self.signer(&std::env::vars().collect())
    }
}

/// One key, given inline or by environment variable (not both).
fn read_key(
    (inline_name, inline): (&str, &Option<String>),
    (env_name, variable): (&str, &Option<String>),
    env: &BTreeMap<String, String>,
) -> Result<Option<SigningKey>, ConfigError> {
    let (name, secret) = match (inline, variable) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                inline_name,
                format!("set {inline_name} or {env_name}, not both"),
            ))
        }
        (Some(secret), None) => (inline_name.to_string(), secret.clone()),
        (None, Some(variable)) => {
            let secret = env.get(variable).filter(|v| !v.is_empty()).ok_or_else(|| {
                ConfigError::invalid(
                    env_name,
                    format!("the environment variable {variable} is not set or empty"),
                )
            })?;
            (env_name.to_string(), secret.clone())
        }
        (None, None) => return Ok(None),
    };
    SigningKey::new(secret.as_bytes())
        .map(Some)
        .map_err(|e| ConfigError::invalid(name, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_section_is_no_signing() {
        let settings: SigningSettings = toml::from_str("").unwrap();
        assert!(!settings.is_on());
        assert!(settings.signer(&env(&[])).unwrap().is_none());
    }

    #[test]
    fn keys_come_from_the_file_or_the_environment() {
        let settings: SigningSettings = toml::from_str(
            "key_env = \"K\"\nalso_accept_key = \"fedcba9876543210fedcba9876543210\"",
        )
        .unwrap();
        let signer = settings.signer(&env(&[("K", SECRET)])).unwrap().unwrap();
        assert_eq!(signer.key_id(), SigningKey::new(SECRET).unwrap().id());
        let other =
            MessageSigner::new(SigningKey::new("fedcba9876543210fedcba9876543210").unwrap());
        let message = other.sign(&stepq_broker::TaskMessage::new("t"));
        signer.verify(&message).unwrap();
    }

    #[test]
    fn bad_settings_name_the_key_and_never_the_secret() {
        // (the section, the environment, the key named, what the error says)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: [Case; 5] = [
            (
                "accept_unsigned = true",
                &[],
                "signing.key_env",
                "needs the key that signs",
            ),
            ("key_env = \"K\"", &[], "signing.key_env", "K is not set"),
            (
                "key_env = \"K\"",
                &[("K", "")],
                "signing.key_env",
                "K is not set",
            ),
            ("key = \"short\"", &[], "signing.key", "at least 16 bytes"),
            (
                "key = \"0123456789abcdef0\"\nkey_env = \"K\"",
                &[("K", SECRET)],
                "signing.key",
                "not both",
            ),
        ];
        for (text, vars, key, says) in cases {
            let settings: SigningSettings = toml::from_str(text).unwrap();
            let e = settings.signer(&env(vars)).unwrap_err();
            let shown = e.to_string();
            assert!(
                matches!(&e, ConfigError::Invalid { key: k, .. } if k == key),
                "{text}: {shown}"
            );
            assert!(shown.contains(says), "{text}: {shown}");
            assert!(!shown.contains(SECRET), "{shown}");
        }
        let e = toml::from_str::<SigningSettings>("keys = 1").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn debug_redacts_keys() {
        let settings = SigningSettings {
            key: Some(SECRET.into()),
            also_accept_key: Some(SECRET.into()),
            ..SigningSettings::default()
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
