//! What callers below admin may see of a consumer's target. Target URLs
//! often carry credentials (`?token=`, `?sig=`); a viewer needs to know
//! where messages go, not how to send them there too. (Target header
//! values are masked for everyone, by the registry's view.)

use services::masking::masked_url;
use services::{ConsumerView, TargetSpec};

/// The view with the target URL's query values, userinfo and fragment
/// masked.
pub fn consumer_for_viewer(mut view: ConsumerView) -> ConsumerView {
    if let TargetSpec::Http(target) = &mut view.target {
        target.url = masked_url(&target.url);
    }
    view
}
