//! The README's "Try it" walk-through, run step by step against a fresh
//! gateway, so every answer it documents is what a newcomer gets.
//!
//! The section is read from README.md at run time. A step is a ```sh block
//! holding one `curl` command (with a `# → <status>` comment line) followed
//! by a ```json or ```text block with the documented answer. In a JSON
//! answer the string "…" matches any value, "…" inside a string matches any
//! run of characters, a member `"…": "…"` allows further members and a last
//! array element "…" allows further elements. A text answer's lines must
//! each match a line of the body. `NAME=$(curl … | jq -r .field)` keeps a
//! field of the answer in `$NAME` for later steps.
//!
//! What the section does outside steps, the test does its own way: the
//! `echo 'KEY=value' >> .env` lines become the gateway's settings, the
//! receiver the section starts (`docs/hook.py`) runs as written (on a free
//! port instead of 18511),
//! and the gateway runs on a RabbitMQ vhost and a database of its own, as
//! fresh as a newcomer's, with the built-in consumers on.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::spawn_app_with;
use crate::support::vhost::OwnVhost;

/// The address the README's commands name, replaced by the test gateway's.
const README_ADDRESS: &str = "http://127.0.0.1:8080";
/// The walk-through's webhook receiver, which the section starts.
const RECEIVER: &str = "docs/hook.py";
/// The README receiver's port, replaced by a free one.
const README_RECEIVER_PORT: &str = "18511";
/// How long a GET step may take to show its documented answer: consumers,
/// the built-in handlers and the management API's statistics (refreshed
/// every 5 s) all catch up on their own time.
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);
/// The wildcard of documented answers.
const ANY: &str = "…";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_it_walk_through_answers_as_the_readme_says() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md is readable");
    let walk = parse_section(section(&readme, "## Try it"));
    assert!(
        walk.steps.len() >= 20,
        "the walk-through has only {} steps: is the section still there?",
        walk.steps.len()
    );

    let receiver_port = testkit::free_port().expect("a free port");
    let _receiver = start_receiver(&walk.receiver, receiver_port).await;
    let vhost = OwnVhost::create("workerrmq-try-it").await;
    let mut settings: Vec<(&str, &str)> = vec![
        ("AMQP_URL", vhost.amqp_url.as_str()),
        ("BUILTIN_CONSUMERS", "true"),
        ("BUILTIN_QUEUE_PREFIX", ""),
    ];
    settings.extend(walk.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let app = spawn_app_with(&settings).await;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");
    let mut vars = HashMap::from([
        ("ADMIN_PASSWORD".to_owned(), app.admin_password.clone()),
        ("ADMIN_USER".to_owned(), app.admin_user.clone()),
    ]);
    let port = receiver_port.to_string();
    for step in &walk.steps {
        let command = step.command.replace(README_RECEIVER_PORT, &port);
        let answer = step.answer.replace(README_RECEIVER_PORT, &port);
        let (capture, curl) = split_capture(&command);
        let request = Curl::parse(&words(&curl, &vars), &app.address, step.line);
        let body = run_step(&http, &request, step, &answer).await;
        if let Some((name, field)) = capture {
            let value = field_of(&body, &field)
                .unwrap_or_else(|| panic!("README line {}: no `{field}` in {body}", step.line));
            vars.insert(name, value);
        }
    }
}

