//! What credentials cost and how they end: API-key digests, the failed-attempt throttle, listing and revoking keys.
