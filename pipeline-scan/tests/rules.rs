//! Rule datasets: the project's own default set and the eco2 regulation files.

use std::path::PathBuf;

use pipeline_scan::scan::answer::{AnswerRequest, TemplateAnswer, NO_MATCHING_RULES};
use pipeline_scan::scan::rules::{RuleDoc, RuleSet};
use pipeline_scan::scan::types::{Classification, VisionResult};
use pipeline_scan::scan::Taxonomy;

fn eco2_assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eco2")
}

fn c(major: &str, middle: &str, minor: &str) -> Classification {
    Classification {
        major_category: major.into(),
        middle_category: middle.into(),
        minor_category: minor.into(),
    }
}

#[test]
fn default_dataset_covers_every_default_taxonomy_entry() {
    let rules = RuleSet::default_dataset();
    let tax = Taxonomy::default_dataset();
    assert!(
        rules.len() >= 12,
        "about a dozen categories, got {}",
        rules.len()
    );
    assert!(tax.entries.len() >= 40);
    assert!(!tax.tags.is_empty());
    for entry in &tax.entries {
        let (key, doc) = rules
            .lookup(entry)
            .unwrap_or_else(|| panic!("no rules for {entry:?}"));
        let d = RuleDoc::from_value(key, doc);
        assert!(!d.steps.is_empty(), "{key} has steps");
        assert!(d.character.is_some(), "{key} names a character");
        assert!(!d.title.is_empty());
    }
}

#[test]
fn default_dataset_on_disk_matches_the_embedded_one() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/rules");
    let on_disk = RuleSet::load_dir(&dir).unwrap();
    assert_eq!(on_disk, RuleSet::default_dataset());
}

#[test]
fn default_lookup_order_and_unknowns() {
    let rules = RuleSet::default_dataset();
    assert_eq!(
        rules
            .lookup(&c("recyclable", "paper", "newspaper"))
            .map(|r| r.0),
        Some("recyclable_paper")
    );
    assert_eq!(
        rules
            .lookup(&c("food_waste", "food_waste", "peel"))
            .map(|r| r.0),
        Some("food_waste")
    );
    // Unknown middle of a known major: there is no `recyclable.json`.
    assert!(rules.lookup(&c("recyclable", "mystery", "x")).is_none());
    assert!(rules.lookup(&c("unknown", "unknown", "x")).is_none());
    assert!(rules.lookup(&c("", "", "")).is_none());
    // Category names are keys, never paths.
    assert!(rules.lookup(&c("../../etc/passwd", "", "")).is_none());
}

#[test]
fn eco2_regulation_files_load_and_resolve_like_the_python_system() {
    let rules = RuleSet::load_dir(&eco2_assets().join("source")).unwrap();
    assert_eq!(rules.len(), 18);
    // Recyclables resolve through their middle category.
    let (key, doc) = rules.lookup(&c("재활용폐기물", "종이", "신문지")).unwrap();
    assert_eq!(key, "재활용폐기물_종이");
    let d = RuleDoc::from_value(key, doc);
    assert_eq!(d.title, "종이");
    assert!(
        d.steps.iter().any(|s| s.starts_with("골판지: ")),
        "{:?}",
        d.steps
    );
    assert!(d.exceptions.iter().any(|(k, _)| k == "택배 송장"));
    assert!(d.character.is_none());
    // Other majors resolve through {major}.json.
    assert_eq!(
        rules
            .lookup(&c("대형폐기물", "대형폐기물", "가구"))
            .map(|r| r.0),
        Some("대형폐기물")
    );
    assert_eq!(
        rules
            .lookup(&c("음식물류폐기물", "", "채소류"))
            .map(|r| r.0),
        Some("음식물류폐기물")
    );
    // An unknown recyclable middle has no rules (there is no 재활용폐기물.json).
    assert!(rules.lookup(&c("재활용폐기물", "알수없음", "x")).is_none());
    assert!(rules.lookup(&c("우주쓰레기", "", "x")).is_none());
}

