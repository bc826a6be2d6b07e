//! CPU time and memory of a process or thread, read from /proc.
//!
//! Server CPU per job is the figure that says how a server will do on a bigger machine (here
//! the load generator and the server share two cores, so jobs/s is bounded by both), so it is
//! read as precisely as the kernel allows: the nanosecond run time from `schedstat`, summed
//! over the process's threads. `utime`/`stime` from `stat` (clock ticks) are read as well, only
//! to split that time into user and kernel shares.

use std::fs;
use std::io;
use std::sync::OnceLock;

/// CPU used by a process or thread so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    /// Time on a CPU in nanoseconds (schedstat; falls back to ticks if schedstat is missing).
    pub ns: u64,
    /// User time in clock ticks.
    pub user_ticks: u64,
    /// Kernel time in clock ticks.
    pub sys_ticks: u64,
}

impl Cpu {
    /// What was used between `self` (earlier) and `later`.
    pub fn until(&self, later: &Cpu) -> Cpu {
        Cpu {
            ns: later.ns.saturating_sub(self.ns),
            user_ticks: later.user_ticks.saturating_sub(self.user_ticks),
            sys_ticks: later.sys_ticks.saturating_sub(self.sys_ticks),
        }
    }

    /// Share of user time in the tick counts, 0..1, if any ticks were counted.
    pub fn user_share(&self) -> Option<f64> {
        let t = self.user_ticks + self.sys_ticks;
        (t > 0).then(|| self.user_ticks as f64 / t as f64)
    }
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux unless configured otherwise).
pub fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// `utime` and `stime` (fields 14 and 15) of a `stat` file. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn stat_ticks(path: &str) -> io::Result<(u64, u64)> {
    let s = fs::read_to_string(path)?;
    let rest = s
        .rfind(')')
        .map(|i| &s[i + 1..])
        .ok_or_else(|| io::Error::other("bad stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")" comes field 3 (state) at index 0, so field n is at index n - 3.
    let get = |n: usize| -> io::Result<u64> {
        f.get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other("bad stat field"))
    };
    Ok((get(14)?, get(15)?))
}

/// The first field of a `schedstat` file: nanoseconds spent on a CPU.
fn schedstat_ns(path: &str) -> Option<u64> {
    fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU of a whole process: schedstat summed over `/proc/PID/task/*` (threads that already
/// exited are missed, which is fine for servers whose threads live as long as they do), ticks
/// from `/proc/PID/stat` (which do include exited threads).
pub fn process_cpu(pid: u32) -> io::Result<Cpu> {
    let (user_ticks, sys_ticks) = stat_ticks(&format!("/proc/{pid}/stat"))?;
    let mut ns = 0u64;
    let mut found = false;
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            let p = format!(
                "/proc/{pid}/task/{}/schedstat",
                e.file_name().to_string_lossy()
            );
            if let Some(v) = schedstat_ns(&p) {
                ns += v;
                found = true;
            }
        }
    }
    if !found {
        ns = (user_ticks + sys_ticks) * 1_000_000_000 / clk_tck();
    }
    Ok(Cpu {
        ns,
        user_ticks,
        sys_ticks,
    })
}

/// The parent of a process (field 4 of its `stat`).
fn parent_of(pid: u32) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU of a process and every process below it (a database server: PostgreSQL runs one
/// process per connection under its postmaster). Processes that ended since the last reading
/// are missed; a server's connection to the store lives as long as the run.
pub fn tree_cpu(pid: u32) -> io::Result<Cpu> {
    let mut total = process_cpu(pid)?;
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    for e in fs::read_dir("/proc")?.flatten() {
        if let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
            && let Some(parent) = parent_of(p)
        {
            children.entry(parent).or_default().push(p);
        }
    }
    let mut todo = children.remove(&pid).unwrap_or_default();
    while let Some(p) = todo.pop() {
        if let Ok(c) = process_cpu(p) {
            total.ns += c.ns;
            total.user_ticks += c.user_ticks;
            total.sys_ticks += c.sys_ticks;
        }
        todo.extend(children.remove(&p).unwrap_or_default());
    }
    Ok(total)
}

/// CPU of one thread of this process, by its id (see [`current_tid`]).
pub fn thread_cpu(tid: u32) -> io::Result<Cpu> {
    let (user_ticks, sys_ticks) = stat_ticks(&format!("/proc/self/task/{tid}/stat"))?;
    let ns = schedstat_ns(&format!("/proc/self/task/{tid}/schedstat"))
        .unwrap_or((user_ticks + sys_ticks) * 1_000_000_000 / clk_tck());
    Ok(Cpu {
        ns,
        user_ticks,
        sys_ticks,
    })
}

/// The calling thread's kernel id, from the `/proc/thread-self` link (`PID/task/TID`).
pub fn current_tid() -> u32 {
    fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .unwrap_or_else(std::process::id)
}

/// Resident memory of a process in KiB: (VmRSS, VmHWM, the peak).
pub fn rss_kb(pid: u32) -> io::Result<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let s = fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The machine, for reports: number of CPUs and the CPU model.
pub fn machine() -> (usize, String) {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    (n, model)
}

/// CPU time the whole machine has been busy or lost, in ns: user, nice, system, irq, softirq
/// and steal of the `cpu` line of /proc/stat (clock ticks). Steal (time the hypervisor gave
/// this machine's CPUs to someone else) counts: on a shared host it slows a run as surely as
/// a local process does.
pub fn machine_busy_ns() -> Option<u64> {
    let s = fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let steal = f.get(7).copied().unwrap_or(0);
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + steal;
    Some(busy * 1_000_000_000 / clk_tck())
}

/// The 1-minute load average, to tell whether the machine was quiet.
pub fn loadavg() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process_and_thread() {
        let pid = std::process::id();
        let a = process_cpu(pid).unwrap();
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = process_cpu(pid).unwrap();
        assert!(b.ns > a.ns);
        let t = thread_cpu(current_tid()).unwrap();
        assert!(t.ns > 0);
        // A child's CPU counts in the tree.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1",
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let own = process_cpu(pid).unwrap();
        let tree = tree_cpu(pid).unwrap();
        assert!(tree.ns > own.ns, "{} vs {}", tree.ns, own.ns);
        let _ = child.kill();
        let _ = child.wait();
        let (rss, hwm) = rss_kb(pid).unwrap();
        assert!(rss > 0 && hwm >= rss);
        assert!(open_files_limit().unwrap() > 0);
    }
}
