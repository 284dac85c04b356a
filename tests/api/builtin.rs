//! The built-in handlers end to end: the seed routes publish, the built-in
//! consumers apply the events to the store, the GET routes read them back.
//! Real broker, real store; each test has its own queue prefix
//! (`BUILTIN_QUEUE_PREFIX`) and database, and waits with deadlines, never
//! fixed sleeps.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{assert_error, assert_json, eventually, spawn_app_with, TestApp};

const DEADLINE: Duration = Duration::from_secs(30);

async fn spawn_with_builtins(extra: &[(&str, &str)]) -> TestApp {
    let mut vars = vec![("BUILTIN_CONSUMERS", "true")];
    vars.extend_from_slice(extra);
    spawn_app_with(&vars).await
}

fn users_queue(app: &TestApp) -> String {
    format!("{}users_queue", app.prefix)
}

fn reports_queue(app: &TestApp) -> String {
    format!("{}reports_queue", app.prefix)
}

/// GET `path` until it answers 200 with a body `accept` likes.
async fn get_until(app: &TestApp, path: &str, accept: impl Fn(&Value) -> bool) -> Value {
    eventually(DEADLINE, || async {
        let response = app.get(path).await;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if status == StatusCode::OK && accept(&body) {
            Ok(body)
        } else {
            Err(format!("GET {path}: {status} {body}"))
        }
    })
    .await
}

async fn get_until_gone(app: &TestApp, path: &str) {
    eventually(DEADLINE, || async {
        match app.get(path).await.status() {
            StatusCode::NOT_FOUND => Ok(()),
            other => Err(format!("GET {path}: {other}")),
        }
    })
    .await;
}

/// The consumer on `queue` as `/getConsumers` shows it.
async fn consumer_on(app: &TestApp, queue: &str) -> Result<Value, String> {
    let rows = assert_json(app.get("/getConsumers").await, StatusCode::OK).await;
    rows.as_array()
        .and_then(|rows| rows.iter().find(|r| r["queueName"] == queue).cloned())
        .ok_or_else(|| format!("no consumer on {queue} in {rows}"))
}

/// Waits until the consumer on `queue` has acked at least `count`
/// deliveries: proof that a message was handled, even one that changed
/// nothing.
async fn wait_acked(app: &TestApp, queue: &str, count: u64) {
    eventually(DEADLINE, || async {
        let consumer = consumer_on(app, queue).await?;
        let acked = consumer["stats"]["acked"].as_u64().unwrap_or(0);
        if acked >= count {
            Ok(())
        } else {
            Err(format!("{acked} acked, waiting for {count}: {consumer}"))
        }
    })
    .await
}

