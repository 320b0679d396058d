//! The Rule stage: retrieval of disposal rules for a classification.
//!
//! A rule set is a directory of JSON documents named `{major}_{middle}.json`
//! or `{major}.json`. Lookup tries `{major}_{middle}` (when the middle
//! category differs from the major), then `{major}`; anything else (an
//! unknown category) has no rules. For the eco2 set this is exactly the
//! Python system's rule: recyclables (`재활용폐기물`) resolve through their
//! middle category (`재활용폐기물_종이.json`), other majors through
//! `{major}.json`, and there is no `재활용폐기물.json`, so an unknown
//! recyclable middle category has no rules.
//!
//! Two document formats are understood (see [`RuleDoc`]): the project's own
//! English format (`data/rules/`, the default dataset, embedded in the
//! binary) and the eco2 regulation format (`source/*.json`, Korean keys).
//! Documents are loaded once into memory; lookups never touch the
//! filesystem, so a category name can never be used as a path.

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::stage::ScanStage;
use super::types::{Classification, Classified, Ruled};
use crate::pipeline::{Stage, StageContext, StageError};

/// Errors loading a rule set.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// A file or the directory could not be read.
    #[error("read {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A document is not valid JSON.
    #[error("parse {path}: {source}")]
    Json {
        /// The path.
        path: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A document is not a JSON object.
    #[error("parse {path}: {reason}")]
    Parse {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The directory has no rule documents.
    #[error("no rule documents in {0}")]
    Empty(String),
}

macro_rules! embedded {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../data/rules/", $name, ".json")))),*]
    };
}

/// The project's own dataset, embedded.
const DEFAULT_RULES: &[(&str, &str)] = embedded!(
    "recyclable_paper",
    "recyclable_carton",
    "recyclable_clear_pet",
    "recyclable_plastic",
    "recyclable_film",
    "recyclable_styrofoam",
    "recyclable_glass",
    "recyclable_metal",
    "recyclable_textiles",
    "recyclable_batteries",
    "recyclable_electronics",
    "recyclable_lighting",
    "food_waste",
    "general_waste",
    "bulky_waste",
    "hazardous_household",
);

/// An in-memory rule set: document key (file stem) → document.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleSet {
    docs: HashMap<String, Value>,
}

impl RuleSet {
    /// The project's own English dataset (`data/rules/`, embedded).
    pub fn default_dataset() -> Self {
        let mut docs = HashMap::new();
        for (key, text) in DEFAULT_RULES {
            // Embedded files are covered by tests; skip rather than panic.
            if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(text) {
                docs.insert((*key).to_owned(), v);
            }
        }
        Self { docs }
    }

    /// Loads every `*.json` document of a directory (own or eco2 format).
    pub fn load_dir(dir: &Path) -> Result<Self, RulesError> {
        let io = |p: &Path, source| RulesError::Io {
            path: p.display().to_string(),
            source,
        };
        let mut docs = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let path = entry.map_err(|e| io(dir, e))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Some(key) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            let v: Value = serde_json::from_str(&text).map_err(|source| RulesError::Json {
                path: path.display().to_string(),
                source,
            })?;
            if !v.is_object() {
                return Err(RulesError::Parse {
                    path: path.display().to_string(),
                    reason: "not a JSON object".into(),
                });
            }
            docs.insert(key.to_owned(), v);
        }
        if docs.is_empty() {
            return Err(RulesError::Empty(dir.display().to_string()));
        }
        Ok(Self { docs })
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Document keys, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.docs.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    /// The document for a classification: `{major}_{middle}`, then `{major}`.
    pub fn lookup(&self, c: &Classification) -> Option<(&str, &Value)> {
        let major = c.major_category.trim();
        let middle = c.middle_category.trim();
        if major.is_empty() {
            return None;
        }
        let mut candidates = Vec::with_capacity(2);
        if !middle.is_empty() && middle != major {
            candidates.push(format!("{major}_{middle}"));
        }
        candidates.push(major.to_owned());
        candidates
            .into_iter()
            .find_map(|k| self.docs.get_key_value(&k))
            .map(|(k, v)| (k.as_str(), v))
    }
}

/// The character a rule document awards.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CharacterInfo {
    /// Stable id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Points granted with it.
    #[serde(default = "default_points")]
    pub points: u32,
}

/// Points of a character whose rule document does not name any. Defined
/// here, with the rule documents that carry points; the reward stage (which
/// grants them) re-exports it.
pub const DEFAULT_POINTS: u32 = 10;

fn default_points() -> u32 {
    DEFAULT_POINTS
}

/// A rule document normalized from either format, for the answer composer
/// and the reward stage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleDoc {
    /// Display title (`title` / `이름`).
    pub title: String,
    /// Items the document covers (`applies_to` / `대상_품목`).
    pub items: Vec<String>,
    /// Ordered disposal steps (`steps` / `배출방법_공통` then
    /// `배출방법_세부` as `"{group}: {step}"`).
    pub steps: Vec<String>,
    /// Items not accepted and where they go instead
    /// (`not_accepted` / `배출불가_품목_안내`).
    pub exceptions: Vec<(String, String)>,
    /// Short pictogram summary (`summary` / `아이콘_절차`).
    pub summary: Vec<String>,
    /// The awarded character (own format only).
    pub character: Option<CharacterInfo>,
}

/// `v` if it is a string, else `default`.
fn text(v: Option<&Value>, default: &str) -> String {
    v.and_then(Value::as_str).unwrap_or(default).to_owned()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn pairs(v: Option<&Value>) -> Vec<(String, String)> {
    v.and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

impl RuleDoc {
    /// Normalizes a document of either format (`key` is the fallback title).
    pub fn from_value(key: &str, v: &Value) -> Self {
        if v.get("배출방법_공통").is_some() || v.get("이름").is_some() {
            let mut steps = strings(v.get("배출방법_공통"));
            if let Some(detail) = v.get("배출방법_세부").and_then(Value::as_object) {
                for (group, list) in detail {
                    for step in strings(Some(list)) {
                        steps.push(format!("{group}: {step}"));
                    }
                }
            }
            return Self {
                title: text(v.get("이름"), key),
                items: strings(v.get("대상_품목")),
                steps,
                exceptions: pairs(v.get("배출불가_품목_안내")),
                summary: strings(v.get("아이콘_절차")),
                character: None,
            };
        }
        Self {
            title: text(v.get("title"), key),
            items: strings(v.get("applies_to")),
            steps: strings(v.get("steps")),
            exceptions: pairs(v.get("not_accepted")),
            summary: strings(v.get("summary")),
            character: v
                .get("character")
                .and_then(|c| serde_json::from_value(c.clone()).ok()),
        }
    }
}

/// The Rule stage: a [`ScanStage`] over a rule set
/// (`RuleStage::new(rules)`).
pub type RuleStage = ScanStage<RuleSet>;

#[async_trait]
impl Stage for RuleStage {
    type Input = Classified;
    type Output = Ruled;
    const NAME: &'static str = "rule";

    async fn run(&self, _ctx: &StageContext, input: Classified) -> Result<Ruled, StageError> {
        let found = self.uses.lookup(&input.vision.classification);
        let (rule_key, disposal_rules) = match found {
            Some((k, v)) => (Some(k.to_owned()), Some(v.clone())),
            None => (None, None),
        };
        Ok(Ruled {
            request: input.request,
            vision: input.vision,
            rule_key,
            disposal_rules,
        })
    }

    fn event_data(output: &Ruled) -> Value {
        serde_json::json!({
            "matched": output.rule_key.is_some(),
            "rule_key": output.rule_key,
        })
    }
}
