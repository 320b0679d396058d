//! [`stage_fn`]: a [`Stage`] made of an async function, for the stages
//! that are only a function of their input (and context) — what tower's
//! `service_fn` is to `Service`. A stage with state of its own, or one
//! whose name must be known to the type (a `const` list of stage names),
//! still implements [`Stage`] itself.

use std::future::Future;
use std::marker::PhantomData;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::stage::{Stage, StageContext, StageError};

/// A stage that runs `run` under `name`: `run` gets the run's context (a
/// clone, so the future it returns owns everything it uses) and the input.
///
/// The `completed` event data is the output, unless
/// [`with_event_data`](FnStage::with_event_data) says otherwise.
///
/// ```
/// use pipeline_scan::pipeline::{stage_fn, Pipeline, StageError};
/// use serde_json::json;
///
/// let download = stage_fn("download", |_ctx, url: String| async move {
///     if !url.starts_with("https://") {
///         return Err(StageError::fatal("only https sources are accepted"));
///     }
///     Ok(url.into_bytes())
/// })
/// .with_event_data(|bytes: &Vec<u8>| json!({ "bytes": bytes.len() }));
/// let checksum = stage_fn("checksum", |_ctx, bytes: Vec<u8>| async move {
///     Ok(bytes.iter().map(|b| u64::from(*b)).sum::<u64>())
/// });
///
/// let pipeline: Pipeline<String, u64> = Pipeline::new(download).then(checksum);
/// assert_eq!(pipeline.stage_names(), ["download", "checksum"]);
/// ```
pub fn stage_fn<In, Out, F, Fut>(name: &'static str, run: F) -> FnStage<In, Out, F>
where
    F: Fn(StageContext, In) -> Fut,
    Fut: Future<Output = Result<Out, StageError>>,
    Out: Serialize,
{
    FnStage {
        name,
        run,
        event_data: output_as_data::<Out>,
        _types: PhantomData,
    }
}

/// The default `completed` data: the output itself (as
/// [`Stage::event_data`] does).
fn output_as_data<Out: Serialize>(output: &Out) -> Value {
    serde_json::to_value(output).unwrap_or(Value::Null)
}

/// The [`Stage`] [`stage_fn`] builds.
pub struct FnStage<In, Out, F> {
    name: &'static str,
    run: F,
    event_data: fn(&Out) -> Value,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out, F> FnStage<In, Out, F> {
    /// Sets the stage's `completed` event data to `event_data(output)`
    /// instead of the output.
    pub fn with_event_data(self, event_data: fn(&Out) -> Value) -> Self {
        Self { event_data, ..self }
    }
}

impl<In, Out, F> std::fmt::Debug for FnStage<In, Out, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnStage")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<In, Out, F, Fut> Stage for FnStage<In, Out, F>
where
    In: Serialize + DeserializeOwned + Send + Sync + 'static,
    Out: Serialize + DeserializeOwned + Send + Sync + 'static,
    F: Fn(StageContext, In) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Out, StageError>> + Send,
{
    type Input = In;
    type Output = Out;
    /// The same for every function stage: each runs under the name given to
    /// [`stage_fn`] ([`Stage::name`]).
    const NAME: &'static str = "stage_fn";

    fn name(&self) -> &'static str {
        self.name
    }

    async fn run(&self, ctx: &StageContext, input: In) -> Result<Out, StageError> {
        (self.run)(ctx.clone(), input).await
    }

    async fn run_with_data(
        &self,
        ctx: &StageContext,
        input: In,
    ) -> Result<(Out, Value), StageError> {
        let output = self.run(ctx, input).await?;
        let data = (self.event_data)(&output);
        Ok((output, data))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use relay_core::backend::memory::MemoryBackend;
    use relay_core::{Domain, JobId, KeySpace, Profile, Publisher};
    use serde_json::json;

    use super::*;
    use crate::pipeline::stage::{Erased, ErasedStage};
    use crate::sim::{LatencyDist, SimulatedLatency};

    fn ctx() -> StageContext {
        let backend = Arc::new(MemoryBackend::new());
        let keys = KeySpace::new(Profile::Native, Domain::new("t").unwrap(), 1);
        StageContext {
            job_id: JobId::new("job-1").unwrap(),
            user_id: "u".into(),
            stage: "double",
            stage_index: 0,
            attempt: 1,
            max_attempts: 3,
            deadline: Instant::now() + Duration::from_secs(5),
            span: tracing::Span::none(),
            publisher: Publisher::new(backend.clone(), keys, Default::default()),
            backend,
        }
    }

    #[tokio::test]
    async fn a_function_stage_runs_under_its_name_with_its_event_data() {
        let double = stage_fn("double", |ctx, n: u32| async move {
            if n == 0 {
                return Err(StageError::fatal(format!("zero for {}", ctx.job_id)));
            }
            Ok(n * 2)
        });
        assert_eq!(double.name(), "double");
        // Default data: the output.
        assert_eq!(double.run_with_data(&ctx(), 4).await, Ok((8, json!(8))));
        let double = double.with_event_data(|n| json!({ "doubled": n }));
        // What the engine runs: the erased stage, under the given name.
        let erased = Erased(SimulatedLatency::new(double, LatencyDist::ZERO));
        assert_eq!(erased.name(), "double");
        assert_eq!(
            erased.run_json(&ctx(), json!(4)).await,
            Ok((json!(8), json!({ "doubled": 8 })))
        );
        assert_eq!(
            erased.run_json(&ctx(), json!(0)).await,
            Err(StageError::fatal("zero for job-1"))
        );
        let bad = erased.run_json(&ctx(), json!("x")).await.unwrap_err();
        assert!(bad
            .message()
            .starts_with("invalid input for stage double: "));
    }
}
