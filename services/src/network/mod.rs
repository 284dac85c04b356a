//! Outbound HTTP rules in one place, shared by the scrape handler, the
//! forwarder and the configuration: what counts as a fetchable URL (http(s)
//! with a host), how a host allow-list is read and matched, which addresses
//! are inside the network, and the DNS resolver that refuses them at
//! connect time.

mod address;
mod errors;
mod hosts;
mod resolver;

pub use address::is_internal;
pub use errors::{find_cause, with_causes};
pub use hosts::{host_list, host_listed, http_url, url_host, UrlProblem};
pub use resolver::{AddressGuard, AddressNotAllowed};
