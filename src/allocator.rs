//! The process allocator's one setting: keep freed memory instead of returning it to the OS.
//!
//! mimalloc (v3) hands pages that stay free for a second back to the kernel; on this workload
//! that is a steady churn — a Decide that needs a fresh page faults it back in, and with
//! transparent huge pages each fault zeroes 2 MiB (`clear_page_erms` was 6–7 % of the server's
//! samples). Never purging measured 8–17 % less server CPU per Decide and 11–20 % per Decide +
//! RecordEvents (docs/PERFORMANCE.md, "The allocator keeps its pages"); the cost is that the
//! resident size stays at its peak, as with jemalloc's `retain`. An operator who prefers the
//! memory back sets mimalloc's own `MIMALLOC_PURGE_DELAY` (milliseconds), which wins.
#![allow(unsafe_code)]

/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h` (libmimalloc-sys names no constant for
/// it outside v2); pinned by the test below, which reads its documented default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The environment variable by which mimalloc reads the same option at start.
const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// Never purge freed pages, unless the environment chose a delay. Call first thing in `main`,
/// before any thread starts: mimalloc's option setters are not thread-safe.
pub fn retain_freed_pages() {
    if std::env::var_os(PURGE_DELAY_ENV).is_none() {
        // SAFETY: a plain store into mimalloc's option table, with a value the option documents
        // (-1: no purging); called before other threads exist.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The purge delay mimalloc is using, in milliseconds (-1: never).
    fn purge_delay_ms() -> std::ffi::c_long {
        // SAFETY: reads mimalloc's option table.
        unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
    }

    #[test]
    fn the_option_is_the_purge_delay_and_retaining_sets_it_to_never() {
        if std::env::var_os(PURGE_DELAY_ENV).is_some() {
            return; // the environment's value wins, and the default cannot be read
        }
        // 1000 ms is v3's documented purge_delay default, and no other option defaults to it:
        // this fails if the index names another option after a mimalloc upgrade.
        assert_eq!(purge_delay_ms(), 1000);
        retain_freed_pages();
        assert_eq!(purge_delay_ms(), -1);
    }
}
