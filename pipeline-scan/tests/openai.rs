//! The OpenAI-compatible client against a local server speaking the API shape.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use pipeline_scan::pipeline::StageError;
use pipeline_scan::scan::answer::{AnswerModel, AnswerRequest, NO_MATCHING_RULES};
use pipeline_scan::scan::openai::{ModelError, OpenAiClient, OpenAiConfig};
use pipeline_scan::scan::vision::VisionRequest;
use pipeline_scan::scan::{OpenAiAnswer, OpenAiVision, Taxonomy, VisionModel};
use serde_json::{json, Value};

/// What the fake server does for the n-th request (0-based).
type Script = Arc<dyn Fn(u32) -> Response + Send + Sync>;

#[derive(Clone)]
struct Fake {
    hits: Arc<AtomicU32>,
    script: Script,
    requests: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
}

async fn handler(State(f): State<Fake>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let n = f.hits.fetch_add(1, Ordering::SeqCst);
    f.requests.lock().unwrap().push((headers, body));
    (f.script)(n)
}

async fn serve(script: Script) -> (String, Fake) {
    let fake = Fake {
        hits: Arc::default(),
        script,
        requests: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(handler))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/v1"), fake)
}

fn completion(content: &str) -> Response {
    Json(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "test-model",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}]
    }))
    .into_response()
}

fn classification() -> String {
    json!({
        "classification": {"major_category": "recyclable", "middle_category": "glass", "minor_category": "wine bottle"},
        "situation_tags": ["label_attached"]
    })
    .to_string()
}

fn client(base: &str, timeout: Duration, retries: u32) -> OpenAiClient {
    let mut c = OpenAiConfig::new(base, "test-model", Some("sk-test".into()));
    c.timeout = timeout;
    c.max_retries = retries;
    c.backoff = Duration::from_millis(10);
    OpenAiClient::new(c).unwrap()
}

fn vision(c: OpenAiClient) -> OpenAiVision {
    OpenAiVision::new(c, Arc::new(Taxonomy::default_dataset()))
}

fn req(url: &str) -> VisionRequest<'_> {
    VisionRequest {
        image_url: url,
        user_input: Some("what is this?"),
        model: None,
    }
}

#[tokio::test]
async fn rate_limited_then_success_is_retried() {
    let (base, fake) = serve(Arc::new(|n| {
        if n == 0 {
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "0")],
                "slow down",
            )
                .into_response()
        } else {
            completion(&classification())
        }
    }))
    .await;
    let v = vision(client(&base, Duration::from_secs(5), 2));
    let r = v
        .classify(req("https://img.example.com/w.jpg"))
        .await
        .unwrap();
    assert_eq!(r.classification.middle_category, "glass");
    assert_eq!(r.situation_tags, ["label_attached"]);
    assert_eq!(fake.hits.load(Ordering::SeqCst), 2);

    // The request had the API shape: model, bearer key, image_url content, JSON mode.
    let (headers, body) = fake.requests.lock().unwrap()[1].clone();
    assert_eq!(headers.get("authorization").unwrap(), "Bearer sk-test");
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["response_format"]["type"], "json_object");
    let user = &body["messages"][1]["content"];
    assert_eq!(user[1]["type"], "image_url");
    assert_eq!(user[1]["image_url"]["url"], "https://img.example.com/w.jpg");
    assert_eq!(user[0]["text"], "what is this?");
}

#[tokio::test]
async fn server_errors_retry_then_give_up_as_retryable() {
    let (base, fake) = serve(Arc::new(|_| StatusCode::BAD_GATEWAY.into_response())).await;
    let v = vision(client(&base, Duration::from_secs(5), 2));
    let err = v
        .classify(req("https://img.example.com/a.jpg"))
        .await
        .unwrap_err();
    assert_eq!(err, ModelError::Server(502));
    assert_eq!(fake.hits.load(Ordering::SeqCst), 3, "1 try + 2 retries");
    assert!(StageError::from(err).is_retryable());
}

