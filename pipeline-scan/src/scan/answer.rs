//! The Answer stage: classification + rules → disposal steps and a user answer.
//!
//! - [`TemplateAnswer`]: deterministic composition of the matched rule
//!   document into numbered steps and a short answer; when no rules matched
//!   it says so and reports the shortcoming `no_matching_rules`.
//! - [`SimulatedAnswer`]: the template composer behind a configurable
//!   latency (demo and load tests).
//! - [`OpenAiAnswer`]: an OpenAI-compatible model writes the answer from the
//!   same inputs (JSON object reply with the [`FinalAnswer`] fields).

use async_trait::async_trait;
use serde_json::{json, Value};

use super::openai::{self, ModelError, OpenAiClient};
use super::rules::RuleDoc;
use super::stage::ScanStage;
use super::types::{Answered, FinalAnswer, Ruled, VisionResult};
use crate::pipeline::{Stage, StageContext, StageError};
use crate::sim::LatencyDist;

/// The shortcoming reported when no rule document matched.
pub const NO_MATCHING_RULES: &str = "no_matching_rules";

/// Inputs of an answer.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerRequest<'a> {
    /// The classification.
    pub vision: &'a VisionResult,
    /// The matched rule document key and content.
    pub rules: Option<(&'a str, &'a Value)>,
    /// The user's text.
    pub user_input: Option<&'a str>,
    /// Model override.
    pub model: Option<&'a str>,
}

/// Something that writes the final answer.
#[async_trait]
pub trait AnswerModel: Send + Sync + 'static {
    /// Writes the answer.
    async fn answer(&self, req: AnswerRequest<'_>) -> Result<FinalAnswer, ModelError>;
}

/// Deterministic template composer (no model).
#[derive(Clone, Copy, Debug, Default)]
pub struct TemplateAnswer;

impl TemplateAnswer {
    /// Composes the answer synchronously.
    pub fn compose(req: &AnswerRequest<'_>) -> FinalAnswer {
        let c = &req.vision.classification;
        let item = if c.minor_category.is_empty() {
            c.middle_category.as_str()
        } else {
            c.minor_category.as_str()
        };
        let Some((key, value)) = req.rules else {
            return FinalAnswer {
                disposal_steps: Vec::new(),
                user_answer: format!(
                    "No disposal rules matched this item ({} / {} / {}). \
                     Please check your local authority's guidance before disposing of it.",
                    c.major_category, c.middle_category, c.minor_category
                ),
                insufficiencies: vec![NO_MATCHING_RULES.to_owned()],
            };
        };
        let doc = RuleDoc::from_value(key, value);
        let steps: Vec<String> = doc
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{}. {s}", i + 1))
            .collect();
        let mut answer = format!("{item} goes with {}.", doc.title);
        if !doc.summary.is_empty() {
            answer.push_str(&format!(" In short: {}.", doc.summary.join(", ")));
        }
        if !steps.is_empty() {
            answer.push_str(" Steps: ");
            answer.push_str(&steps.join(" "));
        }
        if !doc.exceptions.is_empty() {
            let ex: Vec<String> = doc
                .exceptions
                .iter()
                .map(|(what, instead)| format!("{what} → {instead}"))
                .collect();
            answer.push_str(&format!(" Not accepted here: {}.", ex.join("; ")));
        }
        if !req.vision.situation_tags.is_empty() {
            answer.push_str(&format!(
                " Noted about your item: {}.",
                req.vision.situation_tags.join(", ")
            ));
        }
        let mut insufficiencies = Vec::new();
        if steps.is_empty() {
            insufficiencies.push("rules_have_no_steps".to_owned());
        }
        FinalAnswer {
            disposal_steps: steps,
            user_answer: answer,
            insufficiencies,
        }
    }
}

#[async_trait]
impl AnswerModel for TemplateAnswer {
    async fn answer(&self, req: AnswerRequest<'_>) -> Result<FinalAnswer, ModelError> {
        Ok(Self::compose(&req))
    }
}

/// The answer **simulator**: [`TemplateAnswer`]'s deterministic composition
/// delivered after a configurable delay, standing in for a language model's
/// latency in the demo and in load tests. It does not call any model.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimulatedAnswer {
    latency: LatencyDist,
}

impl SimulatedAnswer {
    /// A simulator sleeping `latency` per answer.
    pub fn new(latency: LatencyDist) -> Self {
        Self { latency }
    }
}

#[async_trait]
impl AnswerModel for SimulatedAnswer {
    async fn answer(&self, req: AnswerRequest<'_>) -> Result<FinalAnswer, ModelError> {
        crate::sim::simulate_latency(self.latency.sample()).await;
        Ok(TemplateAnswer::compose(&req))
    }
}

/// OpenAI-compatible answer writer.
#[derive(Clone, Debug)]
pub struct OpenAiAnswer {
    client: OpenAiClient,
}

impl OpenAiAnswer {
    /// A writer using `client`.
    pub fn new(client: OpenAiClient) -> Self {
        Self { client }
    }
}

#[async_trait]
impl AnswerModel for OpenAiAnswer {
    async fn answer(&self, req: AnswerRequest<'_>) -> Result<FinalAnswer, ModelError> {
        let system = "You explain how to dispose of a waste item. Use only the given rules. \
            Reply with one JSON object {\"disposal_steps\":[string],\"user_answer\":string,\
            \"insufficiencies\":[string]}; list in insufficiencies anything the rules do not \
            cover (e.g. \"no_matching_rules\" when no rules are given).";
        let user = json!({
            "classification": req.vision,
            "disposal_rules": req.rules.map(|(_, v)| v),
            "user_input": req.user_input,
        });
        let messages = json!([
            {"role": "system", "content": system},
            {"role": "user", "content": user.to_string()},
        ]);
        let v = self.client.chat_json(messages, req.model).await?;
        let mut answer: FinalAnswer = openai::decode("final answer", v)?;
        if req.rules.is_none()
            && !answer
                .insufficiencies
                .iter()
                .any(|s| s == NO_MATCHING_RULES)
        {
            answer.insufficiencies.push(NO_MATCHING_RULES.to_owned());
        }
        Ok(answer)
    }
}

/// The Answer stage: a [`ScanStage`] using an answer writer
/// (`AnswerStage::new(model)`).
pub type AnswerStage = ScanStage<dyn AnswerModel>;

#[async_trait]
impl Stage for AnswerStage {
    type Input = Ruled;
    type Output = Answered;
    const NAME: &'static str = "answer";

    async fn run(&self, _ctx: &StageContext, input: Ruled) -> Result<Answered, StageError> {
        let rules = match (&input.rule_key, &input.disposal_rules) {
            (Some(k), Some(v)) => Some((k.as_str(), v)),
            _ => None,
        };
        let final_answer = self
            .uses
            .answer(AnswerRequest {
                vision: &input.vision,
                rules,
                user_input: input.request.user_input.as_deref(),
                model: input.request.model.as_deref(),
            })
            .await?;
        Ok(Answered {
            request: input.request,
            vision: input.vision,
            rule_key: input.rule_key,
            disposal_rules: input.disposal_rules,
            final_answer,
        })
    }

    fn event_data(output: &Answered) -> Value {
        serde_json::to_value(&output.final_answer).unwrap_or_default()
    }
}
