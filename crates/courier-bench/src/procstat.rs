//! What the server process costs, read from `/proc`: resident memory and CPU time.

/// Resident set size of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The file descriptors process `pid` has open and the most it may open (the soft
/// `RLIMIT_NOFILE` it runs with): every connection a server holds is one of them.
pub fn fds(pid: u32) -> Option<(u64, u64)> {
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    // "Max open files   <soft>   <hard>   files"; "unlimited" has no number.
    let soft = line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((open, soft))
}

/// User plus system CPU time used so far by process `pid` (all its threads), in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields that follow it are plain numbers.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime), counted from field 3 (state) here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture this runs on.
    Some((utime + stime) as f64 / 100.0)
}

/// Busy and total CPU time of the whole machine so far, in clock ticks (from `/proc/stat`).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let t: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let total: u64 = t.iter().take(8).sum();
    let idle = t.get(3)? + t.get(4)?;
    Some((total - idle, total))
}

/// How busy the machine's CPUs were between two readings.
pub struct BusyMeter(Option<(u64, u64)>);

impl BusyMeter {
    /// Starts measuring.
    pub fn start() -> BusyMeter {
        BusyMeter(machine_ticks())
    }

    /// Percent of all CPU time that was busy since [`BusyMeter::start`].
    pub fn percent(&self) -> Option<f64> {
        let (b0, t0) = self.0?;
        let (b1, t1) = machine_ticks()?;
        (t1 > t0).then(|| 100.0 * (b1 - b0) as f64 / (t1 - t0) as f64)
    }
}

/// CPU seconds `pid` used between two readings, when both exist.
pub struct CpuMeter {
    pid: Option<u32>,
    start: Option<f64>,
}

impl CpuMeter {
    /// Starts measuring `pid` (nothing is measured without one).
    pub fn start(pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            pid,
            start: pid.and_then(cpu_secs),
        }
    }

    /// CPU seconds used since [`CpuMeter::start`].
    pub fn used(&self) -> Option<f64> {
        Some(cpu_secs(self.pid?)? - self.start?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(cpu_secs(me).unwrap() >= 0.0);
        let (open, limit) = fds(me).unwrap();
        assert!(open > 0 && limit >= open);
    }
}
