//! What an op receives (`StepInputs`) and what it hands back (`StepOutputs`), and the value codec
//! both use: MessagePack (rmp-serde, named fields).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use stepq_plan::FailureKind;

use crate::error::OpError;

/// Encodes a value as stored outputs are: MessagePack with named fields.
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, OpError> {
    rmp_serde::to_vec_named(value)
        .map(Bytes::from)
        .map_err(|e| OpError::from(e).with_kind("encode_error"))
}

/// Decodes a stored value encoded by [`encode_value`].
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, OpError> {
    rmp_serde::from_slice(bytes).map_err(|e| OpError::from(e).with_kind("decode_error"))
}

/// The inputs of one step, by input name, as encoded bytes loaded from the output store.
///
/// ```
/// use stepq_worker::{encode_value, StepInputs};
///
/// let inputs = StepInputs::from_iter([("num".to_string(), encode_value(&41_i64).unwrap())]);
/// assert_eq!(inputs.get::<i64>("num").unwrap(), 41);
/// assert_eq!(inputs.get::<i64>("other").unwrap_err().kind(), "unknown_input");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepInputs {
    values: BTreeMap<String, Bytes>,
}

impl StepInputs {
    /// No inputs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an input's encoded value.
    pub fn insert(&mut self, name: impl Into<String>, value: Bytes) {
        self.values.insert(name.into(), value);
    }

    /// Decodes input `name` as a `T`. Errors: `unknown_input` (the step declares no such input;
    /// the message lists those it has) or `input_decode_error` (the bytes are not a `T`).
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<T, OpError> {
        let bytes = self.raw(name).ok_or_else(|| self.unknown(name))?;
        rmp_serde::from_slice(bytes).map_err(|e| {
            OpError::from(e)
                .context(format!(
                    "input `{name}` does not decode as {}",
                    std::any::type_name::<T>()
                ))
                .with_kind("input_decode_error")
        })
    }

    /// The encoded bytes of input `name`, or the `unknown_input` error [`get`](Self::get)
    /// gives.
    pub(crate) fn raw_or_unknown(&self, name: &str) -> Result<&Bytes, OpError> {
        self.raw(name).ok_or_else(|| self.unknown(name))
    }

    /// The encoded bytes of input `name`.
    pub fn raw(&self, name: &str) -> Option<&Bytes> {
        self.values.get(name)
    }

    /// Input names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Number of inputs.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no inputs.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn unknown(&self, name: &str) -> OpError {
        let known: Vec<&str> = self.names().collect();
        OpError::new(
            FailureKind::UnknownInput,
            format!(
                "the step has no input `{name}`; its inputs are: {}",
                list_or_none(&known)
            ),
        )
    }
}

impl FromIterator<(String, Bytes)> for StepInputs {
    fn from_iter<I: IntoIterator<Item = (String, Bytes)>>(iter: I) -> Self {
        StepInputs {
            values: iter.into_iter().collect(),
        }
    }
}

/// The outputs an op emitted, by output name, in emission order. Emitting a name twice is an
/// error (`duplicate_output`).
///
/// ```
/// use stepq_worker::{OpError, StepOutputs};
///
/// # fn main() -> Result<(), OpError> {
/// let outputs = StepOutputs::new().with("value_one", &1)?.with("value_two", &2)?;
/// assert_eq!(outputs.names().collect::<Vec<_>>(), ["value_one", "value_two"]);
/// let single = StepOutputs::one("result", &"done")?;
/// assert_eq!(single.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepOutputs {
    values: Vec<(String, Bytes)>,
}

impl StepOutputs {
    /// No outputs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Outputs holding just `value` under `name`.
    pub fn one<T: Serialize + ?Sized>(name: impl Into<String>, value: &T) -> Result<Self, OpError> {
        StepOutputs::new().with(name, value)
    }

    /// Encodes and adds `value` under `name`.
    pub fn emit<T: Serialize + ?Sized>(
        &mut self,
        name: impl Into<String>,
        value: &T,
    ) -> Result<(), OpError> {
        let name = name.into();
        let bytes = encode_value(value).map_err(|e| {
            e.context(format!("output `{name}` does not encode"))
                .with_kind("output_encode_error")
        })?;
        self.emit_raw(name, bytes)
    }

