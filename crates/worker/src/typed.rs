//! Jobs whose wiring the compiler checks: [`TypedJob`] adds a step from an async closure and
//! hands back an [`OutputRef<T>`] of its output; a later step takes that reference as its
//! input, and its closure's argument must be a `T`, so a step wired to an output of another
//! type does not compile. Names are given once (the step key); the job cannot have a cycle
//! (a step can only read steps added before it). [`op_struct`] is the string-keyed
//! counterpart for ops with several inputs: one serde struct whose fields are the inputs.
//!
//! ```
//! use stepq_worker::{CodeLocation, TypedJob};
//!
//! let mut job = TypedJob::new("diamond");
//! let (one, two) = job.source2("emit", ["one", "two"], |_ctx| async { Ok((1_i64, 2_i64)) });
//! let left = job.map("left", &one, |_ctx, n: i64| async move { Ok(n + 1) });
//! let right = job.map("right", &two, |_ctx, n: i64| async move { Ok(n + 1) });
//! job.map2("subtract", &left, &right, |_ctx, l: i64, r: i64| async move { Ok(l - r) });
//! let location = CodeLocation::builder().typed_job(job).build().unwrap();
//! assert_eq!(location.job("diamond").unwrap().steps().len(), 4);
//! ```
//!
//! What the compiler catches (each block below must fail to compile with the error code
//! named; `cargo test --doc` checks it):
//!
//! A closure reading another type than the output it is wired to:
//!
//! ```compile_fail,E0631
//! use stepq_worker::TypedJob;
//!
//! let mut job = TypedJob::new("typo");
//! let n = job.source("n", |_ctx| async { Ok(1_i64) });
//! job.map("shout", &n, |_ctx, s: String| async move { Ok(s.to_uppercase()) });
//! ```
//!
//! Two inputs swapped:
//!
//! ```compile_fail,E0631
//! use stepq_worker::TypedJob;
//!
//! let mut job = TypedJob::new("swapped");
//! let n = job.source("n", |_ctx| async { Ok(1_i64) });
//! let s = job.source("s", |_ctx| async { Ok(String::from("x")) });
//! job.map2("join", &n, &s, |_ctx, a: String, b: i64| async move { Ok(format!("{a}{b}")) });
//! ```
//!
//! A fan-in of outputs of different types:
//!
//! ```compile_fail,E0308
//! use stepq_worker::TypedJob;
//!
//! let mut job = TypedJob::new("mixed");
//! let n = job.source("n", |_ctx| async { Ok(1_i64) });
//! let s = job.source("s", |_ctx| async { Ok(String::from("x")) });
//! job.collect("all", &[n, s], |_ctx, all: Vec<i64>| async move { Ok(all.len()) });
//! ```
//!
//! A step's output used as another type than its closure returns:
//!
//! ```compile_fail,E0308
//! use stepq_worker::{OutputRef, TypedJob};
//!
//! let mut job = TypedJob::new("twice");
//! let n = job.source("n", |_ctx| async { Ok(1_i64) });
//! let text: OutputRef<String> = job.map("double", &n, |_ctx, v: i64| async move { Ok(v * 2) });
//! ```
//!
//! What it cannot see — a wiring made of strings ([`StepDef`] with [`op_map`](crate::op_map) or
//! [`op_struct`]) — is checked against the ops' [signatures](crate::OpSignature) when the
//! [`CodeLocation`](crate::CodeLocation) is built, with an error naming the job, the step, the
//! input and both types.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{de::DeserializeOwned, Serialize};
use stepq_plan::{Job, JobErrors, StepDef};

use crate::context::OpContext;
use crate::error::OpError;
use crate::io::{StepInputs, StepOutputs};
use crate::op::Op;
use crate::signature::{struct_fields, OpSignature, Port};

/// The output name of a step with one output.
pub const RESULT: &str = "result";