#[test]
fn eco2_taxonomy_loads_and_every_entry_has_rules() {
    let a = eco2_assets();
    let tax = Taxonomy::load(
        &a.join("item_class_list.yaml"),
        &a.join("situation_tags.yaml"),
    )
    .unwrap();
    let rules = RuleSet::load_dir(&a.join("source")).unwrap();
    assert!(tax.entries.len() > 100, "{}", tax.entries.len());
    assert!(tax.tags.iter().any(|t| t == "내용물_있음"));
    for e in &tax.entries {
        assert!(rules.lookup(e).is_some(), "no eco2 rules for {e:?}");
    }
}

#[test]
fn template_answer_composes_rules_and_reports_missing_ones() {
    let rules = RuleSet::default_dataset();
    let vision = VisionResult {
        classification: c("recyclable", "glass", "wine bottle"),
        situation_tags: vec!["label_attached".into()],
    };
    let (k, v) = rules.lookup(&vision.classification).unwrap();
    let a = TemplateAnswer::compose(&AnswerRequest {
        vision: &vision,
        rules: Some((k, v)),
        user_input: None,
        model: None,
    });
    assert!(a.insufficiencies.is_empty());
    assert_eq!(a.disposal_steps.len(), 4);
    assert!(a.disposal_steps[0].starts_with("1. "));
    assert!(a.user_answer.contains("Glass bottles and jars"));
    assert!(a.user_answer.contains("label_attached"));
    // Deterministic.
    assert_eq!(
        a,
        TemplateAnswer::compose(&AnswerRequest {
            vision: &vision,
            rules: Some((k, v)),
            user_input: None,
            model: None,
        })
    );

    let unknown = VisionResult {
        classification: c("unknown", "unknown", "thing"),
        situation_tags: vec![],
    };
    let none = TemplateAnswer::compose(&AnswerRequest {
        vision: &unknown,
        rules: None,
        user_input: None,
        model: None,
    });
    assert_eq!(none.insufficiencies, [NO_MATCHING_RULES]);
    assert!(none.user_answer.starts_with("No disposal rules matched"));
    assert!(none.disposal_steps.is_empty());

    // eco2 documents compose too.
    let eco2 = RuleSet::load_dir(&eco2_assets().join("source")).unwrap();
    let v2 = VisionResult {
        classification: c("재활용폐기물", "종이팩", "우유팩"),
        situation_tags: vec![],
    };
    let (k2, d2) = eco2.lookup(&v2.classification).unwrap();
    let a2 = TemplateAnswer::compose(&AnswerRequest {
        vision: &v2,
        rules: Some((k2, d2)),
        user_input: None,
        model: None,
    });
    assert_eq!(a2.disposal_steps.len(), 3);
    assert!(a2.user_answer.contains("비우고"));
}

/// Unparseable data files report the parser's error as the source.
#[test]
fn unparseable_rules_and_taxonomy_keep_the_parser_error_as_source() {
    use pipeline_scan::scan::rules::RulesError;
    use pipeline_scan::scan::vision::TaxonomyError;
    use std::error::Error as _;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.json"), "{ not json").unwrap();
    let err = RuleSet::load_dir(dir.path()).unwrap_err();
    assert!(matches!(err, RulesError::Json { .. }), "{err:?}");
    assert!(err
        .source()
        .is_some_and(|s| s.downcast_ref::<serde_json::Error>().is_some()));

    std::fs::write(dir.path().join("broken.json"), "[1, 2]").unwrap();
    let err = RuleSet::load_dir(dir.path()).unwrap_err();
    assert!(matches!(err, RulesError::Parse { .. }), "{err:?}");

    let err = Taxonomy::parse("item_class_list: [unclosed", "situation_tags: []").unwrap_err();
    assert!(matches!(err, TaxonomyError::Yaml { .. }), "{err:?}");
    assert!(err
        .source()
        .is_some_and(|s| s.downcast_ref::<serde_yaml::Error>().is_some()));
    let err = Taxonomy::parse("other: {}", "situation_tags: []").unwrap_err();
    assert!(matches!(err, TaxonomyError::Parse { .. }), "{err:?}");
}
