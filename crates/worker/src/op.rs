//! The `Op` trait and adapters that turn async closures into ops.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{de::DeserializeOwned, Serialize};

use crate::context::OpContext;
use crate::error::OpError;
use crate::io::{StepInputs, StepOutputs};
use crate::signature::{OpSignature, Port};

/// The code behind a step: reads its inputs, does the work, emits its outputs.
///
/// One op may back several steps (aliases); it learns which one it runs from [`OpContext`].
/// Most ops are written with [`op_fn`], [`op_output`] or [`op_map`] rather than by
/// implementing this trait.
#[async_trait]
pub trait Op: Send + Sync + 'static {
    /// Runs one attempt of a step.
    async fn run(&self, ctx: &OpContext, inputs: StepInputs) -> Result<StepOutputs, OpError>;

    /// What the op reads and emits, if it declares it: a [`CodeLocation`](crate::CodeLocation)
    /// checks every step running it against this when it is built. `None` (the default)
    /// leaves the step's wiring unchecked until run time.
    fn signature(&self) -> Option<&OpSignature> {
        None
    }
}

/// An op made from an async closure; see [`op_fn`].
struct FnOp<F> {
    f: F,
}

#[async_trait]
impl<F, Fut> Op for FnOp<F>
where
    F: Fn(OpContext, StepInputs) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<StepOutputs, OpError>> + Send + 'static,
{
    async fn run(&self, ctx: &OpContext, inputs: StepInputs) -> Result<StepOutputs, OpError> {
        (self.f)(ctx.clone(), inputs).await
    }
}

/// An op from an async closure taking the context (by value; it is cheap to clone) and the
/// inputs, returning all outputs.
///
/// ```
/// use stepq_worker::{op_fn, Op, StepOutputs};
///
/// let emit_values = op_fn(|ctx, _inputs| async move {
///     ctx.info("emitting two values");
///     StepOutputs::new().with("value_one", &1_i64)?.with("value_two", &2_i64)
/// });
/// # let _: std::sync::Arc<dyn Op> = emit_values;
/// ```
pub fn op_fn<F, Fut>(f: F) -> Arc<dyn Op>
where
    F: Fn(OpContext, StepInputs) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<StepOutputs, OpError>> + Send + 'static,
{
    Arc::new(FnOp { f })
}

/// An op that emits exactly one typed output; see [`op_output`].
struct OutputOp<F, T> {
    /// Its one output (the name it emits) is `signature.outputs[0]`.
    signature: OpSignature,
    f: F,
    _value: PhantomData<fn() -> T>,
}

#[async_trait]
impl<F, Fut, T> Op for OutputOp<F, T>
where
    F: Fn(OpContext, StepInputs) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, OpError>> + Send + 'static,
    T: Serialize + 'static,
{
    async fn run(&self, ctx: &OpContext, inputs: StepInputs) -> Result<StepOutputs, OpError> {
        let value = (self.f)(ctx.clone(), inputs).await?;
        StepOutputs::one(self.signature.outputs[0].name.clone(), &value)
    }

    fn signature(&self) -> Option<&OpSignature> {
        Some(&self.signature)
    }
}

/// An op whose closure returns one value, emitted as output `output`. It declares that
/// output and its type (a step wired to it is type-checked), not its inputs (it reads them by
/// name as it goes).
///
/// ```
/// use stepq_worker::{op_output, Op};
///
/// let simple = op_output("result", |_ctx, _inputs| async { Ok(1_i64) });
/// let sum = op_output("total", |_ctx, inputs| async move {
///     Ok(inputs.get::<i64>("a")? + inputs.get::<i64>("b")?)
/// });
/// # let _: [std::sync::Arc<dyn Op>; 2] = [simple, sum];
/// ```
pub fn op_output<F, Fut, T>(output: impl Into<String>, f: F) -> Arc<dyn Op>
where
    F: Fn(OpContext, StepInputs) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, OpError>> + Send + 'static,
    T: Serialize + 'static,
{
    Arc::new(OutputOp {
        signature: OpSignature::new(None, vec![Port::of::<T>(output)]),
        f,
        _value: PhantomData,
    })
}

