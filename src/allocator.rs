//! The process's allocator: mimalloc, for the gateway binary (a module of
//! `main.rs`, never of the library) and for the bench, which includes this
//! same file so its own peers run on the gateway's allocator; and how it is
//! tuned.
//!
//! Why: the delivery path allocates and frees a little per message on every
//! worker thread; with glibc's malloc that was a quarter of the gateway's
//! CPU in the bench's fanin profile (`perf record -e cpu-clock`), and
//! mimalloc's thread-local heaps forward about 15% more messages a second.
//! Left at its defaults, though, mimalloc backed its heaps with transparent
//! huge pages, held on to freed memory and committed whole arenas up front:
//! the bench's gateway started at 66 MiB instead of 40 and an idle consumer
//! cost 26 KiB instead of glibc's 18. Built without huge pages (the crate's
//! `no_thp`) and tuned by `tune` to give memory back soon and commit on
//! demand, it starts at 44 MiB and a consumer costs about 20 KiB.
//!
//! "Soon" is 10 ms (`PURGE_DELAY_MS`, mimalloc's own default), not at once.
//! Giving freed pages back the moment they were free made a busy gateway
//! fault them in again, zeroed, a moment later: page faults, page clearing,
//! unmapping and TLB shoot-downs were ~3.5% of its CPU samples (self time)
//! in the fanin profile, and fanin forwarded 20.6–24.9k msg/s with 0 ms
//! against 27.3k / 27.3k with 10 ms.
//! The price is memory an idle gateway keeps: 10,000 idle consumers took
//! 192–197 MiB instead of 189 (bench `scale --consumers 10000`).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// Positions in mimalloc's `mi_option_e` (include/mimalloc.h, the same in
// its v2 and v3 sources), which libmimalloc-sys does not name.
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// How long freed memory stays with the process before it is given back.
const PURGE_DELAY_MS: std::os::raw::c_long = 10;

/// Call first thing in `main`.
pub fn tune() {
    // SAFETY: `mi_option_set` only stores an integer in mimalloc's option
    // table; both options are read again whenever mimalloc purges or maps
    // memory, so setting them after start-up is allowed.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS);
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
    }
}
