//! What callers below admin may see of a consumer's target. Target URLs
//! often carry credentials (`?token=`, `?sig=`); a viewer needs to know
//! where messages go, not how to send them there too. (Target header
//! values are masked for everyone, by the registry's view.) Of
//! `target.auth` a viewer sees the type alone, of `target.tls` only that it
//! is set, of a filter or transform only that there is one.

use services::masking::masked_url;
use services::{ConsumerView, TargetSpec};

/// The view with the target URL's query values, userinfo and fragment
/// masked, and the auth and TLS settings reduced to what they are.
pub fn consumer_for_viewer(mut view: ConsumerView) -> ConsumerView {
    if let TargetSpec::Http(target) = view.target {
        let mut target = target.for_viewer();
        target.url = masked_url(&target.url);
        view.target = TargetSpec::Http(target);
    }
    // Rules may name what a viewer may not read (a transform may add a
    // header with a literal credential): that there is one is all it shows.
    view.filter = view.filter.map(|_| "***".to_owned());
    view.transform = view.transform.map(|_| "***".to_owned());
    view
}