/// Sends the step's request (again, for a GET, until the documented answer
/// shows or the deadline passes) and returns the body.
async fn run_step(http: &reqwest::Client, request: &Curl, step: &Step, answer: &str) -> String {
    let started = Instant::now();
    loop {
        let (status, body) = request.send(http).await;
        let verdict = if status != step.status {
            Err(format!("status {status}, documented {}", step.status))
        } else {
            step.kind.matches(answer, &body)
        };
        match verdict {
            Ok(()) => return body,
            Err(reason)
                if request.method != reqwest::Method::GET
                    || started.elapsed() >= SETTLE_DEADLINE =>
            {
                panic!(
                    "README line {}: `{}`\n{reason}\ndocumented: {answer}\nanswered:   {body}",
                    step.line, step.command
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The section from its heading to the next heading of its level.
fn section<'a>(readme: &'a str, heading: &str) -> Vec<(usize, &'a str)> {
    readme
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line))
        .skip_while(|(_, line)| line.trim_end() != heading)
        .enumerate()
        .take_while(|(i, (_, line))| *i == 0 || !line.starts_with("## "))
        .map(|(_, numbered)| numbered)
        .collect()
}

struct Walk {
    steps: Vec<Step>,
    receiver: String,
    /// `echo 'KEY=value' >> .env` lines of the setup blocks.
    env: Vec<(String, String)>,
}

struct Step {
    /// The README line of the command, for failures.
    line: usize,
    command: String,
    status: u16,
    kind: AnswerKind,
    answer: String,
}

struct Block {
    lang: String,
    first_line: usize,
    last_line: usize,
    body: String,
}

fn parse_section(lines: Vec<(usize, &str)>) -> Walk {
    assert!(!lines.is_empty(), "README.md has no `## Try it` section");
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (number, line) in &lines {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(lang)) => {
                open = Some(Block {
                    lang: lang.trim().to_owned(),
                    first_line: *number,
                    last_line: *number,
                    body: String::new(),
                })
            }
            (Some(block), Some(_)) => {
                block.last_line = *number;
                blocks.extend(open.take());
            }
            (Some(block), None) => {
                block.body.push_str(line);
                block.body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(
        open.is_none(),
        "a code block in `## Try it` is never closed"
    );

    let blank_between = |a: &Block, b: &Block| {
        lines
            .iter()
            .filter(|(n, _)| *n > a.last_line && *n < b.first_line)
            .all(|(_, line)| line.trim().is_empty())
    };
    let mut walk = Walk {
        steps: Vec::new(),
        receiver: String::new(),
        env: Vec::new(),
    };
    for (i, block) in blocks.iter().enumerate() {
        if block.lang != "sh" {
            continue;
        }
        let answer = blocks
            .get(i + 1)
            .filter(|next| blank_between(block, next))
            .and_then(|next| AnswerKind::of(&next.lang).map(|kind| (kind, next)));
        match answer {
            Some((kind, next)) => walk.steps.push(step(block, kind, &next.body)),
            None if block.body.contains("curl ") => panic!(
                "README line {}: a curl command with no ```json or ```text answer after it",
                block.first_line
            ),
            None => walk.env.extend(env_lines(&block.body)),
        }
    }
    assert!(
        lines.iter().any(|(_, line)| line.contains(RECEIVER)),
        "`## Try it` no longer starts its receiver, {RECEIVER}"
    );
    walk.receiver = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(RECEIVER))
        .expect("the walk-through's receiver is readable");
    walk
}

fn step(block: &Block, kind: AnswerKind, answer: &str) -> Step {
    let mut status = None;
    let mut command = String::new();
    for line in block.body.lines() {
        let line = line.trim();
        if let Some(comment) = line.strip_prefix('#') {
            if let Some((_, after)) = comment.split_once('→') {
                status = after.trim().get(..3).and_then(|s| s.parse().ok());
            }
        } else if !line.is_empty() {
            match line.strip_suffix('\\') {
                Some(part) => {
                    command.push_str(part);
                    command.push(' ');
                }
                None => {
                    command.push_str(line);
                    command.push('\n');
                }
            }
        }
    }
    let command = command.trim().to_owned();
    assert!(
        !command.contains('\n'),
        "README line {}: a step holds one command, this one has several",
        block.first_line
    );
    Step {
        line: block.first_line,
        status: status.unwrap_or_else(|| {
            panic!(
                "README line {}: the step has no `# → <status>` comment",
                block.first_line
            )
        }),
        command,
        kind,
        answer: answer.trim().to_owned(),
    }
}

/// `echo 'KEY=value' >> .env` lines.
fn env_lines(body: &str) -> Vec<(String, String)> {
    body.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("echo '")?;
            let (assignment, tail) = rest.split_once('\'')?;
            if !tail.trim_start().starts_with(">> .env") {
                return None;
            }
            let (key, value) = assignment.split_once('=')?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// `NAME=$(curl … | jq -r .field)` into the name, the field and the curl
/// command; any other command as it is.
fn split_capture(command: &str) -> (Option<(String, String)>, String) {
    let captured = command.split_once("=$(").and_then(|(name, rest)| {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        let inner = rest.strip_suffix(')')?;
        let (curl, field) = inner.rsplit_once("| jq -r ")?;
        valid.then(|| {
            (
                Some((name.to_owned(), field.trim().to_owned())),
                curl.trim().to_owned(),
            )
        })
    });
    captured.unwrap_or_else(|| (None, command.to_owned()))
}

/// jq's `.a.b` of a JSON body, a string as it is, anything else as JSON.
fn field_of(body: &str, path: &str) -> Option<String> {
    let mut value: Value = serde_json::from_str(body).ok()?;
    for key in path.strip_prefix('.')?.split('.') {
        value = value.get(key)?.clone();
    }
    Some(match value {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

/// The shell's words of a command line: single and double quotes,
/// backslash escapes, and `$NAME` / `${NAME}` from `vars` (outside single
/// quotes).
fn words(line: &str, vars: &HashMap<String, String>) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut started = false;
    let mut chars = line.chars().peekable();
    let expand = |chars: &mut std::iter::Peekable<std::str::Chars>, word: &mut String| {
        let braced = chars.peek() == Some(&'{');
        if braced {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if braced {
            assert_eq!(chars.next(), Some('}'), "an unclosed ${{ in `{line}`");
        }
        let value = vars
            .get(&name)
            .unwrap_or_else(|| panic!("`${name}` is used before a step sets it: `{line}`"));
        word.push_str(value);
    };
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
                continue;
            }
            '\'' => {
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some(e @ ('"' | '\\' | '$' | '`')) => word.push(e),
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => {}
                        },
                        '$' => expand(&mut chars, &mut word),
                        c => word.push(c),
                    }
                }
            }
            '\\' => word.extend(chars.next()),
            '$' => expand(&mut chars, &mut word),
            c => word.push(c),
        }
        started = true;
    }
    if started {
        words.push(word);
    }
    words
}

