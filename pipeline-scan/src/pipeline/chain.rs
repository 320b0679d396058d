//! [`Pipeline`]: the ordered, type-checked chain of stages.

use std::marker::PhantomData;
use std::sync::Arc;

use super::stage::{self, ErasedStage, Stage};

/// An ordered, type-checked chain of stages from `I` to `O`.
pub struct Pipeline<I, O> {
    pub(super) stages: Vec<Arc<dyn ErasedStage>>,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O> std::fmt::Debug for Pipeline<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field(
                "stages",
                &self.stages.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<I, O> Pipeline<I, O>
where
    I: 'static,
    O: 'static,
{
    /// A pipeline of one stage.
    pub fn new<S>(stage: S) -> Self
    where
        S: Stage<Input = I, Output = O>,
    {
        Self {
            stages: vec![Arc::new(stage::Erased(stage))],
            _types: PhantomData,
        }
    }

    /// Appends a stage whose input is this pipeline's output.
    pub fn then<S>(mut self, stage: S) -> Pipeline<I, S::Output>
    where
        S: Stage<Input = O>,
    {
        self.stages.push(Arc::new(stage::Erased(stage)));
        Pipeline {
            stages: self.stages,
            _types: PhantomData,
        }
    }

    /// Number of stages.
    pub fn len(&self) -> usize {
        self.stages.len()
    }

    /// Always false: a pipeline has at least one stage.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Stage names, in order.
    pub fn stage_names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }
}
