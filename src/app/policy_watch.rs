//! Watching the policy directory: a change in it, or the directory itself being replaced,
//! reloads the policies once the burst of changes settles.
//!
//! The directory is watched itself (not its subdirectories) and so is its parent, for the
//! directory's own entry. A Kubernetes ConfigMap volume swaps its files atomically by
//! renaming a new `..data` symlink over the old one inside the directory, which the directory
//! watch sees like any rename; a file renamed in, written in place, created or deleted is
//! seen the same way. Every event means "read the whole directory again": the reloader tells
//! unchanged files from changed ones, so a spurious event costs one read and no swap.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::policy::{PolicyReloader, ReloadTrigger};

/// Quiet time after a change before the reload: an editor's or kubelet's burst of writes,
/// renames and deletes becomes one reload, of the finished files.
const SETTLE: Duration = Duration::from_millis(250);
/// Longest a steady stream of changes delays a reload.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// How often a directory that cannot be watched (it is missing, say) is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// What an event means for the policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Nothing: a read, or another entry of the parent directory.
    Nothing,
    /// The directory's entries changed: reload.
    Contents,
    /// The directory itself was created, removed, renamed or replaced: watch it again, then
    /// reload.
    Directory,
}

/// `inner`: the directories under `dir` whose entries are policies too (`tenants/` and each
/// declared tenant's directory).
fn classify(event: &notify::Result<Event>, dir: &Path, inner: &[PathBuf]) -> Change {
    let event = match event {
        // Lost or unreadable events: read the directory again.
        Err(_) => return Change::Contents,
        Ok(event) => event,
    };
    // Opening and closing files, the reloader's own reads among them, change nothing.
    if matches!(event.kind, EventKind::Access(_)) && !event.need_rescan() {
        return Change::Nothing;
    }
    if event.paths.is_empty() || event.need_rescan() {
        return Change::Contents;
    }
    if event.paths.iter().any(|path| path == dir) {
        return Change::Directory;
    }
    if event.paths.iter().any(|path| {
        path.parent().is_some_and(|parent| parent == dir || inner.iter().any(|inner| inner == parent))
    }) {
        return Change::Contents;
    }
    Change::Nothing
}

/// What the watcher thread tells the task.
#[derive(Debug, Default)]
struct Signals {
    changed: Notify,
    rewatch: AtomicBool,
}

/// Runs a `notify` call that panics if the watcher's thread has died (the crate unwraps its
/// channel), as an error instead.
fn guarded<T>(call: impl FnOnce() -> notify::Result<T>) -> notify::Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(call))
        .unwrap_or_else(|_| Err(notify::Error::generic("the watcher thread has stopped")))
}

/// Watches `dir` and reloads through `reloader` until `stop`; the watcher (and its thread)
/// is gone when this returns. Errors are logged; reloading by SIGHUP and
/// `Admin/ReloadPolicies` works whatever happens here.
pub(super) async fn watch_policies_task(
    reloader: Arc<PolicyReloader>,
    dir: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    // Events name absolute paths; a symlink in the path is kept, so its replacement is seen.
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    // Tenant directories are watched too, each itself (a tenant's ConfigMap swaps its own
    // `..data`), and `tenants/` for a tenant directory that appears or goes.
    let inner: Vec<PathBuf> = if reloader.tenants().is_empty() {
        Vec::new()
    } else {
        std::iter::once(dir.join(crate::policy::TENANTS_DIR))
            .chain(
                reloader
                    .tenants()
                    .iter()
                    .filter_map(|tenant| tenant.dir())
                    .map(|tenant| std::path::absolute(tenant).unwrap_or_else(|_| tenant.to_path_buf())),
            )
            .collect()
    };
    let signals = Arc::new(Signals::default());
    let handler = {
        let signals = Arc::clone(&signals);
        let dir = dir.clone();
        let inner = inner.clone();
        move |event: notify::Result<Event>| {
            if let Err(error) = &event {
                tracing::warn!(dir = %dir.display(), "policy directory watch: {error}");
            }
            match classify(&event, &dir, &inner) {
                Change::Nothing => return,
                Change::Directory => signals.rewatch.store(true, Ordering::Release),
                Change::Contents => {}
            }
            signals.changed.notify_one();
        }
    };
    let mut watcher = match guarded(|| notify::recommended_watcher(handler)) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::error!(
                dir = %dir.display(),
                "cannot watch the policy directory ({error}); reload with SIGHUP or Admin/ReloadPolicies"
            );
            return;
        }
    };
    if let Some(parent) = dir.parent() {
        if let Err(error) = guarded(|| watcher.watch(parent, RecursiveMode::NonRecursive)) {
            tracing::warn!(
                dir = %parent.display(),
                "cannot watch the policy directory's parent ({error}); a replaced directory is seen only when it changes"
            );
        }
    }
    let mut watching = watch_dir(&mut watcher, &dir, &reloader, true);
    watch_inner(&mut watcher, &inner);
    // Files changed between start-up's load and the watch are read by a first reload.
    signals.changed.notify_one();

    'serving: loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break 'serving,
            () = signals.changed.notified() => {}
            () = tokio::time::sleep(RETRY), if !watching => {}
        }
        let first = Instant::now();
        loop {
            let settled = (Instant::now() + SETTLE).min(first + MAX_DELAY);
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => break 'serving,
                () = signals.changed.notified() => {}
                () = tokio::time::sleep_until(settled) => break,
            }
        }
        if signals.rewatch.swap(false, Ordering::AcqRel) || !watching {
            let _ = guarded(|| watcher.unwatch(&dir));
            watching = watch_dir(&mut watcher, &dir, &reloader, watching);
            if !watching {
                continue;
            }
        }
        // A tenant directory made or replaced since the last round is watched from now on.
        watch_inner(&mut watcher, &inner);
        // The reloader logs and records the outcome.
        let _ = reloader.reload(ReloadTrigger::Watch).await;
    }
    reloader.set_watching(false);
    if let Err(error) = guarded(move || {
        drop(watcher);
        Ok(())
    }) {
        tracing::warn!("stopping the policy directory watch: {error}");
    }
}

