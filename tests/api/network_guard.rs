//! The network guard: scrape URLs (and forward targets, when asked) never reach loopback, private or link-local addresses.
