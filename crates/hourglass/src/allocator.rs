//! glibc's allocator gives each thread that ever met contention an arena of its own (up to
//! eight per core) and hands little of what they free back to the system: a node that held a
//! burst of fired timers stayed about 180 MiB above its live heap (docs/benchmarks.md, heap
//! profile). Two arenas keep a node's resident memory near its heap for a small cost in
//! contention. glibc also raises its mmap threshold each time a large block is freed (up to
//! 32 MiB), after which replication's and RocksDB's buffers of a few hundred KiB come from the
//! arenas and stay there once freed; a fixed threshold of 128 KiB keeps every such buffer in
//! its own mapping, returned as soon as it is freed (docs/benchmarks.md, run G). Tunables are
//! read once at process start, so `serve` and `dev` re-execute themselves with them (safe code,
//! unlike `mallopt`); a tunable the environment sets itself is left as it is. jemalloc, which
//! returns memory by itself, hung at start under libfaketime, which the clock tests and the
//! chaos harness preload.

use std::ffi::OsString;

const TUNABLES: &str = "GLIBC_TUNABLES";
/// What a node runs with unless its environment says otherwise.
const DEFAULTS: [(&str, &str); 2] = [
    ("glibc.malloc.arena_max", "2"),
    ("glibc.malloc.mmap_threshold", "131072"),
];

/// The `GLIBC_TUNABLES` to run with given the current one, or `None` when it already sets
/// every tunable of [`DEFAULTS`] (so a re-executed process does not re-execute again).
pub fn tunables(current: Option<&str>) -> Option<String> {
    let current = current.map(str::trim).filter(|t| !t.is_empty());
    let set = |key: &str| {
        current.is_some_and(|t| t.split(':').any(|kv| kv.split('=').next() == Some(key)))
    };
    let missing: Vec<String> = DEFAULTS
        .iter()
        .filter(|(key, _)| !set(key))
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    if missing.is_empty() {
        return None;
    }
    Some(
        current
            .into_iter()
            .map(str::to_owned)
            .chain(missing)
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// Re-executes this process with the tunables of [`DEFAULTS`] its environment does not set.
/// Returns only when it did not re-execute: all set, or exec failed (then the process goes on
/// with glibc's defaults, after a warning). Call it before any thread starts.
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
        "warning: could not re-execute with {TUNABLES} set ({e}); the node runs with glibc's \
         default malloc settings and may hold more memory than it uses"
    );
}

/// The glibc tunables the process runs with, for its start-up log.
pub fn describe() -> String {
    std::env::var(TUNABLES).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: &str = "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=131072";

    #[test]
    fn the_defaults_are_added_once_and_never_override_the_operator() {
        assert_eq!(tunables(None).as_deref(), Some(BOTH));
        assert_eq!(tunables(Some(" ")).as_deref(), Some(BOTH));
        assert_eq!(
            tunables(Some("glibc.malloc.trim_threshold=131072")).as_deref(),
            Some(format!("glibc.malloc.trim_threshold=131072:{BOTH}").as_str())
        );
        assert_eq!(tunables(Some(BOTH)), None);
        assert_eq!(
            tunables(Some("glibc.malloc.tcache_count=0:glibc.malloc.arena_max=8")).as_deref(),
            Some("glibc.malloc.tcache_count=0:glibc.malloc.arena_max=8:glibc.malloc.mmap_threshold=131072")
        );
        assert_eq!(
            tunables(Some("glibc.malloc.mmap_threshold=65536")).as_deref(),
            Some("glibc.malloc.mmap_threshold=65536:glibc.malloc.arena_max=2")
        );
        let once = tunables(Some("glibc.malloc.tcache_count=0")).unwrap();
        assert_eq!(tunables(Some(&once)), None);
    }
}
