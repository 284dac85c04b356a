//! The broker's management API as the tests use it: requests with the
//! management credentials, the lists a cleanup reads, and the operator's
//! actions a test plays (force-closing a connection).

use std::time::Duration;

use reqwest::Response;
use serde_json::Value;

use super::env::{management_password, management_url, management_user, percent_encode};

pub fn management_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// A request to the environment's management API.
pub fn management_request(
    http: &reqwest::Client,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    management_request_at(http, &management_url(), method, path)
}

/// `management_request` to the management API at `base`.
pub fn management_request_at(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    http.request(method, format!("{}{path}", base.trim_end_matches('/')))
        .basic_auth(management_user(), Some(management_password()))
}

pub async fn management_get(http: &reqwest::Client, path: &str) -> Value {
    let request = management_request(http, reqwest::Method::GET, path);
    let response = management_send(request, path).await;
    response.json().await.expect("management API JSON")
}

/// PUT `body` to a management-API path; asserts success.
pub async fn management_put(http: &reqwest::Client, path: &str, body: &Value) {
    let request = management_request(http, reqwest::Method::PUT, path).json(body);
    management_send(request, path).await;
}

async fn management_send(request: reqwest::RequestBuilder, path: &str) -> Response {
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("management API {path}: {e}"));
    assert!(
        response.status().is_success(),
        "management API {path}: {}",
        response.status()
    );
    response
}

/// The rows of `/api/<kind>/<vhost_path>` at `base` with these columns;
/// `Err` says why there is no list (for a cleanup, which must not panic).
pub async fn try_management_list(
    http: &reqwest::Client,
    base: &str,
    vhost_path: &str,
    kind: &str,
    columns: &str,
) -> Result<Vec<Value>, String> {
    let path = format!("/api/{kind}/{vhost_path}?columns={columns}");
    let response = management_request_at(http, base, reqwest::Method::GET, &path)
        .send()
        .await
        .map_err(|e| format!("management API {path}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("management API {path}: {}", response.status()));
    }
    match response.json().await {
        Ok(Value::Array(rows)) => Ok(rows),
        Ok(other) => Err(format!("management API {path}: not a list: {other}")),
        Err(e) => Err(format!("management API {path}: {e}")),
    }
}

/// `try_management_list` that fails the test when there is no list.
pub async fn management_list(
    http: &reqwest::Client,
    base: &str,
    vhost_path: &str,
    kind: &str,
    columns: &str,
) -> Vec<Value> {
    try_management_list(http, base, vhost_path, kind, columns)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The broker's name (`"127.0.0.1:x -> 127.0.0.1:5672"`) of the connection
/// whose client-provided name is `client_name`, if it is open.
pub async fn connection_named(http: &reqwest::Client, client_name: &str) -> Option<String> {
    let rows = management_get(http, "/api/connections?columns=name,client_properties").await;
    rows.as_array()?
        .iter()
        .find(|row| row["client_properties"]["connection_name"] == client_name)
        .and_then(|row| row["name"].as_str().map(str::to_owned))
}

/// Force-closes a connection by its broker name, as an operator would
/// from the management UI.
pub async fn force_close_connection(http: &reqwest::Client, name: &str) {
    let path = format!("/api/connections/{}", percent_encode(name));
    let response = management_request(http, reqwest::Method::DELETE, &path)
        .header("X-Reason", "forced by a workerrmq test")
        .send()
        .await
        .unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
    assert!(
        response.status().is_success(),
        "DELETE {path}: {}",
        response.status()
    );
}
