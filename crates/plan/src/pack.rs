//! Versioned packing of plan values with rmp-serde.
//!
//! Layout: `b"SQ"`, one version byte ([`PACK_VERSION`]), one byte giving the length of the type
//! name, the type name (ASCII), then the value as named-field MessagePack.

use serde::{de::DeserializeOwned, Serialize};

/// Version of the envelope written by [`pack`].
pub const PACK_VERSION: u8 = 1;

const MAGIC: &[u8; 2] = b"SQ";

/// A type that can be packed; its name is written into the envelope and checked on unpack.
pub trait Packable: Serialize + DeserializeOwned {
    /// Stable type name written into the envelope.
    const TYPE_NAME: &'static str;
}

/// Why bytes could not be unpacked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// The bytes end before the envelope header does.
    #[error("packed value is truncated: {len} bytes, header needs more")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// The bytes are not a stepq envelope.
    #[error("not a stepq packed value (bad magic bytes)")]
    BadMagic,
    /// The envelope was written by an unknown version.
    #[error("packed value has unknown version {found} (this build reads version {PACK_VERSION})")]
    UnknownVersion {
        /// Version byte found.
        found: u8,
    },
    /// The envelope holds another type.
    #[error("packed value is a `{found}`, expected a `{expected}`")]
    WrongType {
        /// Type asked for.
        expected: &'static str,
        /// Type found in the envelope.
        found: String,
    },
    /// The body does not decode as the type.
    #[error("packed `{type_name}` body does not decode: {source}")]
    Decode {
        /// Type asked for.
        type_name: &'static str,
        /// The decoder's error.
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// The value could not be encoded.
    #[error("`{type_name}` does not encode: {source}")]
    Encode {
        /// Type being packed.
        type_name: &'static str,
        /// The encoder's error.
        #[source]
        source: rmp_serde::encode::Error,
    },
}

/// Packs a value into a versioned envelope.
pub fn pack<T: Packable>(value: &T) -> Result<Vec<u8>, PackError> {
    let name = T::TYPE_NAME.as_bytes();
    debug_assert!(name.len() <= u8::MAX as usize);
    let mut out = Vec::with_capacity(64 + name.len());
    out.extend_from_slice(MAGIC);
    out.push(PACK_VERSION);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    rmp_serde::encode::write_named(&mut out, value).map_err(|source| PackError::Encode {
        type_name: T::TYPE_NAME,
        source,
    })?;
    Ok(out)
}

/// Unpacks a value, checking magic, version and type name first.
pub fn unpack<T: Packable>(bytes: &[u8]) -> Result<T, PackError> {
    if bytes.len() < 4 {
        return Err(PackError::Truncated { len: bytes.len() });
    }
    if &bytes[..2] != MAGIC {
        return Err(PackError::BadMagic);
    }
    if bytes[2] != PACK_VERSION {
        return Err(PackError::UnknownVersion { found: bytes[2] });
    }
    let name_len = bytes[3] as usize;
    let body_start = 4 + name_len;
    if bytes.len() < body_start {
        return Err(PackError::Truncated { len: bytes.len() });
    }
    let found = &bytes[4..body_start];
    if found != T::TYPE_NAME.as_bytes() {
        return Err(PackError::WrongType {
            expected: T::TYPE_NAME,
            found: String::from_utf8_lossy(found).into_owned(),
        });
    }
    rmp_serde::from_slice(&bytes[body_start..]).map_err(|source| PackError::Decode {
        type_name: T::TYPE_NAME,
        source,
    })
}

macro_rules! packable {
    ($($ty:ty => $name:literal),* $(,)?) => {
        $(impl Packable for $ty { const TYPE_NAME: &'static str = $name; })*
    };
}

packable! {
    crate::args::ExecuteStepArgs => "ExecuteStepArgs",
    crate::args::ExecuteRunArgs => "ExecuteRunArgs",
    crate::args::ResumeRunArgs => "ResumeRunArgs",
    crate::args::StepReport => "StepReport",
    crate::args::TaskProgress => "TaskProgress",
    crate::events::Event => "Event",
    Vec<crate::events::Event> => "EventBatch",
    crate::state::KnownState => "KnownState",
}
