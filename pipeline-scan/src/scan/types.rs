//! Data passed between the scan stages and the result shapes of docs/ECO2_WIRE.md.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A scan submission (the API body and the Vision stage's input).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRequest {
    /// The image to classify (http/https).
    pub image_url: String,
    /// Optional question or context from the user.
    #[serde(default)]
    pub user_input: Option<String>,
    /// Optional model name (validated against the API's allow-list).
    #[serde(default)]
    pub model: Option<String>,
}

/// The three-level waste category.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    /// Top level, e.g. `recyclable` / `재활용폐기물`.
    pub major_category: String,
    /// Second level, e.g. `paper` / `종이`.
    #[serde(default)]
    pub middle_category: String,
    /// The item, e.g. `cardboard box`.
    #[serde(default)]
    pub minor_category: String,
}

/// What the Vision stage sees: `{"classification":{…},"situation_tags":[…]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisionResult {
    /// The category.
    pub classification: Classification,
    /// Condition tags (contents left, label attached, …).
    #[serde(default)]
    pub situation_tags: Vec<String>,
}

/// Vision stage output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Classified {
    /// The submission.
    pub request: ScanRequest,
    /// The classification.
    pub vision: VisionResult,
}

/// Rule stage output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ruled {
    /// The submission.
    pub request: ScanRequest,
    /// The classification.
    pub vision: VisionResult,
    /// The matched rule document key (file stem), if any.
    pub rule_key: Option<String>,
    /// The matched rule document as stored (own or eco2 format), if any.
    pub disposal_rules: Option<Value>,
}

/// The Answer stage's composed answer (`final_answer`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalAnswer {
    /// Ordered disposal steps.
    #[serde(default)]
    pub disposal_steps: Vec<String>,
    /// The answer shown to the user.
    pub user_answer: String,
    /// What the answer could not cover (e.g. `no_matching_rules`); a non-empty
    /// list means no reward is granted.
    #[serde(default)]
    pub insufficiencies: Vec<String>,
}

/// Answer stage output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answered {
    /// The submission.
    pub request: ScanRequest,
    /// The classification.
    pub vision: VisionResult,
    /// The matched rule document key.
    pub rule_key: Option<String>,
    /// The matched rule document.
    pub disposal_rules: Option<Value>,
    /// The answer.
    pub final_answer: FinalAnswer,
}

/// A granted (or already owned) character.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reward {
    /// Character id.
    pub character_id: String,
    /// Display name.
    pub character_name: String,
    /// Points that come with it.
    pub points: u32,
    /// True when the user had this character before this job (nothing new granted).
    pub already_owned: bool,
}

/// Reward stage output: everything the done result needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanOutcome {
    /// The classification.
    pub classification_result: VisionResult,
    /// The matched rule document.
    pub disposal_rules: Option<Value>,
    /// The answer.
    pub final_answer: FinalAnswer,
    /// The reward (`None`: skipped — no rules matched or the answer had shortcomings).
    pub reward: Option<Reward>,
}

/// The done result (docs/ECO2_WIRE.md), stored at `scan:result:{job}` and carried by
/// the `done` event.
pub fn done_result(task_id: &str, outcome: &ScanOutcome) -> Value {
    serde_json::json!({
        "task_id": task_id,
        "status": "completed",
        "message": "scan completed",
        "pipeline_result": {
            "classification_result": outcome.classification_result,
            "disposal_rules": outcome.disposal_rules,
            "final_answer": outcome.final_answer,
        },
        "reward": outcome.reward,
        "error": null,
    })
}

/// The failure result stored at `scan:result:{job}` and carried by the
/// terminal `failed` event.
pub fn failed_result(task_id: &str, stage: Option<&str>, error: &str) -> Value {
    serde_json::json!({
        "task_id": task_id,
        "status": "failed",
        "message": match stage {
            Some(s) => format!("scan failed at stage {s}"),
            None => "scan failed".to_owned(),
        },
        "pipeline_result": null,
        "reward": null,
        "error": error,
    })
}
