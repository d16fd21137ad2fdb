//! glibc's allocator gives each thread that ever met contention an arena of its own (up to
//! eight per core) and hands little of what they free back to the system: a node that held a
//! burst of fired timers stayed about 180 MiB above its live heap (docs/benchmarks.md, heap
//! profile). Two arenas keep a node's resident memory near its heap for a small cost in
//! contention. The count is a glibc tunable, read once at process start, so `serve` and `dev`
//! re-execute themselves with it (safe code, unlike `mallopt`); an environment that sets
//! `glibc.malloc.arena_max` itself is left as it is. jemalloc, which returns memory by itself,
//! hung at start under libfaketime, which the clock tests and the chaos harness preload.

use std::ffi::OsString;

const TUNABLES: &str = "GLIBC_TUNABLES";
const ARENA_MAX: &str = "glibc.malloc.arena_max";
/// Arenas a node runs with.
const ARENAS: u32 = 2;

/// The `GLIBC_TUNABLES` to run with given the current one, or `None` when it already sets the
/// arena count (so a re-executed process does not re-execute again).
pub fn tunables(current: Option<&str>) -> Option<String> {
    match current.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t)
            if t.split(':')
                .any(|kv| kv.split('=').next() == Some(ARENA_MAX)) =>
        {
            None
        }
        Some(t) => Some(format!("{t}:{ARENA_MAX}={ARENAS}")),
        None => Some(format!("{ARENA_MAX}={ARENAS}")),
    }
}

/// Re-executes this process with at most [`ARENAS`] malloc arenas unless its environment sets
/// the count. Returns only when it did not re-execute: already set, or exec failed (then the
/// process goes on with glibc's default, after a warning). Call it before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn limit_arenas() {
    use std::os::unix::process::CommandExt as _;
    let current = std::env::var(TUNABLES).ok();
    let Some(value) = tunables(current.as_deref()) else {
        return;
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return warn(&e),
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("hourglass"));
    let e = std::process::Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env(TUNABLES, value)
        .exec();
    warn(&e);
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas() {}

fn warn(e: &dyn std::fmt::Display) {
    eprintln!(
        "warning: could not re-execute with {TUNABLES}={ARENA_MAX}={ARENAS} ({e}); the node runs \
         with glibc's default malloc arenas and may hold more memory than it uses"
    );
}

/// The glibc tunables the process runs with, for its start-up log.
pub fn describe() -> String {
    std::env::var(TUNABLES).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arena_count_is_added_once_and_never_overrides_the_operator() {
        assert_eq!(tunables(None).as_deref(), Some("glibc.malloc.arena_max=2"));
        assert_eq!(
            tunables(Some(" ")).as_deref(),
            Some("glibc.malloc.arena_max=2")
        );
        assert_eq!(
            tunables(Some("glibc.malloc.trim_threshold=131072")).as_deref(),
            Some("glibc.malloc.trim_threshold=131072:glibc.malloc.arena_max=2")
        );
        assert_eq!(tunables(Some("glibc.malloc.arena_max=2")), None);
        assert_eq!(
            tunables(Some("glibc.malloc.tcache_count=0:glibc.malloc.arena_max=8")),
            None
        );
        let once = tunables(Some("glibc.malloc.tcache_count=0")).unwrap();
        assert_eq!(tunables(Some(&once)), None);
    }
}