/// One output of a step of a [`TypedJob`], holding a `T`: what a later step's input is
/// wired to.
#[derive(Debug)]
pub struct OutputRef<T> {
    step: String,
    output: String,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for OutputRef<T> {
    fn clone(&self) -> Self {
        OutputRef {
            step: self.step.clone(),
            output: self.output.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> OutputRef<T> {
    fn new(step: &str, output: &str) -> Self {
        OutputRef {
            step: step.to_string(),
            output: output.to_string(),
            _type: PhantomData,
        }
    }

    /// The key of the step that emits it.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// The output's name.
    pub fn output(&self) -> &str {
        &self.output
    }
}

/// A job built step by step from async closures, each step's op registered with it (under
/// `job/step`); add it to a location with
/// [`CodeLocationBuilder::typed_job`](crate::CodeLocationBuilder::typed_job). See the
/// [module docs](self).
pub struct TypedJob {
    name: String,
    steps: Vec<StepDef>,
    ops: Vec<(String, Arc<dyn Op>)>,
}

impl std::fmt::Debug for TypedJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedJob")
            .field("name", &self.name)
            .field("steps", &self.steps)
            .finish()
    }
}

/// Ops by the name steps refer to them.
pub type NamedOps = Vec<(String, Arc<dyn Op>)>;

/// What a step's closure gets: the context and its inputs decoded.
type Body<In, Out> = Arc<
    dyn Fn(OpContext, In) -> futures::future::BoxFuture<'static, Result<Out, OpError>>
        + Send
        + Sync,
>;

/// The op of one typed step: decodes its inputs by position, runs the body, emits its outputs.
struct TypedOp<In, Out> {
    inputs: Vec<String>,
    outputs: Vec<String>,
    signature: OpSignature,
    decode: fn(&StepInputs, &[String]) -> Result<In, OpError>,
    encode: fn(Out, &[String]) -> Result<StepOutputs, OpError>,
    body: Body<In, Out>,
}

#[async_trait]
impl<In: Send + 'static, Out: Send + 'static> Op for TypedOp<In, Out> {
    async fn run(&self, ctx: &OpContext, inputs: StepInputs) -> Result<StepOutputs, OpError> {
        let decoded = (self.decode)(&inputs, &self.inputs)?;
        let out = (self.body)(ctx.clone(), decoded).await?;
        (self.encode)(out, &self.outputs)
    }

    fn signature(&self) -> Option<&OpSignature> {
        Some(&self.signature)
    }
}

impl TypedJob {
    /// An empty job named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        TypedJob {
            name: name.into(),
            steps: Vec::new(),
            ops: Vec::new(),
        }
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a step with one output, [`RESULT`], holding an `O`; returns its reference.
    fn add_one_output<In: Send + 'static, O: Serialize + Send + 'static>(
        &mut self,
        key: &str,
        wired: Vec<(String, &str, &str, Port)>,
        decode: fn(&StepInputs, &[String]) -> Result<In, OpError>,
        body: Body<In, O>,
    ) -> OutputRef<O> {
        let outputs = vec![Port::of::<O>(RESULT)];
        self.add(key, wired, outputs, decode, emit_one, body);
        OutputRef::new(key, RESULT)
    }

    fn add<In: Send + 'static, Out: Send + 'static>(
        &mut self,
        key: &str,
        wired: Vec<(String, &str, &str, Port)>,
        outputs: Vec<Port>,
        decode: fn(&StepInputs, &[String]) -> Result<In, OpError>,
        encode: fn(Out, &[String]) -> Result<StepOutputs, OpError>,
        body: Body<In, Out>,
    ) {
        let mut def = StepDef::new(key, format!("{}/{key}", self.name));
        for (name, from_step, from_output, _) in &wired {
            def = def.input(name.clone(), *from_step, *from_output);
        }
        for port in &outputs {
            def = if port.optional {
                def.optional_output(port.name.clone())
            } else {
                def.output(port.name.clone())
            };
        }
        let op = TypedOp {
            inputs: wired.iter().map(|w| w.0.clone()).collect(),
            outputs: outputs.iter().map(|p| p.name.clone()).collect(),
            signature: OpSignature::new(Some(wired.into_iter().map(|w| w.3).collect()), outputs),
            decode,
            encode,
            body,
        };
        self.ops.push((def.op.clone(), Arc::new(op)));
        self.steps.push(def);
    }

    /// A step with no inputs whose closure returns its one output, [`RESULT`].
    pub fn source<O, F, Fut>(&mut self, key: &str, f: F) -> OutputRef<O>
    where
        F: Fn(OpContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, OpError>> + Send + 'static,
        O: Serialize + Send + 'static,
    {
        let body: Body<(), O> = Arc::new(move |ctx, ()| Box::pin(f(ctx)));
        self.add_one_output(key, vec![], |_, _| Ok(()), body)
    }

    /// A step with no inputs whose closure returns two outputs, named `names`.
    pub fn source2<A, B, F, Fut>(
        &mut self,
        key: &str,
        names: [&str; 2],
        f: F,
    ) -> (OutputRef<A>, OutputRef<B>)
    where
        F: Fn(OpContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(A, B), OpError>> + Send + 'static,
        A: Serialize + Send + 'static,
        B: Serialize + Send + 'static,
    {
        let body: Body<(), (A, B)> = Arc::new(move |ctx, ()| Box::pin(f(ctx)));
        let outputs = vec![Port::of::<A>(names[0]), Port::of::<B>(names[1])];
        let encode = |(a, b): (A, B), names: &[String]| {
            StepOutputs::new()
                .with(names[0].clone(), &a)?
                .with(names[1].clone(), &b)
        };
        self.add(key, vec![], outputs, |_, _| Ok(()), encode, body);
        (OutputRef::new(key, names[0]), OutputRef::new(key, names[1]))
    }

    /// A step reading `input` whose closure returns its one output, [`RESULT`].
    pub fn map<I, O, F, Fut>(&mut self, key: &str, input: &OutputRef<I>, f: F) -> OutputRef<O>
    where
        F: Fn(OpContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, OpError>> + Send + 'static,
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
    {
        let body: Body<I, O> = Arc::new(move |ctx, i| Box::pin(f(ctx, i)));
        let wired = vec![wire::<I>(0, input)];
        let decode = |inputs: &StepInputs, names: &[String]| inputs.get::<I>(&names[0]);
        self.add_one_output(key, wired, decode, body)
    }

    /// A step reading `input` whose closure may return no value: its output [`RESULT`] is
    /// optional, and the steps reading it are skipped when it returns `None`.
    pub fn map_optional<I, O, F, Fut>(
        &mut self,
        key: &str,
        input: &OutputRef<I>,
        f: F,
    ) -> OutputRef<O>
    where
        F: Fn(OpContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<O>, OpError>> + Send + 'static,
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
    {
        let body: Body<I, Option<O>> = Arc::new(move |ctx, i| Box::pin(f(ctx, i)));
        let wired = vec![wire::<I>(0, input)];
        let decode = |inputs: &StepInputs, names: &[String]| inputs.get::<I>(&names[0]);
        let encode = |out: Option<O>, names: &[String]| match out {
            Some(value) => StepOutputs::one(names[0].clone(), &value),
            None => Ok(StepOutputs::new()),
        };
        let outputs = vec![Port::of::<O>(RESULT).optional()];
        self.add(key, wired, outputs, decode, encode, body);
        OutputRef::new(key, RESULT)
    }

    /// A step reading `a` and `b` whose closure returns its one output, [`RESULT`].
    pub fn map2<A, B, O, F, Fut>(
        &mut self,
        key: &str,
        a: &OutputRef<A>,
        b: &OutputRef<B>,
        f: F,
    ) -> OutputRef<O>
    where
        F: Fn(OpContext, A, B) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, OpError>> + Send + 'static,
        A: DeserializeOwned + Send + 'static,
        B: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
    {
        let body: Body<(A, B), O> = Arc::new(move |ctx, (a, b)| Box::pin(f(ctx, a, b)));
        let wired = vec![wire::<A>(0, a), wire::<B>(1, b)];
        let decode = |inputs: &StepInputs, names: &[String]| {
            Ok((inputs.get::<A>(&names[0])?, inputs.get::<B>(&names[1])?))
        };
        self.add_one_output(key, wired, decode, body)
    }

    /// A step reading every one of `inputs` (a fan-in) whose closure gets their values in
    /// order and returns its one output, [`RESULT`].
    pub fn collect<I, O, F, Fut>(
        &mut self,
        key: &str,
        inputs: &[OutputRef<I>],
        f: F,
    ) -> OutputRef<O>
    where
        F: Fn(OpContext, Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, OpError>> + Send + 'static,
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
    {
        let body: Body<Vec<I>, O> = Arc::new(move |ctx, all| Box::pin(f(ctx, all)));
        let wired = inputs
            .iter()
            .enumerate()
            .map(|(i, r)| wire::<I>(i, r))
            .collect();
        let decode = |inputs: &StepInputs, names: &[String]| {
            names.iter().map(|n| inputs.get::<I>(n)).collect()
        };
        self.add_one_output(key, wired, decode, body)
    }

    /// Changes the definition of the step `key` added before (a retry policy, tags):
    /// `job.configure("flaky", |s| s.retry(policy))`. Unknown keys are left alone (the step
    /// methods return the key in their [`OutputRef`]).
    pub fn configure(&mut self, key: &str, f: impl FnOnce(StepDef) -> StepDef) -> &mut Self {
        if let Some(step) = self.steps.iter_mut().find(|s| s.key == key) {
            let def = std::mem::replace(step, StepDef::new("", ""));
            *step = f(def);
        }
        self
    }

    /// The validated job and the ops its steps run, by name.
    pub fn build(self) -> Result<(Job, NamedOps), JobErrors> {
        let job = Job::builder(self.name).steps(self.steps).build()?;
        Ok((job, self.ops))
    }
}

/// Input `index` of a step (named `in0`, `in1`, ...), wired to `from`.
fn wire<T>(index: usize, from: &OutputRef<T>) -> (String, &str, &str, Port) {
    let name = format!("in{index}");
    let port = Port::of::<T>(name.clone());
    (name, from.step.as_str(), from.output.as_str(), port)
}

fn emit_one<O: Serialize>(value: O, names: &[String]) -> Result<StepOutputs, OpError> {
    StepOutputs::one(names[0].clone(), &value)
}

/// An op whose inputs are the fields of one serde struct `In` (each field an input of that
/// name) and whose closure's value is emitted as output `output`. Its signature names the
/// inputs (a step that wires another name, or misses one, is rejected when the location is
/// built); their types are checked when the step runs.
///
/// ```
/// use serde::Deserialize;
/// use stepq_worker::{op_struct, Op};
///
/// #[derive(Deserialize)]
/// struct Operands { left: i64, right: i64 }
///
/// let subtract = op_struct("result", |_ctx, Operands { left, right }| async move { Ok(left - right) });
/// # let _: std::sync::Arc<dyn Op> = subtract;
/// ```
pub fn op_struct<In, O, F, Fut>(output: impl Into<String>, f: F) -> Arc<dyn Op>
where
    F: Fn(OpContext, In) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, OpError>> + Send + 'static,
    In: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
{
    let output = output.into();
    let fields = struct_fields::<In>().unwrap_or_default();
    let inputs: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    let body: Body<In, O> = Arc::new(move |ctx, i| Box::pin(f(ctx, i)));
    Arc::new(TypedOp {
        signature: OpSignature::new(
            Some(inputs.iter().map(Port::untyped).collect()),
            vec![Port::of::<O>(output.clone())],
        ),
        inputs,
        outputs: vec![output],
        decode: decode_struct::<In>,
        encode: emit_one::<O>,
        body,
    })
}

/// `In` from the inputs named `names`: their encoded values as one MessagePack map.
fn decode_struct<In: DeserializeOwned>(
    inputs: &StepInputs,
    names: &[String],
) -> Result<In, OpError> {
    let mut map = Vec::new();
    let n = names.len();
    if n < 16 {
        map.push(0x80 | n as u8);
    } else {
        map.push(0xde);
        map.extend_from_slice(&(n as u16).to_be_bytes());
    }
    for name in names {
        let value = inputs.raw_or_unknown(name)?;
        map.extend_from_slice(&crate::io::encode_value(name.as_str())?);
        map.extend_from_slice(value);
    }
    rmp_serde::from_slice(&map).map_err(|e| {
        OpError::from(e)
            .context(format!(
                "the inputs do not decode as {}",
                std::any::type_name::<In>()
            ))
            .with_kind("input_decode_error")
    })
}

#[cfg(test)]
mod tests;
