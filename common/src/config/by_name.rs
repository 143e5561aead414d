//! Serde adapter for an optional key holding a [`Named`] value: in the TOML
//! file it is the value's name (`"ddim"`, `"user"`), whatever the type's own
//! serde form is (its variant name, for `--json`). An unknown name is
//! serde's `unknown variant` error listing the names, which `document.rs`
//! turns into a "did you mean" problem.
#![forbid(unsafe_code)]

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

use crate::proto::Named;

pub fn serialize<S: Serializer, T: Named>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.serialize_some(value.name()),
        None => serializer.serialize_none(),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>, T: Named>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        Some(text) => T::from_name(&text)
            .map(Some)
            .ok_or_else(|| D::Error::unknown_variant(&text, T::NAMES)),
        None => Ok(None),
    }
}
