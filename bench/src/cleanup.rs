//! Queues left by a run, removed whatever happened to it: every queue the
//! bench makes carries this run's tag in its name (`run_tag`), and after
//! the gateway has stopped, the broker's queues with that tag (companions
//! such as `.dlq` and retry queues included) are deleted through the
//! management API. Other benches on the same broker have other tags.

use anyhow::Context;
use std::sync::OnceLock;

use futures_util::StreamExt;
use serde_json::Value;

const MANAGEMENT: &str = "http://127.0.0.1:15672";

/// Random per run, part of every bench queue name.
pub fn run_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..6]))
}

/// Deletes every queue whose name carries this run's tag; says how many.
pub async fn delete_run_queues() -> anyhow::Result<usize> {
    let http = reqwest::Client::new();
    let queues: Value = http
        .get(format!("{MANAGEMENT}/api/queues?columns=name,vhost"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .context("cannot list queues")?
        .json()
        .await
        .context("cannot read the queue list")?;
    let ours: Vec<(String, String)> = queues
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|q| {
            Some((
                q["vhost"].as_str()?.to_owned(),
                q["name"].as_str()?.to_owned(),
            ))
        })
        .filter(|(_, name)| name.contains(run_tag()))
        .collect();
    let deleted = futures_util::stream::iter(ours.into_iter().map(|(vhost, name)| {
        let http = http.clone();
        async move {
            let url = format!(
                "{MANAGEMENT}/api/queues/{}/{}",
                urlencoding(&vhost),
                urlencoding(&name)
            );
            http.delete(url)
                .basic_auth("guest", Some("guest"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<bool>>()
    .await;
    Ok(deleted.into_iter().filter(|ok| *ok).count())
}

fn urlencoding(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
