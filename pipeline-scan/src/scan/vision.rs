//! The Vision stage: image URL → classification + situation tags.
//!
//! - [`OpenAiVision`]: an OpenAI-compatible vision model (the image URL is
//!   passed as `image_url` content; the reply must be the JSON object
//!   `{"classification":{…},"situation_tags":[…]}`).
//! - [`SimulatedVision`]: **a simulator, not a model**. It derives a
//!   classification deterministically from the image URL (the taxonomy item
//!   named in it, e.g. `…/cardboard-box.jpg`, else a hash picks an entry)
//!   and sleeps a configurable latency, for demos and
//!   load tests without any model. A URL containing `unknown-item` yields an
//!   unknown category (to exercise the "no rules" path).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;

use super::openai::{self, ModelError, OpenAiClient};
use super::stage::ScanStage;
use super::types::{Classification, Classified, ScanRequest, VisionResult};
use crate::pipeline::{Stage, StageContext, StageError};
/// Re-exported from [`crate::sim`], where the simulators' latency lives.
pub use crate::sim::LatencyDist;

/// Errors loading taxonomy files.
#[derive(Debug, thiserror::Error)]
pub enum TaxonomyError {
    /// The file could not be read.
    #[error("read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The YAML does not parse.
    #[error("parse {what}: {source}")]
    Yaml {
        /// Which document.
        what: String,
        /// The parser's error.
        source: serde_yaml::Error,
    },
    /// The YAML does not have the expected shape.
    #[error("parse {what}: {reason}")]
    Parse {
        /// Which document.
        what: String,
        /// Why.
        reason: String,
    },
}

/// The categories a classifier may answer with, and the situation tags.
///
/// Loaded from the eco2 `item_class_list.yaml` / `situation_tags.yaml`
/// format: `item_class_list: {major: {middle: [minor…]} | [minor…]}` and
/// `situation_tags: [tag…]`. A major whose value is a plain list has no
/// middle level; its entries use the major as middle category.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Taxonomy {
    /// Every (major, middle, minor) triple, in file order.
    pub entries: Vec<Classification>,
    /// Situation tags.
    pub tags: Vec<String>,
}

const DEFAULT_TAXONOMY: &str = include_str!("../../data/taxonomy.yaml");
const DEFAULT_TAGS: &str = include_str!("../../data/situation_tags.yaml");

impl Taxonomy {
    /// The project's own English taxonomy (shipped in `data/`).
    pub fn default_dataset() -> Self {
        // The embedded files are tested; fall back to empty rather than panic.
        Self::parse(DEFAULT_TAXONOMY, DEFAULT_TAGS).unwrap_or_default()
    }

    /// Parses the two YAML documents.
    pub fn parse(items_yaml: &str, tags_yaml: &str) -> Result<Self, TaxonomyError> {
        let perr = |what: &str, reason: &str| TaxonomyError::Parse {
            what: what.into(),
            reason: reason.into(),
        };
        let yaml = |what: &str| {
            let what = what.to_owned();
            move |source| TaxonomyError::Yaml { what, source }
        };
        let items: serde_yaml::Value =
            serde_yaml::from_str(items_yaml).map_err(yaml("item_class_list"))?;
        let root = items
            .get("item_class_list")
            .and_then(|v| v.as_mapping())
            .ok_or_else(|| {
                perr(
                    "item_class_list",
                    "missing top-level item_class_list mapping",
                )
            })?;
        let mut entries = Vec::new();
        let text = |v: &serde_yaml::Value| v.as_str().map(str::to_owned);
        for (major, value) in root {
            let Some(major) = text(major) else { continue };
            match value {
                serde_yaml::Value::Mapping(middles) => {
                    for (middle, minors) in middles {
                        let Some(middle) = text(middle) else { continue };
                        for minor in minors.as_sequence().into_iter().flatten().filter_map(text) {
                            entries.push(Classification {
                                major_category: major.clone(),
                                middle_category: middle.clone(),
                                minor_category: minor,
                            });
                        }
                    }
                }
                serde_yaml::Value::Sequence(minors) => {
                    for minor in minors.iter().filter_map(text) {
                        entries.push(Classification {
                            major_category: major.clone(),
                            middle_category: major.clone(),
                            minor_category: minor,
                        });
                    }
                }
                _ => {}
            }
        }
        let tags: serde_yaml::Value =
            serde_yaml::from_str(tags_yaml).map_err(yaml("situation_tags"))?;
        let tags = tags
            .get("situation_tags")
            .and_then(|v| v.as_sequence())
            .ok_or_else(|| perr("situation_tags", "missing top-level situation_tags list"))?
            .iter()
            .filter_map(text)
            .collect();
        Ok(Self { entries, tags })
    }

