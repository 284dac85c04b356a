//! API fuzzing: a bounded schemathesis run (PyPI `schemathesis`, installed
//! into the project's `.venv` by `./run.sh test`) over `/openapi.json`, with
//! every check and admin credentials. It passes when no request gets a
//! server error and every answer matches the spec (status, content type,
//! body schema, `Allow` on 405, rejection of schema-violating input).
//!
//! The fuzzed gateway runs against a RabbitMQ vhost of its own (schemathesis
//! creates queues and exchanges under names nobody can predict) and its own
//! database; both are deleted afterwards, also when the run fails.
//!
//! It never sends traffic off this machine: consumer targets and scrape URLs
//! are allowed only on 127.0.0.1 (`FORWARD_ALLOWED_HOSTS`,
//! `SCRAPE_ALLOWED_HOSTS`, checked on the host name before any lookup or
//! connection), forwards redirect nowhere, and there is no
//! `DEFAULT_TARGET_URL`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::support::env_or;
use crate::support::spawn_app_with;
use crate::support::vhost::OwnVhost;

/// Cases per operation and phase, and the run's time budget: about a
/// minute in all.
const MAX_EXAMPLES: &str = "25";
const MAX_SECONDS: u64 = 60;
/// Fixed, so a failure can be replayed (`--seed` is in the output);
/// `SCHEMATHESIS_SEED` picks another to explore.
const SEED: &str = "8";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_spec() {
    let schemathesis = schemathesis_binary();
    let vhost = OwnVhost::create("workerrmq-fuzz").await;
    let app = spawn_app_with(&[
        ("AMQP_URL", vhost.amqp_url.as_str()),
        ("FORWARD_ALLOWED_HOSTS", "127.0.0.1"),
        ("FORWARD_DENY_PRIVATE", "true"),
        ("SCRAPE_ALLOWED_HOSTS", "127.0.0.1"),
        // The seed routes publish to the built-in queues, so make them.
        ("BUILTIN_CONSUMERS", "true"),
        // schemathesis sends wrong and missing credentials on purpose (the
        // `ignored_auth` check) from the address its admin requests come
        // from; with the throttle on, everything after the tenth would be
        // a 429 and nothing behind auth would be tested. The throttle has
        // tests of its own.
        ("AUTH_MAX_FAILURES", "0"),
    ])
    .await;
    let workdir = std::env::temp_dir().join(format!("workerrmq-fuzz-{}", app.instance_id));
    std::fs::create_dir_all(&workdir).expect("a working directory for schemathesis");

    let run = tokio::process::Command::new(&schemathesis)
        .arg("--no-color")
        .arg("--config-file")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api/schemathesis.toml"))
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["--checks", "all"])
        .args([
            "--auth",
            &format!("{}:{}", app.admin_user, app.admin_password),
        ])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--max-time", &MAX_SECONDS.to_string()])
        .args(["--seed", &env_or("SCHEMATHESIS_SEED", SEED)])
        // One worker: the machine has two cores for everything, and
        // hypothesis' source inspection is not thread-safe on Python 3.11.
        .args(["--workers", "1"])
        .args(["--request-timeout", "20"])
        .args(["--suppress-health-check", "too_slow"])
        // Hypothesis keeps its example database in the working directory.
        .current_dir(&workdir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let outcome = tokio::time::timeout(Duration::from_secs(MAX_SECONDS + 180), run).await;
    let _ = std::fs::remove_dir_all(&workdir);
    // The run's own report first, so it shows whatever happens next.
    let output = outcome
        .expect("schemathesis finished within its time budget and three minutes more")
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    if !stderr.trim().is_empty() {
        eprintln!("{stderr}");
    }

    let summary = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with("====="))
        .unwrap_or("(no summary line)");
    assert!(
        output.status.success(),
        "schemathesis found problems ({}): {summary}",
        output.status
    );
}