/// A curl command line of the forms the README uses.
struct Curl {
    method: reqwest::Method,
    url: String,
    user: Option<(String, String)>,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

impl Curl {
    fn parse(words: &[String], address: &str, line: usize) -> Curl {
        assert_eq!(
            words.first().map(String::as_str),
            Some("curl"),
            "README line {line}: a step runs curl"
        );
        let mut curl = Curl {
            method: reqwest::Method::GET,
            url: String::new(),
            user: None,
            headers: Vec::new(),
            body: None,
        };
        let mut method = None;
        let mut args = words[1..].iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .unwrap_or_else(|| panic!("README line {line}: `{arg}` without a value"))
                    .clone()
            };
            match arg.as_str() {
                "-s" | "-S" | "-sS" => {}
                "-u" => {
                    let pair = value();
                    let (user, password) = pair.split_once(':').unwrap_or((&pair, ""));
                    curl.user = Some((user.to_owned(), password.to_owned()));
                }
                "-H" => {
                    let header = value();
                    let (name, value) = header
                        .split_once(':')
                        .unwrap_or_else(|| panic!("README line {line}: header `{header}`"));
                    curl.headers
                        .push((name.trim().to_owned(), value.trim().to_owned()));
                }
                "-d" => curl.body = Some(value()),
                "-X" => method = Some(value()),
                url if url.starts_with(README_ADDRESS) => {
                    curl.url = format!("{address}{}", &url[README_ADDRESS.len()..]);
                }
                other => panic!("README line {line}: the test does not know curl's `{other}`"),
            }
        }
        assert!(
            !curl.url.is_empty(),
            "README line {line}: no {README_ADDRESS} URL"
        );
        curl.method = match (method, &curl.body) {
            (Some(m), _) => m.parse().expect("an HTTP method"),
            (None, Some(_)) => reqwest::Method::POST,
            (None, None) => reqwest::Method::GET,
        };
        // curl's own default for -d.
        if curl.body.is_some()
            && !curl
                .headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            curl.headers.push((
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            ));
        }
        curl
    }

    async fn send(&self, http: &reqwest::Client) -> (u16, String) {
        let mut request = http.request(self.method.clone(), &self.url);
        if let Some((user, password)) = &self.user {
            request = request.basic_auth(user, Some(password));
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Some(body) = &self.body {
            request = request.body(body.clone());
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} {}: {e}", self.method, self.url));
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }
}

