//! The Reward stage: grants the character of the matched rule document once
//! per (user, character), atomically (`SET NX` on
//! `scan:reward:{user}:{character}`, value = the granting job id).
//!
//! Skipped (reward `null`) when no rules matched or the answer reported
//! shortcomings. A redelivered step of the granting job sees its own job id in
//! the key and reports the same grant; another job of the same user reports
//! `already_owned`.

use async_trait::async_trait;
use bytes::Bytes;

pub use super::rules::DEFAULT_POINTS;
use super::rules::{CharacterInfo, RuleDoc};
use super::types::{Answered, Reward, ScanOutcome};
use crate::pipeline::{Stage, StageContext, StageError};

/// The reward key of a (user, character).
pub fn reward_key(user: &str, character: &str) -> String {
    format!("scan:reward:{user}:{character}")
}

/// The Reward stage.
#[derive(Clone, Copy, Debug, Default)]
pub struct RewardStage;

#[async_trait]
impl Stage for RewardStage {
    type Input = Answered;
    type Output = ScanOutcome;
    const NAME: &'static str = "reward";

    async fn run(&self, ctx: &StageContext, input: Answered) -> Result<ScanOutcome, StageError> {
        let eligible = input.final_answer.insufficiencies.is_empty();
        let reward = match (&input.rule_key, &input.disposal_rules) {
            (Some(key), Some(doc)) if eligible => {
                let doc = RuleDoc::from_value(key, doc);
                let character = doc.character.unwrap_or(CharacterInfo {
                    id: key.clone(),
                    name: doc.title.clone(),
                    points: DEFAULT_POINTS,
                });
                let k = reward_key(&ctx.user_id, &character.id);
                let job = Bytes::copy_from_slice(ctx.job_id.as_str().as_bytes());
                let granted = ctx
                    .backend
                    .set_nx(&k, job.clone(), None)
                    .await
                    .map_err(|e| StageError::retryable(format!("reward store: {e}")))?;
                let already_owned = if granted {
                    false
                } else {
                    let owner = ctx
                        .backend
                        .get(&k)
                        .await
                        .map_err(|e| StageError::retryable(format!("reward store: {e}")))?;
                    owner.as_ref() != Some(&job)
                };
                Some(Reward {
                    character_id: character.id,
                    character_name: character.name,
                    points: character.points,
                    already_owned,
                })
            }
            _ => None,
        };
        Ok(ScanOutcome {
            classification_result: input.vision,
            disposal_rules: input.disposal_rules,
            final_answer: input.final_answer,
            reward,
        })
    }

    fn event_data(output: &ScanOutcome) -> serde_json::Value {
        serde_json::json!({ "reward": output.reward })
    }
}
