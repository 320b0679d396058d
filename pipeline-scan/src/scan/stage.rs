//! [`ScanStage`]: what the Vision, Rule and Answer stages have in common,
//! in a module of its own below theirs (they import it; it imports none of
//! the scan domain).

use std::sync::Arc;

/// A scan stage that runs on something shared by every run: the Vision,
/// Rule and Answer stages are this holder of their classifier, rule set and
/// answer writer (the aliases `VisionStage`, `RuleStage` and `AnswerStage`;
/// each implements [`Stage`](crate::pipeline::Stage) in its own module).
pub struct ScanStage<T: ?Sized> {
    pub(super) uses: Arc<T>,
}

impl<T: ?Sized> ScanStage<T> {
    /// A stage using `uses`.
    pub fn new(uses: Arc<T>) -> Self {
        Self { uses }
    }
}

impl<T: ?Sized> Clone for ScanStage<T> {
    fn clone(&self) -> Self {
        Self::new(self.uses.clone())
    }
}

impl<T: ?Sized> std::fmt::Debug for ScanStage<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanStage")
            .field("uses", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}