/// An op from one typed input to one typed output; see [`op_map`].
struct MapOp<F, I, O> {
    input: String,
    output: String,
    signature: OpSignature,
    f: F,
    _types: PhantomData<fn(I) -> O>,
}

#[async_trait]
impl<F, Fut, I, O> Op for MapOp<F, I, O>
where
    F: Fn(OpContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, OpError>> + Send + 'static,
    I: DeserializeOwned + 'static,
    O: Serialize + 'static,
{
    async fn run(&self, ctx: &OpContext, inputs: StepInputs) -> Result<StepOutputs, OpError> {
        let value: I = inputs.get(&self.input)?;
        let out = (self.f)(ctx.clone(), value).await?;
        StepOutputs::one(self.output.clone(), &out)
    }

    fn signature(&self) -> Option<&OpSignature> {
        Some(&self.signature)
    }
}

/// An op that decodes input `input` as an `I`, maps it through the closure, and emits the result
/// as output `output`; it declares both with their types.
///
/// ```
/// use stepq_worker::{op_map, Op};
///
/// let add_one = op_map("num", "result", |_ctx, n: i64| async move { Ok(n + 1) });
/// # let _: std::sync::Arc<dyn Op> = add_one;
/// ```
pub fn op_map<F, Fut, I, O>(
    input: impl Into<String>,
    output: impl Into<String>,
    f: F,
) -> Arc<dyn Op>
where
    F: Fn(OpContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, OpError>> + Send + 'static,
    I: DeserializeOwned + 'static,
    O: Serialize + 'static,
{
    let (input, output) = (input.into(), output.into());
    Arc::new(MapOp {
        signature: OpSignature::new(
            Some(vec![Port::of::<I>(input.clone())]),
            vec![Port::of::<O>(output.clone())],
        ),
        input,
        output,
        f,
        _types: PhantomData,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{decode_value, encode_value};

    fn ctx() -> OpContext {
        OpContext::new("run", "job", "step")
    }

    #[tokio::test]
    async fn op_fn_passes_context_and_inputs() {
        let op = op_fn(|ctx, inputs| async move {
            let n: i64 = inputs.get("n")?;
            StepOutputs::one("out", &format!("{}:{n}", ctx.step_key()))
        });
        let inputs = StepInputs::from_iter([("n".to_string(), encode_value(&5_i64).unwrap())]);
        let out = op.run(&ctx(), inputs).await.unwrap();
        assert_eq!(
            decode_value::<String>(out.get_raw("out").unwrap()).unwrap(),
            "step:5"
        );
    }

    #[tokio::test]
    async fn op_output_emits_one_value() {
        let op = op_output("result", |_ctx, _inputs| async { Ok(vec![1_u8, 2]) });
        let out = op.run(&ctx(), StepInputs::new()).await.unwrap();
        assert_eq!(out.names().collect::<Vec<_>>(), ["result"]);
        assert_eq!(
            decode_value::<Vec<u8>>(out.get_raw("result").unwrap()).unwrap(),
            [1, 2]
        );
    }

    #[tokio::test]
    async fn op_output_propagates_errors() {
        let op = op_output("result", |_ctx, _inputs| async {
            Err::<i64, _>(OpError::retry("later"))
        });
        let e = op.run(&ctx(), StepInputs::new()).await.unwrap_err();
        assert_eq!(e.retry_requested(), Some(None));
    }

    #[tokio::test]
    async fn op_map_decodes_its_input() {
        let op = op_map("num", "result", |_ctx, n: i64| async move { Ok(n + 1) });
        let inputs = StepInputs::from_iter([("num".to_string(), encode_value(&1_i64).unwrap())]);
        let out = op.run(&ctx(), inputs).await.unwrap();
        assert_eq!(
            decode_value::<i64>(out.get_raw("result").unwrap()).unwrap(),
            2
        );

        let e = op.run(&ctx(), StepInputs::new()).await.unwrap_err();
        assert_eq!(e.kind(), "unknown_input");
        let wrong = StepInputs::from_iter([("num".to_string(), encode_value("x").unwrap())]);
        let e = op.run(&ctx(), wrong).await.unwrap_err();
        assert_eq!(e.kind(), "input_decode_error");
    }
}