    /// Loads `item_class_list.yaml` and `situation_tags.yaml` from files.
    pub fn load(items: &Path, tags: &Path) -> Result<Self, TaxonomyError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| TaxonomyError::Io {
                path: p.display().to_string(),
                source,
            })
        };
        Self::parse(&read(items)?, &read(tags)?)
    }
}

/// Parameters of a vision call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisionRequest<'a> {
    /// The image.
    pub image_url: &'a str,
    /// The user's text, if any.
    pub user_input: Option<&'a str>,
    /// Model override (already allow-listed by the API).
    pub model: Option<&'a str>,
}

/// A classifier of waste images.
#[async_trait]
pub trait VisionModel: Send + Sync + 'static {
    /// Classifies the image.
    async fn classify(&self, req: VisionRequest<'_>) -> Result<VisionResult, ModelError>;
}

/// OpenAI-compatible vision classification.
#[derive(Clone, Debug)]
pub struct OpenAiVision {
    client: OpenAiClient,
    /// Built once from the taxonomy (which never changes), sent every call.
    system_prompt: String,
}

impl OpenAiVision {
    /// A classifier answering within `taxonomy`.
    pub fn new(client: OpenAiClient, taxonomy: Arc<Taxonomy>) -> Self {
        Self {
            client,
            system_prompt: Self::build_system_prompt(&taxonomy),
        }
    }

    fn build_system_prompt(taxonomy: &Taxonomy) -> String {
        let mut cats: Vec<String> = Vec::new();
        for c in &taxonomy.entries {
            cats.push(format!(
                "{} > {} > {}",
                c.major_category, c.middle_category, c.minor_category
            ));
        }
        format!(
            "You classify a photo of a waste item for disposal. Answer with one JSON object \
             {{\"classification\":{{\"major_category\":…,\"middle_category\":…,\"minor_category\":…}},\
             \"situation_tags\":[…]}} using only these categories (major > middle > minor):\n{}\n\
             and only these situation tags: {}",
            cats.join("\n"),
            taxonomy.tags.join(", ")
        )
    }
}

#[async_trait]
impl VisionModel for OpenAiVision {
    async fn classify(&self, req: VisionRequest<'_>) -> Result<VisionResult, ModelError> {
        let text = req.user_input.unwrap_or("Classify this item.");
        let messages = json!([
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": req.image_url}}
            ]}
        ]);
        let v = self.client.chat_json(messages, req.model).await?;
        openai::decode("classification", v)
    }
}

/// FNV-1a: a stable hash (std's hasher is not stable across releases).
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The vision **simulator** (see the module docs). Deterministic per URL.
#[derive(Clone, Debug)]
pub struct SimulatedVision {
    taxonomy: Arc<Taxonomy>,
    latency: LatencyDist,
    /// `(entry index, lowercased minor category)` of the entries that have
    /// one, computed once for [`SimulatedVision::named_in`].
    names: Vec<(usize, String)>,
}