/// Watches each of `inner` that exists, afresh: one removed and made again since the last
/// watch has lost its watch. One that does not exist yet is seen being made by its parent's.
fn watch_inner(watcher: &mut RecommendedWatcher, inner: &[PathBuf]) {
    for dir in inner {
        let _ = guarded(|| watcher.unwatch(dir));
        if dir.is_dir() {
            if let Err(error) = guarded(|| watcher.watch(dir, RecursiveMode::NonRecursive)) {
                tracing::debug!(dir = %dir.display(), "cannot watch a tenant policy directory: {error}");
            }
        }
    }
}

/// Watches `dir` itself; logs a failure when `report` (the first one of a series).
fn watch_dir(watcher: &mut RecommendedWatcher, dir: &Path, reloader: &PolicyReloader, report: bool) -> bool {
    let watching = match guarded(|| watcher.watch(dir, RecursiveMode::NonRecursive)) {
        Ok(()) => {
            tracing::debug!(dir = %dir.display(), "watching the policy directory");
            true
        }
        Err(error) => {
            if report {
                tracing::warn!(
                    dir = %dir.display(),
                    "cannot watch the policy directory ({error}); trying again every second"
                );
            }
            false
        }
    };
    reloader.set_watching(watching);
    watching
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, CreateKind, Flag, ModifyKind, RemoveKind, RenameMode};

    use super::*;

    #[test]
    fn events_are_classified_by_what_they_touch() {
        let dir = Path::new("/etc/cedargate/policies");
        let event = |kind: EventKind, paths: &[&str]| {
            let mut event = Event::new(kind);
            for path in paths {
                event = event.add_path(PathBuf::from(path));
            }
            Ok(event)
        };
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        let cases = [
            (
                event(EventKind::Access(AccessKind::Any), &["/etc/cedargate/policies/a.cedar"]),
                Change::Nothing,
            ),
            (
                event(EventKind::Modify(ModifyKind::Any), &["/etc/cedargate/policies/a.cedar"]),
                Change::Contents,
            ),
            (
                event(rename, &["/etc/cedargate/policies/..data_tmp", "/etc/cedargate/policies/..data"]),
                Change::Contents,
            ),
            (event(EventKind::Create(CreateKind::Folder), &["/etc/cedargate/policies"]), Change::Directory),
            (event(EventKind::Remove(RemoveKind::Folder), &["/etc/cedargate/policies"]), Change::Directory),
            (event(EventKind::Create(CreateKind::File), &["/etc/cedargate/cedargate.yaml"]), Change::Nothing),
            (
                event(EventKind::Create(CreateKind::File), &["/etc/cedargate/policies-old/a.cedar"]),
                Change::Nothing,
            ),
            (
                event(EventKind::Modify(ModifyKind::Any), &["/etc/cedargate/policies/sub/a.cedar"]),
                Change::Nothing,
            ),
            (Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan)), Change::Contents),
            (Err(notify::Error::generic("read failed")), Change::Contents),
        ];
        for (event, expected) in cases {
            assert_eq!(classify(&event, dir, &[]), expected, "{event:?}");
        }
        // With tenants, their directories' entries are policies; an undeclared one's are not.
        let inner = [
            PathBuf::from("/etc/cedargate/policies/tenants"),
            PathBuf::from("/etc/cedargate/policies/tenants/acme"),
        ];
        let modify = EventKind::Modify(ModifyKind::Any);
        for (path, expected) in [
            ("/etc/cedargate/policies/tenants/acme/a.cedar", Change::Contents),
            ("/etc/cedargate/policies/tenants/globex", Change::Contents),
            ("/etc/cedargate/policies/tenants/globex/a.cedar", Change::Nothing),
        ] {
            assert_eq!(classify(&event(modify, &[path]), dir, &inner), expected, "{path}");
        }
    }

    /// Threads of this process named as notify's inotify thread (`comm` keeps 15 bytes).
    #[cfg(target_os = "linux")]
    fn watcher_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
            .filter(|name| name.starts_with("notify-rs"))
            .count()
    }

    // The only test in this binary that starts a watcher, so the thread count is its own.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_watcher_thread_ends_with_the_task() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("schema.cedarschema"), crate::policy::SCHEMA).unwrap();
        let sources = crate::policy::PolicySources::from_dir(dir.path()).unwrap();
        let engine = Arc::new(crate::policy::PolicyEngine::new(&sources).unwrap());
        let reloader = Arc::new(PolicyReloader::new(engine, Some(dir.path().to_path_buf()), sources));
        let before = watcher_threads();
        let (stop, stopped) = watch::channel(false);
        let task =
            tokio::spawn(watch_policies_task(Arc::clone(&reloader), dir.path().to_path_buf(), stopped));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !reloader.status().watching {
            assert!(std::time::Instant::now() < deadline, "the watch never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(watcher_threads(), before + 1, "one watcher thread while watching");
        stop.send(true).unwrap();
        task.await.unwrap();
        assert!(!reloader.status().watching);
        while watcher_threads() > before {
            assert!(std::time::Instant::now() < deadline, "the watcher thread outlived its task");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
