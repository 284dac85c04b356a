//! The operator console (`/dashboard`) in a real headless Chromium, against
//! the real gateway, broker and store: what an operator sees and does there
//! reaches the API, and what happens through the API shows up on the page.
//! Each test also checks the page asked for nothing outside its origin and
//! logged no console error. Heavy on a small machine, so few tests that walk
//! several steps each, run one at a time (`.config/nextest.toml`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::browser::Browser;
use crate::support::target_server::{Reply, TargetServer};
use crate::support::Api;
use crate::support::{assert_json, spawn_app, TestApp};

/// The issue's bar for a queue made through the API to appear.
const QUEUE_APPEARS: Duration = Duration::from_secs(3);
const UI: Duration = Duration::from_secs(10);
const DELIVERY: Duration = Duration::from_secs(30);

/// A JavaScript string literal of `text`.
fn js(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

async fn open_console(browser: &Browser, app: &TestApp, hash: &str) {
    browser
        .open(&format!("{}/dashboard{hash}", app.address))
        .await;
}

/// Fills the sign-in form and submits it.
async fn sign_in(browser: &Browser, username: &str, password: &str, api_key: &str) {
    browser.fill(r#"input[name="username"]"#, username).await;
    browser.fill(r#"input[name="password"]"#, password).await;
    browser.fill(r#"input[name="apiKey"]"#, api_key).await;
    browser.click(r#"#signin button[type="submit"]"#).await;
}

async fn wait_signed_in(browser: &Browser) {
    browser
        .wait_for(
            UI,
            "the console shows its views instead of the sign-in form",
            "return document.querySelector('#signin').offsetParent === null \
             && document.querySelector('#nav').offsetParent !== null",
        )
        .await;
}

/// Goes to a view by its address, as a link or a typed URL would.
async fn go(browser: &Browser, hash: &str) {
    browser
        .eval(&format!("location.hash = {}; return true", js(hash)))
        .await;
}

/// Waits for the error banner; returns what it says.
async fn error_banner(browser: &Browser) -> Value {
    browser
        .wait_for(
            UI,
            "the error banner",
            r#"const e = document.querySelector('[data-testid="error"]');
               return e.offsetParent !== null ? e.textContent : null"#,
        )
        .await
}

/// Waits for the confirmation dialog; returns what it asks.
async fn confirmation(browser: &Browser) -> String {
    browser
        .wait_for(
            UI,
            "the confirmation dialog",
            "return document.querySelector('#confirm').open ? document.querySelector('#confirm-text').textContent : null",
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// No request to another origin, and no console error beyond `allowed`
/// (substrings of the entries a test causes on purpose); returns how many
/// allowed entries there were.
async fn assert_stays_home_and_quiet(browser: &Browser, app: &TestApp, allowed: &[&str]) -> usize {
    let urls = browser.requested_urls().await;
    assert!(
        urls.iter().any(|u| u.starts_with(&app.address)),
        "the network log saw none of the page's requests: {urls:?}"
    );
    // `chrome://` is the browser's own start page, which no web page can
    // load; `data:` is the console's empty favicon.
    let elsewhere: Vec<&String> = urls
        .iter()
        .filter(|u| {
            !u.starts_with(&format!("{}/", app.address))
                && !u.starts_with("data:")
                && !u.starts_with("chrome://")
                && !u.starts_with("chrome-untrusted://")
        })
        .collect();
    assert!(
        elsewhere.is_empty(),
        "requests outside the origin: {elsewhere:?}"
    );
    let (expected, errors): (Vec<String>, Vec<String>) = browser
        .console_errors()
        .await
        .into_iter()
        .partition(|e| allowed.iter().any(|a| e.contains(a)));
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    expected.len()
}

#[tokio::test]
async fn an_admin_follows_and_steers_queues_consumers_and_dead_letters_from_the_console() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let browser = Browser::start("admin").await;

    // `/` leads to the console; the page itself needs no credentials.
    browser.open(&format!("{}/", app.address)).await;
    let url = browser.eval("return location.pathname").await;
    assert_eq!(url, "/dashboard");
    sign_in(&browser, &app.admin_user, &app.admin_password, "").await;
    wait_signed_in(&browser).await;
    let stored = browser
        .eval("return sessionStorage.length > 0 && localStorage.length === 0")
        .await;
    assert_eq!(stored, true, "credentials belong in sessionStorage only");

    // A queue made through the API appears within 3 s.
    go(&browser, "#/queues").await;
    browser
        .wait_for(
            UI,
            "the queues table",
            r#"return !!document.querySelector('[data-testid="queues"]')"#,
        )
        .await;
    let queue = app.unique_queue("console");
    api.create_queue(&queue).await;
    browser
        .wait_for(
            QUEUE_APPEARS,
            "the new queue's row",
            &format!(
                r#"return !!document.querySelector('[data-testid="queues"] tr[data-queue={}]')"#,
                js(&queue)
            ),
        )
        .await;
    browser.screenshot("queues").await;

    // A consumer made with the form, against a local target.
    go(&browser, "#/consumers").await;
    browser
        .wait_for(
            UI,
            "the create-consumer form",
            r#"return !!document.querySelector('[data-testid="create-consumer"]')"#,
        )
        .await;
    let form = r#"[data-testid="create-consumer"]"#;
    browser
        .fill(&format!(r#"{form} input[name="queueName"]"#), &queue)
        .await;
    browser
        .fill(
            &format!(r#"{form} input[name="consumerName"]"#),
            "orders-webhook",
        )
        .await;
    browser
        .fill(
            &format!(r#"{form} input[name="targetUrl"]"#),
            &target.url("/hook"),
        )
        .await;
    // The target's auth: a type from the list shows its own fields.
    browser
        .eval(&format!(
            r#"const s = document.querySelector('{form} select[name="authType"]');
               s.value = "bearer"; s.dispatchEvent(new Event("change")); return true"#
        ))
        .await;
    browser
        .fill(
            &format!(r#"{form} input[name="auth.bearer.token"]"#),
            "consoleTokenValue",
        )
        .await;
    // Rules, tried first with the form's Test button on a message already
    // in the queue: the filter refuses it, and it stays in the queue.
    app.publish(&queue, json!({ "n": -1 })).await;
    browser
        .fill(&format!(r#"{form} textarea[name="filter"]"#), "body.n >= 0")
        .await;
    browser
        .fill(
            &format!(r#"{form} textarea[name="transform"]"#),
            r#"{"body": {"n": body.n}}"#,
        )
        .await;
    browser
        .click(&format!(r#"{form} button[data-action="test-rules"]"#))
        .await;
    let tested = browser
        .wait_for(
            UI,
            "the dry run's results",
            &format!(
                r#"const pre = document.querySelector('{form} [data-testid="rules-test-results"]');
                   return pre && !pre.hidden ? pre.textContent : null"#
            ),
        )
        .await;
    let tested = tested.as_str().unwrap_or_default();
    assert!(tested.contains(r#""matched": false"#), "{tested}");
    assert_eq!(
        app.message_count(&queue).await,
        Some(1),
        "the dry run moves nothing"
    );
    browser
        .click(&format!(r#"{form} button[type="submit"]"#))
        .await;
    let row_of_queue = format!(
        r#"Array.from(document.querySelectorAll('[data-testid="consumers"] tr[data-consumer-id]')).find(r => r.querySelector('[data-field="queue"]').textContent === {})"#,
        js(&queue)
    );
    let consumer = browser
        .wait_for(
            UI,
            "the new consumer's row",
            &format!("const row = {row_of_queue}; return row ? row.dataset.consumerId : null"),
        )
        .await;
    let consumer = consumer.as_str().expect("a consumer id").to_owned();
    let view = api.consumer(&consumer).await;
    assert_eq!(view["queueName"], queue.as_str(), "{view}");
    assert_eq!(view["consumerName"], "orders-webhook", "{view}");
    assert_eq!(view["target"]["url"], target.url("/hook"), "{view}");
    assert_eq!(
        view["target"]["auth"],
        json!({"type": "bearer", "token": "***"}),
        "{view}"
    );
    assert_eq!(view["filter"], "body.n >= 0", "{view}");
    assert_eq!(view["transform"], r#"{"body": {"n": body.n}}"#, "{view}");
    let row = format!(r#"document.querySelector('tr[data-consumer-id="{consumer}"]')"#);

    // 50 messages through the API; the row's acked count reaches 50.
    for n in 0..50 {
        app.publish(&queue, json!({ "n": n })).await;
    }
    browser
        .wait_for(
            DELIVERY,
            "acked 50 in the consumer's row",
            &format!(r#"return {row}.querySelector('[data-field="acked"]').textContent === "50""#),
        )
        .await;
    assert_eq!(target.ids_delivered().len(), 50);
    assert!(target
        .requests_to("/hook")
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer consoleTokenValue")));
    // The target's round trip, estimated from /metrics: "<p50> / <p99>".
    let took = browser
        .wait_for(
            UI,
            "the consumer's p50 / p99",
            &format!(
                r#"const t = {row}.querySelector('[data-field="latency"]').textContent;
                   return / s \/ | ms \/ /.test(t) ? t : null"#
            ),
        )
        .await;
    assert!(took.as_str().is_some_and(|t| t.contains(" / ")), "{took}");
    browser.screenshot("consumers").await;

    // A reload lands on the same view, still signed in (sessionStorage).
    browser.client.refresh().await.expect("the page reloads");
    browser
        .wait_for(
            UI,
            "the consumers view again after a reload",
            &format!("return location.hash === '#/consumers' && !!{row}"),
        )
        .await;

    // Paused from the page: the row says so, and so does the API.
    browser
        .click(&format!(
            r#"tr[data-consumer-id="{consumer}"] [data-action="pause"]"#
        ))
        .await;
    browser
        .wait_for(
            UI,
            "data-state=paused",
            &format!(r#"return {row}.dataset.state === "paused""#),
        )
        .await;
    assert_eq!(api.consumer(&consumer).await["state"], "paused");
    browser
        .wait_for(
            UI,
            "a resume button instead of pause",
            &format!(
                r#"const r = {row}; return !r.querySelector('[data-action="resume"]').hidden
                   && r.querySelector('[data-action="pause"]').hidden"#
            ),
        )
        .await;

    // A target answering 400 fills the dead-letter view; replayed from
    // the page, the messages reach the target again.
    let failing = app.unique_queue("console-dead");
    target.script("/reject", vec![], Reply::status(400));
    let refusing = api
        .queue_with_consumer(&failing, &target.url("/reject"), json!({}))
        .await;
    let mut published = Vec::new();
    for n in 0..3 {
        published.push(app.publish(&failing, json!({ "order": n })).await);
    }
    go(&browser, &format!("#/dead-letters/{failing}")).await;
    let letters =
        r#"document.querySelectorAll('[data-testid="dead-letters"] tr[data-message-id]')"#;
    browser
        .wait_for(
            DELIVERY,
            "3 dead letters in the view",
            &format!("return {letters}.length === 3"),
        )
        .await;
    let shown = browser
        .eval(&format!(
            "return Array.from({letters}).map(r => r.dataset.messageId).sort()"
        ))
        .await;
    published.sort();
    assert_eq!(shown, json!(published));
    browser.screenshot("dead-letters").await;
    // The API says when the last error happened, which the overview's
    // "consumers in trouble" goes by.
    let stats = api.consumer(&refusing).await["stats"].clone();
    let at = stats["lastErrorAt"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("no RFC 3339 lastErrorAt: {stats}"));
    let age = chrono::Utc::now().signed_duration_since(at);
    assert!(age < chrono::Duration::seconds(60), "{stats}");
    assert!(
        stats["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("400")),
        "{stats}"
    );

    target.script("/reject", vec![], Reply::ok());
    // By filter: one message id. A dry run counts it, and nothing moves
    // before the operator confirms that count.
    let replay_form = r#"[data-testid="replay-filter"]"#;
    browser
        .fill(
            &format!(r#"{replay_form} input[name="messageIds"]"#),
            &published[0],
        )
        .await;
    browser
        .click(&format!(r#"{replay_form} [data-action="replay"]"#))
        .await;
    let asked = confirmation(&browser).await;
    assert!(asked.contains("Replay 1 matching"), "{asked}");
    assert_eq!(
        api.dead_letters(&failing).await.len(),
        3,
        "nothing replayed before the confirmation"
    );
    browser.click("#confirm-ok").await;
    target
        .wait_for_delivered(&[published[0].clone()].into(), DELIVERY)
        .await;
    browser
        .wait_for(
            UI,
            "two dead letters left in the view",
            &format!("return {letters}.length === 2"),
        )
        .await;
    // Then the rest, with no filter.
    browser
        .fill(&format!(r#"{replay_form} input[name="messageIds"]"#), "")
        .await;
    browser
        .click(&format!(r#"{replay_form} [data-action="replay"]"#))
        .await;
    let asked = confirmation(&browser).await;
    assert!(asked.contains("Replay 2 dead letter"), "{asked}");
    browser.click("#confirm-ok").await;
    crate::support::eventually(DELIVERY, || async {
        let mut tries: BTreeMap<String, usize> = BTreeMap::new();
        for request in target.requests_to("/reject") {
            *tries.entry(request.webhook_id()).or_default() += 1;
        }
        let again = published
            .iter()
            .filter(|id| {
                tries.get(*id).is_some_and(|n| *n >= 2) && target.ids_delivered().contains(*id)
            })
            .count();
        if again == published.len() {
            Ok(())
        } else {
            Err(format!("delivered again: {again} of 3; tries {tries:?}"))
        }
    })
    .await;
    browser
        .wait_for(
            UI,
            "the dead-letter view empties",
            &format!("return {letters}.length === 0"),
        )
        .await;

    // "Publish a test message" from the queues view reaches the target.
    go(&browser, "#/queues").await;
    let failing_row = format!(
        r#"document.querySelector('[data-testid="queues"] tr[data-queue={}]')"#,
        js(&failing)
    );
    browser
        .wait_for(
            UI,
            "the refusing queue's row",
            &format!("return !!{failing_row}"),
        )
        .await;
    browser
        .eval(&format!(
            r#"{failing_row}.querySelector('[data-action="publish"]').click(); return true"#
        ))
        .await;
    crate::support::eventually(DELIVERY, || async {
        let tests = target
            .requests_to("/reject")
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains("workerrmq console"))
            .count();
        if tests == 1 {
            Ok(())
        } else {
            Err(format!("{tests} test messages at the target"))
        }
    })
    .await;

    // The broker's connections include this gateway's own.
    go(&browser, "#/connections").await;
    browser
        .wait_for(
            UI,
            "the gateway's publish connection",
            &format!(
                r#"return Array.from(document.querySelectorAll('[data-testid="connections"] tr[data-connection]'))
                   .some(r => r.cells[0].textContent === {})"#,
                js(&app.publish_connection_name())
            ),
        )
        .await;

    // Deleting a queue asks first, then it is gone from the page and the
    // broker.
    let spare = app.unique_queue("console-spare");
    api.create_queue(&spare).await;
    go(&browser, "#/queues").await;
    let spare_row = format!(
        r#"document.querySelector('[data-testid="queues"] tr[data-queue={}]')"#,
        js(&spare)
    );
    browser
        .wait_for(
            UI,
            "the spare queue's row",
            &format!("return !!{spare_row}"),
        )
        .await;
    browser
        .eval(&format!(
            r#"{spare_row}.querySelector('[data-action="delete"]').click(); return true"#
        ))
        .await;
    browser
        .wait_for(
            UI,
            "the confirmation dialog",
            "return document.querySelector('#confirm').open",
        )
        .await;
    assert!(
        app.queue_exists(&spare).await,
        "nothing deleted before the confirmation"
    );
    browser.click("#confirm-ok").await;
    browser
        .wait_for(
            UI,
            "the spare queue's row gone",
            &format!("return !{spare_row}"),
        )
        .await;
    assert!(!app.queue_exists(&spare).await, "deleted on the broker");

    // The overview: status, counts and the rates chart.
    go(&browser, "#/overview").await;
    browser
        .wait_for(
            UI,
            "the broker shown up",
            r#"return document.querySelector('[data-field="broker"]').textContent === "up""#,
        )
        .await;
    browser.screenshot("overview").await;
    browser.color_scheme("dark").await;
    browser.screenshot("overview-dark").await;
    browser.viewport(390, 844, true).await;
    go(&browser, "#/consumers").await;
    browser
        .wait_for(
            UI,
            "the consumers view on a phone",
            &format!("return !!{row}"),
        )
        .await;
    browser.screenshot("consumers-phone").await;
    browser.color_scheme("light").await;
    browser.viewport(1280, 800, false).await;

    // The Replicas tab is there exactly when the gateway has the fleet API.
    let spec = assert_json(
        app.request_anonymous(reqwest::Method::GET, "/openapi.json", None)
            .await,
        reqwest::StatusCode::OK,
    )
    .await;
    let tab_hidden = browser
        .eval(r#"return document.querySelector('#nav a[data-view="replicas"]').hidden"#)
        .await;
    if spec["paths"]["/getReplicas"].is_object() {
        assert_eq!(tab_hidden, false, "a Replicas tab with GET /getReplicas");
        go(&browser, "#/replicas").await;
        browser
            .wait_for(
                UI,
                "this gateway among the replicas",
                &format!(
                    r#"return !!document.querySelector('[data-testid="replicas"] tr[data-instance-id={}]')"#,
                    js(&app.instance_id)
                ),
            )
            .await;
        browser.screenshot("replicas").await;
    } else {
        assert_eq!(tab_hidden, true, "no Replicas tab without GET /getReplicas");
        go(&browser, "#/replicas").await;
        browser
            .wait_for(
                UI,
                "#/replicas falls back to the overview",
                r#"return !!document.querySelector('[data-testid="trouble"]')"#,
            )
            .await;
    }

    // Signing out forgets the credentials and shows the form again.
    browser.click("#sign-out").await;
    browser
        .wait_for(
            UI,
            "the sign-in form after sign-out",
            "return document.querySelector('#signin').offsetParent !== null && sessionStorage.length === 0",
        )
        .await;

    assert_eq!(assert_stays_home_and_quiet(&browser, &app, &[]).await, 0);
    browser.close().await;
}

#[tokio::test]
async fn a_viewer_gets_no_admin_controls_and_a_wrong_password_gets_the_error_banner() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let target = TargetServer::start().await;
    let queue = app.unique_queue("console-viewer");
    let consumer = api
        .queue_with_consumer(&queue, &target.url("/hook"), json!({}))
        .await;
    let viewer_key = app.create_api_key("viewer").await;
    let browser = Browser::start("viewer").await;

    // A wrong password: the banner, and still the form.
    open_console(&browser, &app, "#/consumers").await;
    sign_in(&browser, &app.admin_user, "not-the-password", "").await;
    let banner = error_banner(&browser).await;
    assert!(
        banner
            .as_str()
            .is_some_and(|t| t.contains("Sign-in failed")),
        "{banner}"
    );
    let form_shown = browser
        .eval("return document.querySelector('#signin').offsetParent !== null && sessionStorage.length === 0")
        .await;
    assert_eq!(form_shown, true);
    browser.screenshot("wrong-password").await;

    // A viewer's API key (it wins over a filled user name): every view,
    // and no control that changes anything.
    sign_in(&browser, "someone", "anything", &viewer_key).await;
    wait_signed_in(&browser).await;
    let role = browser
        .eval("return document.querySelector('#who-role').textContent")
        .await;
    assert_eq!(role, "viewer");
    // The address it was opened on is where it lands.
    browser
        .wait_for(
            UI,
            "the consumer's row for the viewer",
            &format!(r#"return !!document.querySelector('[data-testid="consumers"] tr[data-consumer-id="{consumer}"][data-state]')"#),
        )
        .await;
    let no_controls = r#"return document.querySelectorAll(
        '[data-action="pause"], [data-action="resume"], [data-action="delete"], [data-action="replay"], [data-action="publish"], form.create'
    ).length"#;
    assert_eq!(browser.eval(no_controls).await, 0, "consumers view");
    browser.screenshot("viewer-consumers").await;
    for hash in ["#/queues", &format!("#/dead-letters/{queue}"), "#/overview"] {
        go(&browser, hash).await;
        browser
            .wait_for(
                UI,
                &format!("{hash} rendered"),
                r#"return !!document.querySelector('[data-testid="queues"] tr[data-queue], [data-testid="dead-letters"] tbody tr, [data-testid="trouble"]')"#,
            )
            .await;
        assert_eq!(browser.eval(no_controls).await, 0, "{hash}");
    }

    // The API agrees the viewer may look but not touch.
    let refused = app
        .post_json_with_auth(
            "/pauseConsumer",
            &json!({ "consumerId": consumer }),
            &crate::support::bearer(&viewer_key),
        )
        .await;
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
    let whoami = assert_json(
        app.get_with_auth("/whoami", &crate::support::bearer(&viewer_key))
            .await,
        reqwest::StatusCode::OK,
    )
    .await;
    assert_eq!(whoami["role"], "viewer", "{whoami}");

    // A revoked key: the next data call answers 401 and the page returns
    // to the sign-in form, saying why.
    let key_id = viewer_key
        .split('_')
        .nth(1)
        .expect("wrmq_<keyId>_<secret>")
        .to_owned();
    assert_json(
        api.post("/deleteApiKey", &json!({ "keyId": key_id })).await,
        reqwest::StatusCode::OK,
    )
    .await;
    browser
        .wait_for(
            UI,
            "the sign-in form once the key is revoked",
            r#"return document.querySelector('#signin').offsetParent !== null
               && document.querySelector('[data-testid="error"]').offsetParent !== null
               && sessionStorage.length === 0"#,
        )
        .await;

    // Only the refusals may have logged: the wrong password's 401 (which
    // also shows the console log is read at all) and the revoked key's.
    let refusals = assert_stays_home_and_quiet(
        &browser,
        &app,
        &["Failed to load resource: the server responded with a status of 401"],
    )
    .await;
    assert!(refusals >= 2, "the 401s in the console log: {refusals}");
    browser.close().await;
}

#[tokio::test]
async fn the_console_is_served_without_credentials_under_a_self_only_policy() {
    let app = spawn_app().await;
    let root = app
        .http
        .get(app.url("/"))
        .send()
        .await
        .expect("GET / answers");
    assert_eq!(
        root.url().path(),
        "/dashboard",
        "/ redirects to the console"
    );
    for (path, kind) in [
        ("/dashboard", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let response = app
            .request_anonymous(reqwest::Method::GET, path, None)
            .await;
        assert_eq!(response.status(), reqwest::StatusCode::OK, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        let csp = header("content-security-policy");
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("connect-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
    }
    // The data is not: without credentials, 401.
    let data = app
        .request_anonymous(reqwest::Method::GET, "/whoami", None)
        .await;
    assert_eq!(data.status(), reqwest::StatusCode::UNAUTHORIZED);
    let who = assert_json(app.get("/whoami").await, reqwest::StatusCode::OK).await;
    assert_eq!(who, json!({ "name": app.admin_user, "role": "admin" }));
}

#[tokio::test]
async fn the_messages_view_shows_a_retried_messages_timeline_and_its_consumers_failures() {
    let app = spawn_app().await;
    let target = TargetServer::start().await;
    target.script(
        "/flaky",
        vec![Reply::status(503).with_body("busy, try later")],
        Reply::ok(),
    );
    let (api, queue, consumer) = crate::support::running_consumer_on(
        &app,
        &target,
        "console-history",
        "/flaky",
        json!({ "consumerName": "flaky-hook",
                "retry": { "maxAttempts": 3, "initialDelayMs": 300, "multiplier": 2, "maxDelayMs": 1000 } }),
    )
    .await;
    let message = app.publish(&queue, json!({ "order": 7 })).await;
    target
        .wait_for_delivered(&[message.clone()].into(), DELIVERY)
        .await;
    api.wait_for_consumer(&consumer, DELIVERY, "acked after one retry", |v| {
        v["stats"]["acked"] == 1 && v["stats"]["retried"] == 1
    })
    .await;
    let viewer_key = app.create_api_key("viewer").await;

    // Searched from the Messages tab: the queue chosen, the id typed.
    let browser = Browser::start("messages").await;
    open_console(&browser, &app, "#/messages").await;
    sign_in(&browser, &app.admin_user, &app.admin_password, "").await;
    wait_signed_in(&browser).await;
    let search = r#"[data-testid="message-search"]"#;
    browser
        .wait_for(
            UI,
            "the queue among the choices",
            &format!(
                r#"return !!document.querySelector('{search} select option[value={}]')"#,
                js(&queue)
            ),
        )
        .await;
    browser
        .eval(&format!(
            r#"document.querySelector('{search} select').value = {}; return true"#,
            js(&queue)
        ))
        .await;
    browser
        .fill(&format!(r#"{search} input[name="messageId"]"#), &message)
        .await;
    browser
        .click(&format!(r#"{search} button[type="submit"]"#))
        .await;

    // The attempt records are written in bulk, off the delivery path: the
    // view shows them once they are stored.
    let rows = r#"Array.from(document.querySelectorAll('[data-testid="message-history"] tr[data-testid="attempt"]'))"#;
    let outcomes = browser
        .wait_for(
            DELIVERY,
            "two attempts in the timeline",
            &format!(
                "const rows = {rows}; return rows.length === 2 ? rows.map(r => r.dataset.outcome) : null"
            ),
        )
        .await;
    assert_eq!(outcomes, json!(["retry_scheduled", "delivered"]));
    let shown = browser
        .eval(&format!(
            r#"return {rows}.map(r => ({{
                 status: r.querySelector('[data-field="status"]').textContent,
                 text: r.textContent,
               }}))"#
        ))
        .await;
    assert_eq!(shown[0]["status"], "503", "{shown}");
    assert_eq!(shown[1]["status"], "200", "{shown}");
    let first = shown[0]["text"].as_str().unwrap_or_default();
    assert!(
        first.contains("busy, try later"),
        "the answer's excerpt: {first}"
    );
    assert!(first.contains("flaky-hook"), "the consumer's name: {first}");
    let state = browser
        .eval(r#"return document.querySelector('[data-testid="message-history"]').dataset.state"#)
        .await;
    assert_eq!(state, "delivered");
    assert_eq!(
        browser.eval("return location.hash").await,
        json!(format!("#/messages/{queue}/{message}")),
        "the search is an address to come back to"
    );
    browser.screenshot("timeline").await;

    // The consumer's link: its recent failures, the 503 among them.
    browser
        .eval(&format!(
            r##"{rows}[0].querySelector('a[href^="#/failures/"]').click(); return true"##
        ))
        .await;
    let failures = browser
        .wait_for(
            UI,
            "the consumer's failures",
            r#"const rows = Array.from(document.querySelectorAll('[data-testid="failures"] tr[data-attempt-id]'));
               return rows.length ? rows.map(r => r.dataset.outcome) : null"#,
        )
        .await;
    assert_eq!(failures, json!(["retry_scheduled"]));
    // Its filters go to the API, each step changing what the list shows:
    // by error kind (listed from the spec), then by outcome.
    let failure_rows =
        r#"document.querySelectorAll('[data-testid="failures"] tr[data-attempt-id]').length"#;
    for (select, value, rows) in [
        ("errorKind", "timeout", 0),
        ("errorKind", "http_status", 1),
        ("outcome", "dead_lettered", 0),
    ] {
        let chosen = browser
            .eval(&format!(
                r#"const s = document.querySelector('select[name="{select}"]'); s.value = {};
                   s.dispatchEvent(new Event("change")); return s.value"#,
                js(value)
            ))
            .await;
        assert_eq!(chosen, value, "{select} offers {value}");
        browser
            .wait_for(
                UI,
                &format!("{rows} failure(s) with {select} {value}"),
                &format!("return {failure_rows} === {rows}"),
            )
            .await;
    }
    assert_eq!(
        browser.eval("return location.hash").await,
        json!(format!("#/failures/{consumer}"))
    );
    browser.screenshot("failures").await;

    // A viewer sees the same timeline without the answer's body.
    browser.click("#sign-out").await;
    sign_in(&browser, "", "", &viewer_key).await;
    wait_signed_in(&browser).await;
    go(&browser, &format!("#/messages/{queue}/{message}")).await;
    let first = browser
        .wait_for(
            UI,
            "the timeline for a viewer",
            &format!("const rows = {rows}; return rows.length === 2 ? rows[0].textContent : null"),
        )
        .await;
    let first = first.as_str().unwrap_or_default();
    assert!(!first.contains("busy, try later"), "{first}");
    assert!(first.contains("hidden for this role"), "{first}");

    assert_eq!(assert_stays_home_and_quiet(&browser, &app, &[]).await, 0);
    browser.close().await;
    target.stop().await;
}

#[tokio::test]
async fn a_publisher_publishes_a_batch_from_the_queues_view_and_reads_what_was_refused() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let queue = app.unique_queue("console-batch");
    api.create_queue(&queue).await;
    let publisher_key = app.create_api_key("publisher").await;
    let browser = Browser::start("publisher").await;

    open_console(&browser, &app, "#/queues").await;
    sign_in(&browser, "", "", &publisher_key).await;
    wait_signed_in(&browser).await;
    let form = r#"form[data-testid="publish-batch"]"#;
    browser
        .wait_for(
            UI,
            "the publish form",
            &format!("return !!document.querySelector('{form}')"),
        )
        .await;

    let submit = |lines: &'static str| {
        let browser = &browser;
        async move {
            browser
                .fill(&format!(r#"{form} textarea[name="messages"]"#), lines)
                .await;
            browser
                .click(&format!(r#"{form} button[type="submit"]"#))
                .await;
        }
    };

    // One JSON value a line, in one request.
    browser
        .fill(&format!(r#"{form} input[name="queueName"]"#), &queue)
        .await;
    submit("{\"n\": 1}\n\n\"two\"").await;
    let notice = browser
        .wait_for(
            UI,
            "the notice",
            r#"const n = document.querySelector('#notice');
               return n.hidden ? null : n.textContent"#,
        )
        .await;
    assert_eq!(
        notice,
        json!(format!("2 messages published to {queue}.")),
        "{notice}"
    );
    let first = app.get_message(&queue).await.expect("the first message");
    assert_eq!(first.delivery.data, br#"{"n":1}"#);
    let second = app.get_message(&queue).await.expect("the second message");
    assert_eq!(second.delivery.data, br#""two""#);

    // A line the gateway refuses (null is no message) is named in the
    // banner; the others are published.
    submit("{\"n\": 3}\nnull").await;
    let banner = error_banner(&browser).await;
    let banner = banner.as_str().unwrap_or_default();
    assert!(
        banner.contains("1 of 2 published")
            && banner.contains("line 2")
            && banner.contains("message"),
        "{banner}"
    );
    assert_eq!(app.message_count(&queue).await, Some(1));

    assert_stays_home_and_quiet(&browser, &app, &[]).await;
    browser.close().await;
}
