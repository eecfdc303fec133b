//! Child processes under test: spawned pinned to one CPU (what `taskset -c N` does), polled
//! for readiness the way the Functions host does (any HTTP answer to `GET /`), and read for
//! memory (`VmRSS`) and CPU time from `/proc`.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Pins the calling thread (and every thread and process it starts afterwards) to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    set_affinity(0, cpu)
}

fn set_affinity(pid: libc::pid_t, cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it; sched_setaffinity
    // reads it. Async-signal-safe, so also usable between fork and exec.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// How to start one server under test.
#[derive(Debug, Clone)]
pub struct Launch {
    pub name: &'static str,
    pub program: PathBuf,
    /// `{port}` in an argument becomes the port.
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The only environment the child gets (besides PATH, HOME and LANG).
    pub env: Vec<(String, String)>,
    /// The CPU the child and all its threads run on.
    pub cpu: usize,
    /// stdout and stderr go here (appended): the child's logs are written, as in Azure, but
    /// never fill a pipe nobody reads.
    pub log: PathBuf,
}

/// A running server under test.
pub struct Server {
    pub name: &'static str,
    pub port: u16,
    child: Child,
    /// When `spawn` was called.
    pub spawned_at: Instant,
}

impl Launch {
    /// Spawns the server on `port`; returns at once (see [`Server::wait_ready`]).
    pub fn spawn(&self, port: u16) -> io::Result<Server> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut command = Command::new(&self.program);
        command
            .args(self.args.iter().map(|a| a.replace("{port}", &port.to_string())))
            .current_dir(&self.cwd)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for name in ["PATH", "HOME", "LANG"] {
            if let Ok(value) = std::env::var(name) {
                command.env(name, value);
            }
        }
        command.env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string());
        for (name, value) in &self.env {
            command.env(name, value);
        }
        let cpu = self.cpu;
        // SAFETY: the closure only calls sched_setaffinity (async-signal-safe) and allocates nothing.
        unsafe {
            command.pre_exec(move || set_affinity(0, cpu));
        }
        let spawned_at = Instant::now();
        let child = command.spawn()?;
        Ok(Server { name: self.name, port, child, spawned_at })
    }
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Polls `GET /` without pause until any HTTP answer arrives (the host's readiness rule);
    /// returns the time from spawn to that answer.
    pub fn wait_ready(&mut self, timeout: Duration) -> io::Result<Duration> {
        let addr = self.addr();
        let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", self.port);
        loop {
            if let Ok(mut stream) = TcpStream::connect(addr) {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(timeout))?;
                if stream.write_all(request.as_bytes()).is_ok() {
                    let mut head = [0u8; 12];
                    if stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") {
                        return Ok(self.spawned_at.elapsed());
                    }
                }
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!("{} exited before it was ready: {status}", self.name)));
            }
            if self.spawned_at.elapsed() > timeout {
                return Err(io::Error::other(format!("{} was not ready within {timeout:?}", self.name)));
            }
            std::hint::spin_loop();
        }
    }

    /// `VmRSS` of the process, in KiB.
    pub fn rss_kib(&self) -> io::Result<u64> {
        rss_kib(self.pid())
    }

    /// The CPUs the process may run on, as the kernel reports them (`Cpus_allowed_list`).
    pub fn cpus_allowed(&self) -> io::Result<String> {
        status_field(self.pid(), "Cpus_allowed_list:")
    }

    /// Peak RSS of the process so far (`VmHWM`), in KiB.
    pub fn hwm_kib(&self) -> io::Result<u64> {
        status_field(self.pid(), "VmHWM:")?.trim_end_matches("kB").trim().parse().map_err(io::Error::other)
    }

    /// Threads of the process now.
    pub fn threads(&self) -> io::Result<u64> {
        status_field(self.pid(), "Threads:")?.parse().map_err(io::Error::other)
    }

    /// SIGTERM (the host stopping the worker), then SIGKILL after `grace`.
    pub fn terminate(mut self, grace: Duration) -> io::Result<ExitStatus> {
        // SAFETY: kill with a pid we own.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.child.kill()?;
        self.child.wait()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn status_field(pid: u32, field: &str) -> io::Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let value = status_field(pid, "VmRSS:")?;
    value.trim_end_matches("kB").trim().parse().map_err(io::Error::other)
}

