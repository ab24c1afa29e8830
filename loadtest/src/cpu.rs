//! The machine's CPU time during a measured window, from Linux's `/proc/stat`: how busy the machine
//! was (both ends of the loopback share it) and how much of it the hypervisor took (steal).
//!
//! Why it exists: on a virtual machine, a latency tail measured while the vCPUs were not running
//! belongs to the host, not to the target. In the half-load runs of BENCHMARKS.md, every stall of
//! tens of milliseconds came with steal, in the responder's phases as in the sidecar's, and a
//! SCHED_FIFO canary saw it too. A report that prints the steal beside its percentiles lets a
//! reader tell a disturbed run from a slow target, and `baseline` repeats a latency pair that
//! was disturbed instead of comparing the host's noise.

use serde::{Deserialize, Serialize};

/// Cumulative CPU time of all CPUs, in clock ticks, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq.
    busy: u64,
    /// idle + iowait.
    idle: u64,
    steal: u64,
}

impl CpuTimes {
    /// The machine's counters now; `None` where `/proc/stat` cannot be read (not Linux).
    pub fn now() -> Option<Self> {
        parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }
}

/// Parses the aggregate `cpu` line of `/proc/stat` (fields: user nice system idle iowait irq
/// softirq steal guest guest_nice; guest time is already counted in user and nice).
pub fn parse(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 4 {
        return None;
    }
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: at(0) + at(1) + at(2) + at(5) + at(6),
        idle: at(3) + at(4),
        steal: at(7),
    })
}

/// The machine's CPU over a window, as shares of all its CPUs' time.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct CpuShare {
    /// Percent of all CPUs' time spent running something (both ends, and anything else).
    pub busy_pct: f64,
    /// Percent of all CPUs' time the hypervisor ran something else instead of this machine.
    pub steal_pct: f64,
}

impl CpuShare {
    /// The shares between two readings; `None` if no time passed between them.
    pub fn between(start: CpuTimes, end: CpuTimes) -> Option<Self> {
        let busy = end.busy.checked_sub(start.busy)?;
        let idle = end.idle.checked_sub(start.idle)?;
        let steal = end.steal.checked_sub(start.steal)?;
        let total = busy + idle + steal;
        (total > 0).then(|| Self {
            busy_pct: 100.0 * busy as f64 / total as f64,
            steal_pct: 100.0 * steal as f64 / total as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "cpu  100 5 50 800 20 3 2 10 0 0\ncpu0 50 2 25 400 10 1 1 5 0 0\nintr 1\n";
    const AFTER: &str = "cpu  160 5 80 860 20 5 2 30 7 0\ncpu0 80 2 40 430 10 2 1 15 0 0\n";

    #[test]
    fn shares_come_from_the_aggregate_line() {
        let (a, b) = (parse(BEFORE).unwrap(), parse(AFTER).unwrap());
        // busy 60 + 30 + 2 = 92, idle 60, steal 20: 172 ticks in all (guest time is inside user).
        let s = CpuShare::between(a, b).unwrap();
        assert!((s.busy_pct - 100.0 * 92.0 / 172.0).abs() < 1e-9, "{s:?}");
        assert!((s.steal_pct - 100.0 * 20.0 / 172.0).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn no_time_or_garbage_gives_nothing() {
        let a = parse(BEFORE).unwrap();
        assert_eq!(CpuShare::between(a, a), None);
        assert_eq!(CpuShare::between(parse(AFTER).unwrap(), a), None);
        assert_eq!(parse("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse("cpu  1 x 3 4\n"), None);
        assert_eq!(parse("cpu  1 2\n"), None);
    }

    #[test]
    fn this_machine_can_be_read_where_it_is_linux() {
        if cfg!(target_os = "linux") {
            let a = CpuTimes::now().expect("/proc/stat");
            assert!(a.busy + a.idle > 0);
        }
    }
}