#[tokio::test]
async fn client_errors_are_fatal_and_not_retried() {
    let (base, fake) = serve(Arc::new(|_| {
        (StatusCode::UNAUTHORIZED, "bad key").into_response()
    }))
    .await;
    let v = vision(client(&base, Duration::from_secs(5), 2));
    let err = v
        .classify(req("https://img.example.com/a.jpg"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ModelError::Rejected { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(fake.hits.load(Ordering::SeqCst), 1);
    assert!(!StageError::from(err).is_retryable());
}

#[tokio::test]
async fn malformed_bodies_are_reported() {
    for (i, bad) in [
        "this is not json".into_response(),
        Json(json!({"choices": []})).into_response(),
        completion("not an object"),
        completion("{\"classification\": \"glass\"}"),
    ]
    .into_iter()
    .enumerate()
    {
        let cell = Arc::new(Mutex::new(Some(bad)));
        let (base, _) = serve(Arc::new(move |_| {
            cell.lock()
                .unwrap()
                .take()
                .unwrap_or_else(|| StatusCode::GONE.into_response())
        }))
        .await;
        let v = vision(client(&base, Duration::from_secs(5), 0));
        let err = v
            .classify(req("https://img.example.com/a.jpg"))
            .await
            .unwrap_err();
        assert!(matches!(err, ModelError::Malformed(_)), "case {i}: {err:?}");
        // The parser's error stays in the chain (case 1 has no content to
        // parse), and the stage error keeps the model error as its source.
        let chain: &dyn std::error::Error = &err;
        let parser_error = std::iter::successors(chain.source(), |e| e.source())
            .any(|e| e.downcast_ref::<serde_json::Error>().is_some());
        assert_eq!(parser_error, i != 1, "case {i}: {err:?}");
        let text = err.to_string();
        let stage = StageError::from(err);
        assert_eq!(stage.message(), text);
        let chain: &dyn std::error::Error = &stage;
        let source = chain.source().expect("the model error is the source");
        assert!(source.downcast_ref::<ModelError>().is_some(), "{source:?}");
        // A model glitch may succeed on a later attempt of the stage.
        assert!(stage.is_retryable());
    }
}

#[tokio::test]
async fn fenced_json_content_is_accepted() {
    let (base, _) = serve(Arc::new(|_| {
        completion(&format!("```json\n{}\n```", classification()))
    }))
    .await;
    let v = vision(client(&base, Duration::from_secs(5), 0));
    assert!(v
        .classify(req("https://img.example.com/a.jpg"))
        .await
        .is_ok());
}

#[tokio::test]
async fn slow_server_times_out_and_is_retried() {
    let (base, fake) = serve(Arc::new(|n| {
        if n == 0 {
            // The handler itself cannot sleep in a sync closure; answer with
            // a response whose body never ends instead.
            let body = axum::body::Body::from_stream(futures::stream::pending::<
                Result<bytes::Bytes, std::io::Error>,
            >());
            Response::builder().status(200).body(body).unwrap()
        } else {
            completion(&classification())
        }
    }))
    .await;
    let v = vision(client(&base, Duration::from_millis(300), 1));
    let r = v
        .classify(req("https://img.example.com/a.jpg"))
        .await
        .unwrap();
    assert_eq!(r.classification.major_category, "recyclable");
    assert_eq!(fake.hits.load(Ordering::SeqCst), 2);

    // Always slow: a Timeout, retryable for the stage.
    let (base, _) = serve(Arc::new(|_| {
        let body = axum::body::Body::from_stream(futures::stream::pending::<
            Result<bytes::Bytes, std::io::Error>,
        >());
        Response::builder().status(200).body(body).unwrap()
    }))
    .await;
    let v = vision(client(&base, Duration::from_millis(200), 0));
    let err = v
        .classify(req("https://img.example.com/a.jpg"))
        .await
        .unwrap_err();
    assert_eq!(err, ModelError::Timeout);
    assert!(StageError::from(err).is_retryable());
}

#[tokio::test]
async fn openai_answer_parses_and_flags_missing_rules() {
    let (base, fake) = serve(Arc::new(|_| {
        completion(&json!({"disposal_steps": ["Rinse it."], "user_answer": "Rinse and recycle.", "insufficiencies": []}).to_string())
    }))
    .await;
    let a = OpenAiAnswer::new(client(&base, Duration::from_secs(5), 0));
    let vision = pipeline_scan::scan::types::VisionResult::default();
    let rules = json!({"title": "Glass"});
    let with = a
        .answer(AnswerRequest {
            vision: &vision,
            rules: Some(("recyclable_glass", &rules)),
            user_input: None,
            model: Some("gpt-4o"),
        })
        .await
        .unwrap();
    assert_eq!(with.disposal_steps, ["Rinse it."]);
    assert!(with.insufficiencies.is_empty());
    assert_eq!(fake.requests.lock().unwrap()[0].1["model"], "gpt-4o");
    let without = a
        .answer(AnswerRequest {
            vision: &vision,
            rules: None,
            user_input: None,
            model: None,
        })
        .await
        .unwrap();
    assert_eq!(without.insufficiencies, [NO_MATCHING_RULES]);
}

/// Nothing listens: a connection error, retryable for the stage, with the
/// HTTP client's error kept as its source (not flattened to text).
#[tokio::test]
async fn connection_failure_keeps_the_http_error_as_source() {
    use std::error::Error as _;
    // Reserved for this process and never bound: nothing answers on it.
    let port = relay_testkit::procs::free_port();
    let v = vision(client(
        &format!("http://127.0.0.1:{port}/v1"),
        Duration::from_secs(5),
        0,
    ));
    let err = v
        .classify(req("https://img.example.com/a.jpg"))
        .await
        .unwrap_err();
    assert!(matches!(err, ModelError::Connection(_)), "{err:?}");
    assert!(err
        .source()
        .and_then(|s| s.downcast_ref::<reqwest::Error>())
        .is_some_and(|e| e.is_connect()));
    assert!(StageError::from(err).is_retryable());
}
