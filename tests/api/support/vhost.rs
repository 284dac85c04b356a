//! A RabbitMQ vhost of a test's own, for a gateway whose queue and exchange
//! names the test cannot prefix (the API fuzzer's, the README walk-through's).

use serde_json::json;

use super::cleanup::delete_in_management;
use super::env::{amqp_url, percent_encode};
use super::management::{management_client, management_put};

/// A RabbitMQ vhost made for one test through the management API, with
/// the AMQP user allowed in; deleted, with everything in it, on drop.
pub struct OwnVhost {
    /// The vhost's name: `<prefix>-<uuid>`.
    pub name: String,
    /// `AMQP_URL`'s first URL with this vhost as its path.
    pub amqp_url: String,
}

impl OwnVhost {
    /// A new vhost named `<prefix>-<uuid>`.
    pub async fn create(prefix: &str) -> OwnVhost {
        let name = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
        let mut amqp = url::Url::parse(&amqp_url()).expect("AMQP_URL is a URL");
        let user = match amqp.username() {
            "" => "guest".to_owned(),
            user => user.to_owned(),
        };
        amqp.set_path(&format!("/{name}"));
        let vhost = OwnVhost {
            name,
            amqp_url: amqp.to_string(),
        };
        let http = management_client();
        let encoded = percent_encode(&vhost.name);
        management_put(&http, &format!("/api/vhosts/{encoded}"), &json!({})).await;
        management_put(
            &http,
            &format!("/api/permissions/{encoded}/{}", percent_encode(&user)),
            &json!({ "configure": ".*", "write": ".*", "read": ".*" }),
        )
        .await;
        vhost
    }
}

impl Drop for OwnVhost {
    fn drop(&mut self) {
        delete_in_management(format!("/api/vhosts/{}", percent_encode(&self.name)));
    }
}