    /// Adds already-encoded bytes under `name` (they should be what [`encode_value`] writes,
    /// for typed readers downstream).
    pub fn emit_raw(&mut self, name: impl Into<String>, value: Bytes) -> Result<(), OpError> {
        let name = name.into();
        if self.get_raw(&name).is_some() {
            return Err(OpError::new(
                FailureKind::DuplicateOutput,
                format!("output `{name}` was emitted twice"),
            ));
        }
        self.values.push((name, value));
        Ok(())
    }

    /// Builder form of [`StepOutputs::emit`].
    pub fn with<T: Serialize + ?Sized>(
        mut self,
        name: impl Into<String>,
        value: &T,
    ) -> Result<Self, OpError> {
        self.emit(name, value)?;
        Ok(self)
    }

    /// The encoded bytes of output `name`, if emitted.
    pub fn get_raw(&self, name: &str) -> Option<&Bytes> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Emitted names, in emission order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(|(n, _)| n.as_str())
    }

    /// Number of outputs emitted.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl IntoIterator for StepOutputs {
    type Item = (String, Bytes);
    type IntoIter = std::vec::IntoIter<(String, Bytes)>;

    fn into_iter(self) -> Self::IntoIter {
        self.values.into_iter()
    }
}

/// `a, b, c`, or `(none)`.
pub(crate) fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Row {
        id: u32,
        name: String,
    }

    #[test]
    fn typed_round_trip_through_outputs_and_inputs() {
        let row = Row {
            id: 7,
            name: "seven".into(),
        };
        let outputs = StepOutputs::one("row", &row).unwrap();
        let inputs: StepInputs = outputs.into_iter().collect();
        assert_eq!(inputs.get::<Row>("row").unwrap(), row);
        assert_eq!(inputs.names().collect::<Vec<_>>(), ["row"]);
        assert_eq!(inputs.len(), 1);
        assert!(!inputs.is_empty());
    }

    #[test]
    fn unknown_input_lists_known_names() {
        let mut inputs = StepInputs::new();
        let e = inputs.get::<i64>("x").unwrap_err();
        assert_eq!(e.kind(), "unknown_input");
        assert!(e.message().contains("(none)"), "{e}");
        inputs.insert("a", encode_value(&1).unwrap());
        inputs.insert("b", encode_value(&2).unwrap());
        let e = inputs.get::<i64>("x").unwrap_err();
        assert!(
            e.message().contains("`x`") && e.message().contains("a, b"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_is_an_input_decode_error() {
        let inputs = StepInputs::from_iter([("n".to_string(), encode_value("text").unwrap())]);
        let e = inputs.get::<u64>("n").unwrap_err();
        assert_eq!(e.kind(), "input_decode_error");
        assert!(
            e.message().contains("`n`") && e.message().contains("u64"),
            "{e}"
        );
        assert!(!e.causes().is_empty());
    }

    #[test]
    fn emitting_twice_is_an_error() {
        let mut outputs = StepOutputs::new();
        outputs.emit("a", &1).unwrap();
        let e = outputs.emit("a", &2).unwrap_err();
        assert_eq!(e.kind(), "duplicate_output");
        assert!(e.message().contains("`a`"));
        assert_eq!(
            decode_value::<i32>(outputs.get_raw("a").unwrap()).unwrap(),
            1
        );
        assert!(outputs.emit_raw("a", Bytes::new()).is_err());
    }

    #[test]
    fn unencodable_value_is_an_output_encode_error() {
        // A map with non-string keys still encodes in MessagePack, so use a failing Serialize.
        struct Bad;
        impl Serialize for Bad {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("refuses to serialize"))
            }
        }
        let e = StepOutputs::one("bad", &Bad).unwrap_err();
        assert_eq!(e.kind(), "output_encode_error");
        assert!(e.to_string().contains("refuses to serialize"), "{e}");
        assert!(StepOutputs::new().is_empty());
    }

    #[test]
    fn decode_value_reports_bad_bytes() {
        let e = decode_value::<String>(&[0xc1]).unwrap_err();
        assert_eq!(e.kind(), "decode_error");
    }
}