async fn publish_with_id(app: &TestApp, queue: &str, message: Value, message_id: &str) {
    assert_json(
        app.post_json(
            "/messagePublish",
            &json!({ "queueName": queue, "message": message, "messageId": message_id }),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
}

/// POST /users and wait until the user is stored; returns it.
async fn create_user(app: &TestApp, email: &str) -> Value {
    let body = assert_json(
        app.post_json(
            "/users",
            &json!({ "nombre": "Ana", "apellido": "Díaz", "email": email }),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(body, json!({ "status": "queued", "email": email }));
    get_until(app, &format!("/users/{email}"), |_| true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_created_updated_and_deleted_through_the_users_queue() {
    let app = spawn_with_builtins(&[]).await;
    let queue = users_queue(&app);

    let body = assert_json(
        app.post_json(
            "/users",
            &json!({
                "nombre": "Ana", "apellido": "Díaz", "email": " Ana@Example.COM ",
                "fecha_nacimiento": "1990-01-01T00:00:00", "biografia": "primera"
            }),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(
        body,
        json!({ "status": "queued", "email": "ana@example.com" })
    );

    let user = get_until(&app, "/users/ana@example.com", |_| true).await;
    assert_eq!(user["user_id"], 1, "{user}");
    assert_eq!(user["calificacion"], 5.0, "{user}");
    assert_eq!(user["numero_reportes"], 0, "{user}");
    assert_eq!(user["nombre"], "Ana");
    assert_eq!(user["fecha_nacimiento"], "1990-01-01T00:00:00");
    assert!(user["fecha_creacion"].as_str().is_some(), "{user}");
    for internal in ["_id", "applied_events", "created_by_event"] {
        assert!(user.get(internal).is_none(), "{internal} shown: {user}");
    }

    // An update sets only what it names.
    app.publish(
        &queue,
        json!({ "event_type": "user.update", "user_id": 1, "nombre": "Anita", "biografia": "nueva" }),
    )
    .await;
    let updated = get_until(&app, "/users/ana@example.com", |u| u["nombre"] == "Anita").await;
    assert_eq!(updated["biografia"], "nueva");
    for unchanged in [
        "apellido",
        "email",
        "fecha_nacimiento",
        "fecha_creacion",
        "calificacion",
        "numero_reportes",
        "user_id",
    ] {
        assert_eq!(updated[unchanged], user[unchanged], "{unchanged} changed");
    }

    // A second user gets the next id.
    let second = create_user(&app, "bo@example.com").await;
    assert_eq!(second["user_id"], 2, "{second}");

    app.publish(
        &queue,
        json!({ "event_type": "user.delete", "email": "ana@example.com" }),
    )
    .await;
    get_until_gone(&app, "/users/ana@example.com").await;
    let missing = app.get("/users/ana@example.com").await;
    assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;

    // Invalid requests never reach the queue.
    let no_name = app
        .post_json("/users", &json!({ "apellido": "x", "email": "x@y.z" }))
        .await;
    let body = assert_error(no_name, StatusCode::BAD_REQUEST, "bad_request").await;
    assert!(
        body["message"].as_str().unwrap().contains("nombre"),
        "{body}"
    );
    let bad_email = app
        .post_json(
            "/users",
            &json!({ "nombre": "x", "apellido": "y", "email": "nope" }),
        )
        .await;
    let body = assert_error(bad_email, StatusCode::BAD_REQUEST, "bad_request").await;
    assert!(
        body["message"].as_str().unwrap().contains("email"),
        "{body}"
    );
    let bad_date = app
        .post_json(
            "/users",
            &json!({ "nombre": "x", "apellido": "y", "email": "x@y.z", "fecha_nacimiento": "ayer" }),
        )
        .await;
    let body = assert_error(bad_date, StatusCode::BAD_REQUEST, "bad_request").await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("fecha_nacimiento"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_count_on_their_author_once_per_event() {
    let app = spawn_with_builtins(&[]).await;
    let queue = reports_queue(&app);
    let author = create_user(&app, "autor@example.com").await;
    let author_id = author["user_id"].as_i64().expect("a user_id");

    // Through the seed route.
    let body = assert_json(
        app.post_json(
            "/reports",
            &json!({ "id_usuario": author_id, "tipo_reporte": 2, "descripcion": "Bache", "ubicacion": "Calle 1" }),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(body["status"], "queued");
    let id_reporte = body["id_reporte"]
        .as_str()
        .expect("an id_reporte")
        .to_owned();
    let report = get_until(&app, &format!("/reports/{id_reporte}"), |_| true).await;
    assert_eq!(report["id_usuario"], author_id, "{report}");
    assert_eq!(report["descripcion"], "Bache");
    assert_eq!(report["visibilidad"], 1.0);
    assert!(report.get("applied_events").is_none(), "{report}");
    let author = get_until(&app, "/users/autor@example.com", |_| true).await;
    assert_eq!(author["numero_reportes"], 1, "{author}");

    // The same event twice (same event_id, different message ids): counted once.
    let event = json!({
        "event_type": "report.create", "event_id": "ev-report-2", "id_reporte": "r-2",
        "id_usuario": author_id, "tipo_reporte": 1, "descripcion": "Farola"
    });
    publish_with_id(&app, &queue, event.clone(), "m-first").await;
    publish_with_id(&app, &queue, event, "m-second").await;
    // Without event_id, the message id is the key.
    let event = json!({
        "event_type": "report.create", "id_reporte": "r-3",
        "id_usuario": author_id, "tipo_reporte": 1, "descripcion": "Árbol"
    });
    publish_with_id(&app, &queue, event.clone(), "m-third").await;
    publish_with_id(&app, &queue, event, "m-third").await;
    wait_acked(&app, &queue, 5).await;
    get_until(&app, "/reports/r-2", |_| true).await;
    get_until(&app, "/reports/r-3", |_| true).await;
    let author = get_until(&app, "/users/autor@example.com", |_| true).await;
    assert_eq!(author["numero_reportes"], 3, "{author}");

    // Hidden with a penalty, delivered twice: one penalty.
    let hide = json!({
        "event_type": "report.update_visibility", "event_id": "ev-hide",
        "id_reporte": id_reporte, "visibilidad": 0.25, "penalize_author": true
    });
    publish_with_id(&app, &queue, hide.clone(), "m-hide-1").await;
    publish_with_id(&app, &queue, hide, "m-hide-2").await;
    wait_acked(&app, &queue, 7).await;
    let report = get_until(&app, &format!("/reports/{id_reporte}"), |_| true).await;
    assert_eq!(report["visibilidad"], 0.25, "{report}");
    let author = get_until(&app, "/users/autor@example.com", |_| true).await;
    assert_eq!(author["calificacion"], 4.5, "{author}");

    app.publish(
        &queue,
        json!({ "event_type": "report.delete", "id_reporte": id_reporte }),
    )
    .await;
    get_until_gone(&app, &format!("/reports/{id_reporte}")).await;

    let bad = app
        .post_json(
            "/reports",
            &json!({ "id_usuario": author_id, "tipo_reporte": 1 }),
        )
        .await;
    let body = assert_error(bad, StatusCode::BAD_REQUEST, "bad_request").await;
    assert!(
        body["message"].as_str().unwrap().contains("descripcion"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_dead_lettered_and_the_consumer_goes_on() {
    let app = spawn_with_builtins(&[]).await;
    let queue = users_queue(&app);

    // Not JSON at all, straight onto the queue.
    let channel = app.amqp_channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"this is not json",
            BasicProperties::default()
                .with_message_id("not-json".into())
                .with_delivery_mode(2),
        )
        .await
        .expect("published")
        .await
        .expect("confirmed");
    assert!(confirm.is_ack(), "{confirm:?}");
    publish_with_id(
        &app,
        &queue,
        json!({ "event_type": "user.explode", "user_id": 1 }),
        "unknown-type",
    )
    .await;

    create_user(&app, "after@example.com").await;

    let letters = eventually(DEADLINE, || async {
        let letters = assert_json(
            app.get(&format!("/getDeadLetters/{queue}")).await,
            StatusCode::OK,
        )
        .await;
        match letters.as_array() {
            Some(rows) if rows.len() >= 2 => Ok(rows.clone()),
            _ => Err(format!("dead letters so far: {letters}")),
        }
    })
    .await;
    let reason_of = |id: &str| {
        letters
            .iter()
            .find(|l| l["messageId"] == id)
            .and_then(|l| l["lastError"].as_str())
            .unwrap_or_else(|| panic!("no dead letter {id} in {letters:?}"))
            .to_owned()
    };
    assert!(reason_of("not-json").contains("not JSON"), "{letters:?}");
    assert!(
        reason_of("unknown-type").contains("unknown event_type"),
        "{letters:?}"
    );
    let consumer = consumer_on(&app, &queue).await.expect("a users consumer");
    assert_eq!(consumer["state"], "running", "{consumer}");
    assert_eq!(consumer["target"]["type"], "builtin", "{consumer}");
}

// --------------------------------------------------------- store outage

/// A SecantusDB of the test's own, on its own port and storage directory.
struct OwnStore {
    python: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<tokio::process::Child>,
}

impl OwnStore {
    /// Runs SecantusDB from the project's venv, which `./run.sh test`
    /// always installs.
    async fn start() -> OwnStore {
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run the suite through ./run.sh test, which installs SecantusDB there",
            python.display()
        );
        let port = testkit::free_port().expect("a free port");
        let dir =
            std::env::temp_dir().join(format!("workerrmq-store-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a storage directory");
        let mut store = OwnStore {
            python,
            port,
            dir,
            child: None,
        };
        store.run().await;
        store
    }

    fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    /// Starts the server on the same port and storage path, and waits until
    /// it accepts connections.
    async fn run(&mut self) {
        let child = tokio::process::Command::new(&self.python)
            .args(["-m", "secantus", "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("SecantusDB starts");
        self.child = Some(child);
        let port = self.port;
        eventually(DEADLINE, || async move {
            TcpStream::connect(("127.0.0.1", port))
                .await
                .map(drop)
                .map_err(|e| format!("SecantusDB on {port}: {e}"))
        })
        .await;
    }

    /// SIGTERM, so it closes its files as a stopped server does; SIGKILL
    /// if it does not go.
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
        let port = self.port;
        eventually(DEADLINE, || async move {
            match TcpStream::connect(("127.0.0.1", port)).await {
                Ok(_) => Err(format!("SecantusDB on {port} still answers")),
                Err(_) => Ok(()),
            }
        })
        .await;
    }
}

impl Drop for OwnStore {
    fn drop(&mut self) {
        // A test that failed midway: kill the server and let it go before
        // its files are removed.
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            let until = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_the_store_is_down_are_applied_when_it_is_back() {
    let mut store = OwnStore::start().await;
    let uri = store.uri();
    let app = spawn_with_builtins(&[("MONGODB_URI", uri.as_str())]).await;
    let queue = users_queue(&app);
    // Running, and the admin credential verified and cached: publishing
    // needs no store while it is down.
    eventually(DEADLINE, || async {
        let consumer = consumer_on(&app, &queue).await?;
        match consumer["state"].as_str() {
            Some("running") => Ok(()),
            other => Err(format!("users consumer is {other:?}")),
        }
    })
    .await;

    store.stop().await;
    let emails = [
        "down1@example.com",
        "down2@example.com",
        "down3@example.com",
    ];
    for email in emails {
        assert_json(
            app.post_json(
                "/users",
                &json!({ "nombre": "N", "apellido": "A", "email": email }),
            )
            .await,
            StatusCode::ACCEPTED,
        )
        .await;
    }
    // The first attempts failed on the store and were scheduled again.
    let retry_queue = format!("{queue}.retry.1000");
    eventually(DEADLINE, || async {
        if app.queue_exists(&retry_queue).await {
            Ok(())
        } else {
            Err(format!("no {retry_queue} yet"))
        }
    })
    .await;
    let started = Instant::now();
    store.run().await;

    let mut ids = Vec::new();
    for email in emails {
        let user = get_until(&app, &format!("/users/{email}"), |_| true).await;
        ids.push(user["user_id"].as_i64().expect("a user_id"));
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each user with its own id: {ids:?}");
    let consumer = consumer_on(&app, &queue).await.expect("a users consumer");
    assert!(
        consumer["stats"]["retried"].as_u64().unwrap_or(0) >= 3,
        "{consumer}"
    );
    assert_eq!(consumer["stats"]["deadLettered"], 0, "{consumer}");
    eprintln!(
        "recovered {:?} after the store came back",
        started.elapsed()
    );

    store.stop().await;
}

// ------------------------------------------------------------ scraping

/// Pages for the scraper, on `127.0.0.1:<random port>`. `/hang` accepts
/// and never answers.
async fn serve_pages() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a listener");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(answer(socket));
        }
    });
    base
}

/// Reads a request's head and returns its path; `None` when the client
/// went away first.
pub(crate) async fn request_path(socket: &mut TcpStream) -> Option<String> {
    let mut request = Vec::new();
    let mut buffer = [0_u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16_384 {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    let head = String::from_utf8_lossy(&request);
    Some(head.split_whitespace().nth(1).unwrap_or("/").to_owned())
}

async fn answer(mut socket: TcpStream) {
    let Some(path) = request_path(&mut socket).await else {
        return;
    };
    let (status, extra, body) = match path.as_str() {
        "/page" => (
            "200 OK",
            "",
            r#"<!doctype html><html><head><title> Acme  Anvils </title>
            <meta name="description" content="Anvils since 1920">
            </head><body>
            <a href="/about">About</a> <a href="/about#team">Team</a>
            <a href="http://other.example/x">Partner</a>
            <a href="mailto:Sales@Acme.Example?subject=Hi">Sales</a>
            <p>Support: support@acme.example</p>
            </body></html>"#,
        ),
        "/moved" => ("302 Found", "Location: /second\r\n", ""),
        "/second" => (
            "200 OK",
            "",
            "<html><head><title>Second</title></head><body>info@second.example</body></html>",
        ),
        "/broken" => ("500 Internal Server Error", "", "boom"),
        "/hang" => {
            // Hold the connection, never answer.
            std::future::pending::<()>().await;
            return;
        }
        _ => ("404 Not Found", "", "no such page"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

async fn submit_job(app: &TestApp, body: Value) -> String {
    let answer = assert_json(
        app.post_json("/jobs/scrape", &body).await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(answer["status"], "queued");
    answer["job_id"].as_str().expect("a job_id").to_owned()
}

fn finished(job: &Value) -> bool {
    matches!(job["status"].as_str(), Some("completed" | "failed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_jobs_fetch_their_pages_and_record_what_failed() {
    // The pages are on this machine, which the network guard refuses
    // unless the operator lists the host.
    let app = spawn_with_builtins(&[
        ("SCRAPE_TIMEOUT_MS", "1000"),
        ("SCRAPE_ALLOWED_HOSTS", "127.0.0.1"),
    ])
    .await;
    let base = serve_pages().await;
    let urls = ["/page", "/moved", "/broken", "/hang"].map(|p| format!("{base}{p}"));

    let job_id = submit_job(
        &app,
        json!({ "user_id": "u-1", "industry": "SaaS", "keywords": ["anvil"], "urls": urls }),
    )
    .await;
    // Readable at once, before any consumer touched it.
    let early = assert_json(app.get(&format!("/jobs/{job_id}")).await, StatusCode::OK).await;
    assert_eq!(early["job_id"], job_id.as_str());
    assert!(
        matches!(
            early["status"].as_str(),
            Some("queued" | "running" | "completed")
        ),
        "{early}"
    );

    let job = get_until(&app, &format!("/jobs/{job_id}"), finished).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["error"], Value::Null, "{job}");
    let results = job["results"].as_array().expect("results");
    assert_eq!(results.len(), 4, "{job}");
    let page = &results[0];
    assert_eq!(page["url"], urls[0].as_str());
    assert_eq!(page["httpStatus"], 200);
    assert_eq!(page["title"], "Acme Anvils");
    assert_eq!(page["description"], "Anvils since 1920");
    assert_eq!(
        page["links"],
        json!([format!("{base}/about"), "http://other.example/x"])
    );
    assert_eq!(
        page["emails"],
        json!(["sales@acme.example", "support@acme.example"])
    );
    assert_eq!(page["error"], Value::Null);

    let moved = &results[1];
    assert_eq!(moved["httpStatus"], 200, "{moved}");
    assert_eq!(moved["title"], "Second", "{moved}");
    assert_eq!(moved["emails"], json!(["info@second.example"]));

    let broken = &results[2];
    assert_eq!(broken["httpStatus"], 500, "{broken}");
    assert!(
        broken["error"].as_str().is_some_and(|e| e.contains("500")),
        "{broken}"
    );

    let hang = &results[3];
    assert_eq!(hang["httpStatus"], Value::Null, "{hang}");
    assert!(
        hang["error"]
            .as_str()
            .is_some_and(|e| e.contains("1000 ms")),
        "{hang}"
    );

    // The same job again changes nothing.
    let scrape_queue = format!("{}scrape_jobs", app.prefix);
    publish_with_id(
        &app,
        &scrape_queue,
        json!({ "job_id": job_id, "urls": [format!("{base}/second")] }),
        "again",
    )
    .await;
    wait_acked(&app, &scrape_queue, 2).await;
    let again = assert_json(app.get(&format!("/jobs/{job_id}")).await, StatusCode::OK).await;
    assert_eq!(again, job);

    // Nothing could be fetched: the job failed, with the reason.
    let failed_id = submit_job(&app, json!({ "urls": [format!("{base}/hang")] })).await;
    let failed = get_until(&app, &format!("/jobs/{failed_id}"), finished).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("none of the 1")),
        "{failed}"
    );

    // A job with no URLs completes with no results; one published without
    // the seed route gets its record made by the handler.
    let direct = uuid::Uuid::new_v4().to_string();
    publish_with_id(
        &app,
        &scrape_queue,
        json!({ "job_id": direct, "industry": "Retail" }),
        "direct",
    )
    .await;
    let job = get_until(&app, &format!("/jobs/{direct}"), finished).await;
    assert_eq!(
        job,
        json!({ "job_id": direct, "status": "completed", "results": [], "error": null })
    );

    let bad = app
        .post_json("/jobs/scrape", &json!({ "urls": ["ftp://example.com/x"] }))
        .await;
    let body = assert_error(bad, StatusCode::BAD_REQUEST, "bad_request").await;
    assert!(
        body["message"].as_str().unwrap().contains("urls[0]"),
        "{body}"
    );
    let missing = app.get("/jobs/no-such-job").await;
    assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_job_past_its_deadline_completes_with_what_it_has() {
    let app = spawn_with_builtins(&[
        ("SCRAPE_TIMEOUT_MS", "60000"),
        ("SCRAPE_JOB_TIMEOUT_MS", "1500"),
        ("SCRAPE_ALLOWED_HOSTS", "127.0.0.1"),
    ])
    .await;
    let base = serve_pages().await;
    let urls = ["/page", "/hang", "/hang"].map(|p| format!("{base}{p}"));
    let started = Instant::now();

    let job_id = submit_job(&app, json!({ "urls": urls })).await;
    let job = get_until(&app, &format!("/jobs/{job_id}"), finished).await;

    // Long before the per-URL timeout of a minute.
    assert!(started.elapsed() < DEADLINE, "{:?}", started.elapsed());
    assert_eq!(job["status"], "completed", "{job}");
    let results = job["results"].as_array().expect("results");
    assert_eq!(results[0]["title"], "Acme Anvils", "{job}");
    for cut in &results[1..] {
        assert_eq!(cut["httpStatus"], Value::Null, "{cut}");
        assert!(
            cut["error"]
                .as_str()
                .is_some_and(|e| e.contains("deadline passed")),
            "{cut}"
        );
    }
    assert!(
        job["error"]
            .as_str()
            .is_some_and(|e| e.contains("2 URL(s) were not fetched")),
        "{job}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_jobs_refuse_a_used_job_id_and_keys_the_store_cannot_keep() {
    let app = spawn_with_builtins(&[]).await;
    let job_id = format!("job-{}", uuid::Uuid::new_v4());

    let first = submit_job(&app, json!({ "job_id": job_id, "industry": "SaaS" })).await;
    assert_eq!(first, job_id);
    let again = app
        .post_json(
            "/jobs/scrape",
            &json!({ "job_id": job_id, "industry": "Other" }),
        )
        .await;
    let body = assert_error(again, StatusCode::CONFLICT, "conflict").await;
    assert!(
        body["message"].as_str().unwrap().contains("job_id"),
        "{body}"
    );
    // The first job is the one that stays.
    let job = get_until(&app, &format!("/jobs/{job_id}"), finished).await;
    assert_eq!(job["status"], "completed", "{job}");

    for (body, field) in [
        // serde_json sends the NUL as JSON's \u0000 escape.
        (json!({ "filters": { "a\u{0}b": 1 } }), "filters"),
        (json!({ "filters": { "x": { "$where": "1" } } }), "filters"),
        (json!({ "user_id": { "a.b": 1 } }), "user_id"),
    ] {
        let response = app.post_json("/jobs/scrape", &body).await;
        let answer = assert_error(response, StatusCode::BAD_REQUEST, "bad_request").await;
        assert!(
            answer["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("`{field}"))),
            "{body}: {answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_queues_and_consumers_are_made_once_at_start_up() {
    let app = spawn_with_builtins(&[]).await;
    let consumers = assert_json(app.get("/getConsumers").await, StatusCode::OK).await;
    let mine: Vec<&Value> = consumers
        .as_array()
        .expect("a list")
        .iter()
        .filter(|c| {
            c["queueName"]
                .as_str()
                .is_some_and(|q| q.starts_with(&app.prefix))
        })
        .collect();
    assert_eq!(mine.len(), 3, "{consumers}");
    for (suffix, handler) in [
        ("users_queue", "user"),
        ("reports_queue", "report"),
        ("scrape_jobs", "scrape"),
    ] {
        let queue = format!("{}{suffix}", app.prefix);
        assert!(app.queue_exists(&queue).await, "{queue}");
        assert!(
            app.queue_exists(&format!("{queue}.dlq")).await,
            "{queue}.dlq"
        );
        let consumer = mine
            .iter()
            .find(|c| c["queueName"] == queue.as_str())
            .unwrap_or_else(|| panic!("no consumer on {queue}"));
        assert_eq!(
            consumer["target"],
            json!({ "type": "builtin", "handler": handler })
        );
        assert_eq!(consumer["retry"]["maxAttempts"], 10, "{consumer}");
    }

    // A second replica on the same broker, store and prefix adds none.
    let db = app.db_name.clone();
    let prefix = app.prefix.clone();
    let replica = spawn_with_builtins(&[
        ("MONGODB_DB", db.as_str()),
        ("BUILTIN_QUEUE_PREFIX", prefix.as_str()),
    ])
    .await;
    let consumers = assert_json(replica.get("/getConsumers").await, StatusCode::OK).await;
    let count = consumers
        .as_array()
        .expect("a list")
        .iter()
        .filter(|c| {
            c["queueName"]
                .as_str()
                .is_some_and(|q| q.starts_with(&prefix))
        })
        .count();
    assert_eq!(count, 3, "{consumers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_routes_are_documented_and_need_their_queue() {
    // Without BUILTIN_CONSUMERS there is no users queue to publish to.
    let app = spawn_app_with(&[]).await;
    let response = app
        .post_json(
            "/users",
            &json!({ "nombre": "A", "apellido": "B", "email": "a@b.c" }),
        )
        .await;
    let body = assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    assert!(
        body["message"].as_str().unwrap().contains("users_queue"),
        "{body}"
    );

    let spec = assert_json(
        app.request_anonymous(reqwest::Method::GET, "/openapi.json", None)
            .await,
        StatusCode::OK,
    )
    .await;
    for (path, method) in [
        ("/users", "post"),
        ("/users/{email}", "get"),
        ("/reports", "post"),
        ("/reports/{idReporte}", "get"),
        ("/jobs/scrape", "post"),
        ("/jobs/{jobId}", "get"),
    ] {
        assert!(
            spec["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
}