/// `.venv/bin/schemathesis` of this checkout, or a failure saying how to
/// get it.
fn schemathesis_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/schemathesis");
    assert!(
        path.is_file(),
        "{} is missing: run `./run.sh test` once (it installs schemathesis into .venv), \
         or `.venv/bin/pip install schemathesis` yourself",
        path.display()
    );
    path
}

/// The spec says what the API answers: every error answer a route can give,
/// the enums and bounds the handlers enforce, and which fields are
/// required. What schemathesis checks is only as good as this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_documents_errors_enums_bounds_and_required_fields() {
    let app = crate::support::spawn_app().await;
    let spec = crate::support::assert_json(
        app.request_anonymous(reqwest::Method::GET, "/openapi.json", None)
            .await,
        reqwest::StatusCode::OK,
    )
    .await;
    let schemas = &spec["components"]["schemas"];

    let paths = spec["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("a path item") {
            let answers = operation["responses"].as_object().expect("responses");
            let mut expected = Vec::new();
            if operation["security"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
            {
                expected.extend(["401", "403"]);
            }
            if operation.get("requestBody").is_some() {
                expected.extend(["400", "413", "415"]);
            }
            for status in expected {
                assert!(
                    answers.contains_key(status),
                    "{method} {path} does not document {status}"
                );
            }
            for (status, answer) in answers {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        answer["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }

    for (schema, values) in [
        ("QueueTypeName", json!(["classic", "quorum"])),
        (
            "ExchangeType",
            json!(["direct", "fanout", "topic", "headers"]),
        ),
        ("Role", json!(["viewer", "publisher", "admin"])),
        ("BuiltinHandlerName", json!(["user", "report", "scrape"])),
    ] {
        assert_eq!(schemas[schema]["enum"], values, "{schema}");
    }
    assert!(schemas["ErrorCode"]["enum"]
        .as_array()
        .expect("error codes")
        .contains(&json!("method_not_allowed")));

    let prefetch = &schemas["CreateConsumerRequest"]["properties"]["prefetch"];
    assert_eq!(
        (&prefetch["minimum"], &prefetch["maximum"]),
        (&json!(1), &json!(1000))
    );
    let limit = spec["paths"]["/getDeadLetters/{queueName}"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "limit")
        .expect("a limit parameter");
    assert_eq!(
        (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
        (&json!(1), &json!(1000))
    );

    // The replay filter's kinds are gateway::ErrorKind's own names, and the
    // answer says what matched.
    assert_eq!(
        schemas["ErrorKindName"]["enum"],
        json!(gateway::ErrorKind::ALL.map(gateway::ErrorKind::as_str)),
    );
    let replay = &schemas["ReplayRequest"]["properties"];
    assert_eq!(replay["dryRun"]["type"], "boolean", "{replay}");
    let filter = &schemas["ReplayFilterRequest"]["properties"];
    for field in ["since", "until", "status", "errorKind", "messageIds"] {
        assert!(filter[field].is_object(), "filter.{field}: {filter}");
    }
    assert_eq!(
        (
            &filter["messageIds"]["minItems"],
            &filter["messageIds"]["maxItems"]
        ),
        (&json!(1), &json!(1000))
    );
    assert_eq!(
        schemas["ReplayAnswer"]["required"],
        json!(["matched", "replayed"])
    );

    for (schema, required) in [
        ("CreateUserRequest", json!(["nombre", "apellido", "email"])),
        (
            "CreateReportRequest",
            json!(["id_usuario", "tipo_reporte", "descripcion"]),
        ),
        ("CreateQueueRequest", json!(["queueName"])),
    ] {
        assert_eq!(schemas[schema]["required"], required, "{schema}");
    }
    // The answer types are the real ones, not hand copies.
    for schema in ["QueueRow", "ConnectionInfo", "ErrorBody"] {
        assert!(schemas[schema].is_object(), "{schema} is missing");
    }
}
