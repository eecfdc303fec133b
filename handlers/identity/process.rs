//! How the CLI credentials run `az` / `azd`: each run in a process group of its own, and the
//! whole group killed when the run is abandoned.
//!
//! `azure_identity` runs `/bin/sh -c "cd /bin && az account get-access-token ..."`, and `az` is a
//! script that starts Python: three processes deep. Its default executor neither kills the shell
//! when the fetch is dropped nor reaches the processes below it, so a hanging `az` (waiting for
//! the network, or for input) outlived the fetch's [`FETCH_LIMIT`](super::FETCH_LIMIT), the
//! caller's deadline, and even the handler. Here the shell starts a new process group; when the
//! run's future is dropped before the shell has exited (the fetch timed out, the handler is
//! shutting down), the group is sent SIGKILL, and tokio's `kill_on_drop` reaps the shell.

use std::ffi::OsStr;
use std::io;
use std::process::{Output, Stdio};

use azure_identity::Executor;

/// Runs each command in its own process group, killed as a whole when the run is abandoned.
#[derive(Debug, Default)]
pub(crate) struct GroupKillingExecutor;

#[async_trait::async_trait]
impl Executor for GroupKillingExecutor {
    async fn run(&self, program: &OsStr, args: &[&OsStr]) -> io::Result<Output> {
        let mut command = tokio::process::Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        #[cfg(unix)]
        command.process_group(0);
        let child = command.spawn()?;
        let mut group = GroupGuard { pgid: child.id() };
        let output = child.wait_with_output().await;
        // The shell exited: its group id may be reused from now on, so never signal it again.
        group.pgid = None;
        output
    }
}

/// Kills process group `pgid` on drop, unless cleared first.
struct GroupGuard {
    pgid: Option<u32>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pgid) = self.pgid.and_then(|id| i32::try_from(id).ok()).filter(|id| *id > 1) {
            // SAFETY: kill(2) takes plain integers and touches no memory of ours. A negative pid
            // names the process group the shell leads (`process_group(0)`); its leader has not
            // been reaped yet (we are dropping before `wait` returned), so the id is still ours.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::time::Duration;

    fn alive(pid: i32) -> bool {
        // A zombie (state Z) has exited; it only waits for a parent to reap it.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    }

    /// Issue 12 (hung `az`): a run abandoned by a timeout leaves no process behind, however deep.
    #[tokio::test]
    async fn an_abandoned_run_kills_the_whole_group() {
        let dir = std::env::temp_dir().join(format!("idem-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("pid");
        // A shell that starts a child which hangs, like `sh -c az` starting Python.
        let script = format!("sh -c 'echo $$ > {}; exec sleep 60'; true", pid_file.display());
        let args = [OsStr::new("-c"), OsStr::new(&script)];
        let run = GroupKillingExecutor.run(OsStr::new("/bin/sh"), &args);
        let waited = tokio::time::timeout(Duration::from_millis(300), run).await;
        assert!(waited.is_err(), "the run hangs until abandoned");
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        for _ in 0..100 {
            if !alive(pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(pid), "the hanging grandchild {pid} is gone");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_finished_run_returns_its_output() {
        let output = GroupKillingExecutor
            .run(OsStr::new("/bin/sh"), &[OsStr::new("-c"), OsStr::new("echo out; echo err >&2; exit 3")])
            .await
            .unwrap();
        assert_eq!((output.stdout.as_slice(), output.stderr.as_slice()), (&b"out\n"[..], &b"err\n"[..]));
        assert_eq!(output.status.code(), Some(3));
    }
}