impl SimulatedVision {
    /// A simulator over `taxonomy` sleeping `latency` per call.
    pub fn new(taxonomy: Arc<Taxonomy>, latency: LatencyDist) -> Self {
        let names = taxonomy
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.minor_category.is_empty())
            .map(|(i, e)| (i, e.minor_category.to_lowercase()))
            .collect();
        Self {
            taxonomy,
            latency,
            names,
        }
    }

    /// The taxonomy item named in the URL (`-`, `_`, `+` and `%20` read as
    /// spaces, case-insensitive; the longest name wins), e.g.
    /// `…/clear-water-bottle.jpg` → `clear water bottle`.
    fn named_in(&self, image_url: &str) -> Option<&Classification> {
        let text = image_url
            .to_lowercase()
            .replace("%20", " ")
            .replace(['-', '_', '+'], " ");
        self.names
            .iter()
            .map(|(i, lower)| (&self.taxonomy.entries[*i], lower))
            .filter(|(_, lower)| text.contains(lower.as_str()))
            .map(|(e, _)| e)
            .max_by_key(|e| e.minor_category.len())
    }

    /// The classification for a URL, without the delay: the taxonomy item
    /// named in the URL if any, else one picked by a hash of the URL.
    pub fn classify_now(&self, image_url: &str) -> VisionResult {
        if image_url.contains("unknown-item") || self.taxonomy.entries.is_empty() {
            return VisionResult {
                classification: Classification {
                    major_category: "unknown".into(),
                    middle_category: "unknown".into(),
                    minor_category: "unidentified object".into(),
                },
                situation_tags: Vec::new(),
            };
        }
        let h = fnv1a(image_url.as_bytes());
        let entry = self.named_in(image_url).unwrap_or_else(|| {
            &self.taxonomy.entries[(h % self.taxonomy.entries.len() as u64) as usize]
        });
        let mut tags = Vec::new();
        if !self.taxonomy.tags.is_empty() {
            let n = self.taxonomy.tags.len() as u64;
            for k in 0..((h >> 32) % 3) {
                let tag = &self.taxonomy.tags[((h >> (8 * k)) % n) as usize];
                if !tags.contains(tag) {
                    tags.push(tag.clone());
                }
            }
        }
        VisionResult {
            classification: entry.clone(),
            situation_tags: tags,
        }
    }
}

#[async_trait]
impl VisionModel for SimulatedVision {
    async fn classify(&self, req: VisionRequest<'_>) -> Result<VisionResult, ModelError> {
        crate::sim::simulate_latency(self.latency.sample()).await;
        Ok(self.classify_now(req.image_url))
    }
}

/// The Vision stage: a [`ScanStage`] using a classifier
/// (`VisionStage::new(model)`).
pub type VisionStage = ScanStage<dyn VisionModel>;

#[async_trait]
impl Stage for VisionStage {
    type Input = ScanRequest;
    type Output = Classified;
    const NAME: &'static str = "vision";

    async fn run(&self, _ctx: &StageContext, input: ScanRequest) -> Result<Classified, StageError> {
        let vision = self
            .uses
            .classify(VisionRequest {
                image_url: &input.image_url,
                user_input: input.user_input.as_deref(),
                model: input.model.as_deref(),
            })
            .await?;
        Ok(Classified {
            request: input,
            vision,
        })
    }

    fn event_data(output: &Classified) -> serde_json::Value {
        serde_json::to_value(&output.vision).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulator_is_deterministic_and_in_taxonomy() {
        let tax = Arc::new(Taxonomy::default_dataset());
        assert!(tax.entries.len() >= 12);
        let sim = SimulatedVision::new(tax.clone(), LatencyDist::ZERO);
        let a = sim.classify_now("https://example.com/a.jpg");
        assert_eq!(a, sim.classify_now("https://example.com/a.jpg"));
        assert!(tax.entries.contains(&a.classification));
        assert!(a.situation_tags.iter().all(|t| tax.tags.contains(t)));
        let named = sim.classify_now("https://example.com/items/Clear-Water_Bottle.jpg");
        assert_eq!(named.classification.minor_category, "clear water bottle");
        assert_eq!(named.classification.middle_category, "clear_pet");
        let u = sim.classify_now("https://example.com/unknown-item.jpg");
        assert_eq!(u.classification.major_category, "unknown");
    }
}