#[derive(Clone, Copy)]
enum AnswerKind {
    Json,
    Text,
}

impl AnswerKind {
    fn of(lang: &str) -> Option<AnswerKind> {
        match lang {
            "json" => Some(AnswerKind::Json),
            "text" => Some(AnswerKind::Text),
            _ => None,
        }
    }

    fn matches(self, documented: &str, body: &str) -> Result<(), String> {
        match self {
            AnswerKind::Json => {
                let documented: Value = serde_json::from_str(documented)
                    .map_err(|e| format!("the documented answer is not JSON: {e}"))?;
                let actual: Value = serde_json::from_str(body)
                    .map_err(|e| format!("the answer is not JSON: {e}"))?;
                json_matches(&documented, &actual, "$")
            }
            AnswerKind::Text => documented
                .lines()
                .filter(|line| !line.trim().is_empty())
                .try_for_each(|line| {
                    body.lines()
                        .any(|actual| glob(line.trim(), actual.trim()))
                        .then_some(())
                        .ok_or_else(|| format!("no line of the answer matches `{line}`"))
                }),
        }
    }
}

fn json_matches(documented: &Value, actual: &Value, at: &str) -> Result<(), String> {
    match (documented, actual) {
        (Value::String(d), _) if d == ANY => Ok(()),
        (Value::String(d), Value::String(a)) if d.contains(ANY) => glob(d, a)
            .then_some(())
            .ok_or_else(|| format!("{at}: `{a}` does not match `{d}`")),
        (Value::Object(d), Value::Object(a)) => {
            for (key, value) in d.iter().filter(|(key, _)| key.as_str() != ANY) {
                let actual = a
                    .get(key)
                    .ok_or_else(|| format!("{at}: no member `{key}`"))?;
                json_matches(value, actual, &format!("{at}.{key}"))?;
            }
            if !d.contains_key(ANY) {
                if let Some(extra) = a.keys().find(|key| !d.contains_key(*key)) {
                    return Err(format!("{at}: an undocumented member `{extra}`"));
                }
            }
            Ok(())
        }
        (Value::Array(d), Value::Array(a)) => {
            let open = d.last() == Some(&json!(ANY));
            let fixed = if open { &d[..d.len() - 1] } else { &d[..] };
            if a.len() < fixed.len() || (!open && a.len() != fixed.len()) {
                return Err(format!(
                    "{at}: {} elements, documented {}{}",
                    a.len(),
                    fixed.len(),
                    if open { " or more" } else { "" }
                ));
            }
            fixed
                .iter()
                .zip(a)
                .enumerate()
                .try_for_each(|(i, (d, a))| json_matches(d, a, &format!("{at}[{i}]")))
        }
        (Value::Number(d), Value::Number(a)) if d.as_f64() == a.as_f64() => Ok(()),
        (d, a) if d == a => Ok(()),
        (d, a) => Err(format!("{at}: {a}, documented {d}")),
    }
}

/// Whether `text` is `pattern` with each "…" standing for any characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split(ANY);
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// The README's receiver, as written, on `port`; stopped on drop.
async fn start_receiver(script: &str, port: u16) -> tokio::process::Child {
    let child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script.replace(README_RECEIVER_PORT, &port.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the README's receiver");
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the README's receiver did not listen on {port} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}
