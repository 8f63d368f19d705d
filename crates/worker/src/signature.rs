//! What an op reads and emits, declared by the op ([`OpSignature`]), and the check that a
//! job's wiring matches the signatures of the ops its steps run ([`check_job`]), made when a
//! [`CodeLocation`](crate::CodeLocation) is built — so a misspelt input or an `i64` output
//! wired into a `String` input fails at start-up, naming the job, the step, the input and
//! both types, instead of failing the step at run time.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::{self, DeserializeOwned, Visitor};
use stepq_plan::Job;

use crate::location::LocationError;
use crate::op::Op;

/// One input or output of an op: its name, the Rust type of its value and, for an output,
/// whether the op may leave it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Input or output name.
    pub name: String,
    /// The value's type as [`std::any::type_name`] gives it; `None` when the op does not say
    /// (e.g. a field of an [`op_struct`](crate::op_struct) input).
    pub type_name: Option<&'static str>,
    /// An output the op may not emit (its downstream steps are skipped then).
    pub optional: bool,
}

impl Port {
    /// A port named `name` holding a `T`.
    pub fn of<T: ?Sized>(name: impl Into<String>) -> Self {
        Port {
            name: name.into(),
            type_name: Some(std::any::type_name::<T>()),
            optional: false,
        }
    }

    /// A port named `name` whose type is not declared.
    pub fn untyped(name: impl Into<String>) -> Self {
        Port {
            name: name.into(),
            type_name: None,
            optional: false,
        }
    }

    /// The same port, optional.
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }
}

/// The inputs an op reads and the outputs it emits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpSignature {
    /// Every input it reads; `None` when it reads inputs by name as it goes ([`op_output`](
    /// crate::op_output)), so a step may wire any.
    pub inputs: Option<Vec<Port>>,
    /// Every output it may emit.
    pub outputs: Vec<Port>,
}

impl OpSignature {
    /// A signature with the given inputs and outputs.
    pub fn new(inputs: Option<Vec<Port>>, outputs: Vec<Port>) -> Self {
        OpSignature { inputs, outputs }
    }

    fn output(&self, name: &str) -> Option<&Port> {
        self.outputs.iter().find(|p| p.name == name)
    }
}

/// Every problem of `job`'s wiring against the signatures of the ops in `ops` (steps whose op
/// declares none, or is not registered, are not checked here): an input the op does not read,
/// an input it reads that the step does not wire, a required output the step declares that
/// the op never emits or one the op emits that the step does not declare, a required output the op
/// may leave out, and an input whose type differs from the type of the upstream output it is
/// wired to.
pub(crate) fn check_job(job: &Job, ops: &BTreeMap<String, Arc<dyn Op>>) -> Vec<LocationError> {
    let mut errors = Vec::new();
    let signature = |op: &str| ops.get(op).and_then(|op| op.signature());
    let err = |step: &str, problem: String| LocationError::Wiring {
        job: job.name().to_string(),
        step: step.to_string(),
        problem,
    };
    for step in job.steps() {
        let Some(sig) = signature(&step.op) else {
            continue;
        };
        if let Some(reads) = &sig.inputs {
            for input in &step.inputs {
                if !reads.iter().any(|p| p.name == input.name) {
                    let known: Vec<&str> = reads.iter().map(|p| p.name.as_str()).collect();
                    errors.push(err(
                        &step.key,
                        format!(
                            "input `{}` is not read by op `{}` (it reads: {})",
                            input.name,
                            step.op,
                            crate::io::list_or_none(&known)
                        ),
                    ));
                }
            }
            for port in reads {
                if !step.inputs.iter().any(|i| i.name == port.name) {
                    errors.push(err(
                        &step.key,
                        format!(
                            "op `{}` reads input `{}`{}, which the step does not wire",
                            step.op,
                            port.name,
                            typed(port.type_name)
                        ),
                    ));
                }
            }
        }
        for output in &step.outputs {
            match sig.output(&output.name) {
                // An optional output the op never emits only ever skips its readers; that
                // may be on purpose (a step kept for later), so it is not an error.
                None if !output.required => {}
                None => errors.push(err(
                    &step.key,
                    format!(
                        "output `{}` is never emitted by op `{}`",
                        output.name, step.op
                    ),
                )),
                Some(port) if port.optional && output.required => errors.push(err(
                    &step.key,
                    format!(
                        "output `{}` is optional in op `{}` but required by the step \
                         (declare it with `optional_output`)",
                        output.name, step.op
                    ),
                )),
                Some(_) => {}
            }
        }
        for port in &sig.outputs {
            if step.output_def(&port.name).is_none() {
                errors.push(err(
                    &step.key,
                    format!(
                        "op `{}` emits output `{}`{}, which the step does not declare",
                        step.op,
                        port.name,
                        typed(port.type_name)
                    ),
                ));
            }
        }
        for input in &step.inputs {
            let reads = sig
                .inputs
                .as_ref()
                .and_then(|r| r.iter().find(|p| p.name == input.name))
                .and_then(|p| p.type_name);
            let upstream = job
                .step(&input.from_step)
                .and_then(|up| signature(&up.op))
                .and_then(|s| s.output(&input.from_output))
                .and_then(|p| p.type_name);
            if let (Some(reads), Some(emits)) = (reads, upstream) {
                if reads != emits {
                    errors.push(LocationError::TypeMismatch {
                        job: job.name().to_string(),
                        step: step.key.clone(),
                        input: input.name.clone(),
                        input_type: reads,
                        from: format!("{}.{}", input.from_step, input.from_output),
                        output_type: emits,
                    });
                }
            }
        }
    }
    errors
}

fn typed(type_name: Option<&str>) -> String {
    type_name.map(|t| format!(" ({t})")).unwrap_or_default()
}

/// The field names of a struct that derives `Deserialize` (what serde's derive hands
/// `deserialize_struct`), or `None` for a type that is not a struct with named fields.
pub(crate) fn struct_fields<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    let mut found = None;
    let _ = T::deserialize(FieldNames(&mut found));
    found
}

/// A deserializer that records the fields it is asked for and then fails.
struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field names recorded")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = Some(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Pair {
        left: i64,
        right: String,
    }

    #[test]
    fn a_structs_fields_are_found() {
        assert_eq!(struct_fields::<Pair>(), Some(&["left", "right"][..]));
        assert_eq!(struct_fields::<i64>(), None);
        assert_eq!(struct_fields::<(i64, i64)>(), None);
    }

    #[test]
    fn ports_carry_type_names() {
        assert_eq!(Port::of::<i64>("n").type_name, Some("i64"));
        assert!(Port::of::<i64>("n").optional().optional);
        assert_eq!(Port::untyped("x").type_name, None);
    }
}
