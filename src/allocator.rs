//! The process's memory settings: keep freed pages, and fault them in 4 KiB at a time.
//!
//! mimalloc (v3) hands pages that stay free for a second back to the kernel; on this workload
//! that is a steady churn — a Decide that needs a fresh page faults it back in (`clear_page_erms`
//! was 6–7 % of the server's samples). Never purging measured 8–17 % less server CPU per Decide
//! and 11–20 % per Decide + RecordEvents (docs/PERFORMANCE.md, "The allocator keeps its pages");
//! the cost is that the resident size stays at its peak, as with jemalloc's `retain`.
//!
//! The heap still grows while listeners arrive and histories lengthen, and with transparent huge
//! pages every fresh page is a 2 MiB fault, zeroed while the one runtime thread waits: on this
//! machine's VM that stalls every request in flight for milliseconds, and an open-loop Decide's
//! p99 at half the maximum rate was 10–172 ms with huge pages against 1.4–5.7 ms without
//! (docs/PERFORMANCE.md, "Huge pages and the tail"). 4 KiB pages cost 2–7 % more CPU per
//! Decide in a closed loop; a tail of milliseconds is the better bargain for an ad server.
//!
//! An operator who prefers otherwise sets mimalloc's own `MIMALLOC_PURGE_DELAY` (milliseconds)
//! or `MIMALLOC_ALLOW_THP=1`, which win.
#![allow(unsafe_code)]

/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h` (libmimalloc-sys names no constant for
/// it outside v2); pinned by the test below, which reads its documented default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// `mi_option_allow_thp` in the same header; pinned by the same test.
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// The environment variables by which mimalloc reads the same options at start.
const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";
const ALLOW_THP_ENV: &str = "MIMALLOC_ALLOW_THP";

/// Never purge freed pages, and no transparent huge pages for this process, unless the
/// environment chose otherwise. Call first thing in `main`, before any thread starts:
/// mimalloc's option setters are not thread-safe.
pub fn configure() {
    if std::env::var_os(PURGE_DELAY_ENV).is_none() {
        // SAFETY: a plain store into mimalloc's option table, with a value the option documents
        // (-1: no purging); called before other threads exist.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
    if std::env::var_os(ALLOW_THP_ENV).is_none() {
        // mimalloc reads this option once, when it starts (before `main`), to turn huge pages
        // off with the same prctl; set now, it only stops mimalloc's `madvise(MADV_HUGEPAGE)`
        // of later regions, so the process flag is set here too. The flag covers every mapping,
        // the regions mimalloc reserved before `main` included.
        // SAFETY: as above, a documented value (0: no THP) before other threads exist.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) }
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours. It can
        // fail only on kernels older than 3.15, where the process keeps huge pages: a cost in
        // the tail, not an error, so the result is not checked.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(option: libmimalloc_sys::mi_option_t) -> std::ffi::c_long {
        // SAFETY: reads mimalloc's option table.
        unsafe { libmimalloc_sys::mi_option_get(option) }
    }

    fn huge_pages_disabled() -> bool {
        // SAFETY: PR_GET_THP_DISABLE reads the process's flag and touches no memory of ours.
        unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1 }
    }

    #[test]
    fn the_options_are_purge_delay_and_allow_thp_and_configuring_sets_both() {
        if std::env::var_os(PURGE_DELAY_ENV).is_some() || std::env::var_os(ALLOW_THP_ENV).is_some() {
            return; // the environment's values win, and the defaults cannot be read
        }
        // 1000 ms is v3's documented purge_delay default, and no other option defaults to it;
        // allow_thp defaults to 1, its neighbours to 16 and 0: these fail if an index names
        // another option after a mimalloc upgrade.
        assert_eq!(option(MI_OPTION_PURGE_DELAY), 1000);
        assert_eq!(option(MI_OPTION_ALLOW_THP), 1);
        configure();
        assert_eq!(option(MI_OPTION_PURGE_DELAY), -1);
        assert_eq!(option(MI_OPTION_ALLOW_THP), 0);
        assert!(huge_pages_disabled(), "the process still takes transparent huge pages");
    }
}
