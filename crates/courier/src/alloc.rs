//! The binary's one use of `unsafe`: a setting of glibc's allocator, made once at start-up.
//!
//! glibc serves an allocation of 128 KiB or more with its own mapping, returned to the system
//! when freed, but after such a block is freed it raises that threshold (up to 32 MiB) and serves
//! later large blocks from its heaps, which it rarely gives back. A hub that relays or stores
//! large messages then sits at several times the memory it holds: a flood of 400 emits of 500 KB
//! peaked at 90 MiB resident with a 16 MiB recovery budget, 57 MiB with the threshold fixed
//! (tests/e2e/python/test_budgets.py; docs/limits.md). Fixing the threshold keeps resident
//! memory close to what the budgets allow.
#![allow(unsafe_code)]

/// Largest allocation served from the heaps; larger ones get a mapping of their own.
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Applies the allocator settings; call before any thread is started.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters and takes plain integers; it is called
    // once, from main, before the runtime starts any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