/// User + system CPU time of a whole process (all threads, live and exited).
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime = field 14, stime = field 15; `fields[0]` is field 3.
    Ok(ticks_to_duration(ticks(11) + ticks(12)))
}

/// CPU time of this process and of its waited-for children (`cutime`, `cstime`).
pub fn own_cpu_with_children() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    ticks_to_duration(ticks(11) + ticks(12) + ticks(13) + ticks(14))
}

/// Busy CPU time of the whole machine (all CPUs, every process, steal excluded) and steal time.
pub fn machine_cpu() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    (ticks_to_duration(at(0) + at(1) + at(2) + at(5) + at(6)), ticks_to_duration(at(7)))
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}

/// CPU used by other processes on the machine (builds, tests) over a stretch of time: machine
/// busy time less this process, its waited-for children and the `live` processes named.
pub struct ForeignMeter {
    machine: Duration,
    steal: Duration,
    own: Duration,
    live: Vec<(u32, Duration)>,
    at: std::time::Instant,
}

impl ForeignMeter {
    pub fn start(live: &[u32]) -> Self {
        let (machine, steal) = machine_cpu();
        Self {
            machine,
            steal,
            own: own_cpu_with_children(),
            live: live.iter().map(|pid| (*pid, cpu_time(*pid).unwrap_or_default())).collect(),
            at: std::time::Instant::now(),
        }
    }

    /// (foreign CPU in cores, steal in cores) since `start`.
    pub fn read(&self) -> (f64, f64) {
        let (machine, steal) = machine_cpu();
        let own = own_cpu_with_children().saturating_sub(self.own);
        let live: Duration =
            self.live.iter().map(|(pid, before)| cpu_time(*pid).unwrap_or(*before).saturating_sub(*before)).sum();
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let foreign = machine.saturating_sub(self.machine).saturating_sub(own).saturating_sub(live);
        (foreign.as_secs_f64() / wall, steal.saturating_sub(self.steal).as_secs_f64() / wall)
    }
}

/// Waits until other processes leave the machine idle (under 5 % of a core over 300 ms), at
/// most `max_wait`; returns how long it waited. Other builds and tests on a shared machine would
/// otherwise take the servers' core away mid-measurement.
/// All gates of a run together wait no longer than the budget (`set_quiet_budget`).
pub fn quiet_gate(live: &[u32], max_wait: Duration) -> Duration {
    use std::sync::atomic::Ordering;
    let started = std::time::Instant::now();
    let budget = Duration::from_millis(QUIET_BUDGET_MS.load(Ordering::Relaxed));
    let max_wait = max_wait.min(budget);
    loop {
        let meter = ForeignMeter::start(live);
        std::thread::sleep(Duration::from_millis(300));
        if meter.read().0 < 0.05 || started.elapsed() >= max_wait {
            let waited = started.elapsed().saturating_sub(Duration::from_millis(300));
            QUIET_BUDGET_MS.fetch_sub((waited.as_millis() as u64).min(budget.as_millis() as u64), Ordering::Relaxed);
            return waited;
        }
    }
}

static QUIET_BUDGET_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How long all quiet gates of this run may wait in total.
pub fn set_quiet_budget(budget: Duration) {
    QUIET_BUDGET_MS.store(budget.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
}

/// What is left of the budget.
pub fn quiet_budget_left() -> Duration {
    Duration::from_millis(QUIET_BUDGET_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Whether an ELF file has a symbol table (`.symtab`), i.e. is not stripped.
pub fn has_symtab(path: &Path) -> io::Result<bool> {
    let bytes = std::fs::read(path)?;
    let bad = || io::Error::other(format!("{} is not a 64-bit little-endian ELF file", path.display()));
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Err(bad());
    }
    let u64_at = |o: usize| bytes.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    let u16_at = |o: usize| bytes.get(o..o + 2).map(|b| u16::from_le_bytes(b.try_into().unwrap_or_default()));
    let u32_at = |o: usize| bytes.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
    let shoff = u64_at(0x28).ok_or_else(bad)? as usize;
    let shentsize = u16_at(0x3a).ok_or_else(bad)? as usize;
    let shnum = u16_at(0x3c).ok_or_else(bad)? as usize;
    const SHT_SYMTAB: u32 = 2;
    Ok((0..shnum).any(|i| u32_at(shoff + i * shentsize + 4) == Some(SHT_SYMTAB)))
}

/// Total size of the files under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
