//! A process's CPU time and memory, read from /proc.

/// A process on this machine, by its id.
#[derive(Clone, Copy, Debug)]
pub struct Proc {
    pid: u32,
}

impl Proc {
    pub fn new(pid: u32) -> Proc {
        Proc { pid }
    }

    /// The benchmark's own process.
    pub fn me() -> Proc {
        Proc::new(std::process::id())
    }

    /// User + system CPU seconds so far (utime + stime of /proc/<pid>/stat), or 0 once the
    /// process is gone.
    pub fn cpu_seconds(&self) -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return 0.0;
        };
        // Fields after the command name (which may hold spaces) start at ") ".
        let rest = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n).and_then(|f| f.parse::<f64>().ok());
        let ticks = field(11).unwrap_or_default() + field(12).unwrap_or_default();
        // USER_HZ is 100 on Linux for every architecture this runs on.
        ticks / 100.0
    }

    /// Resident memory now (`VmRSS`), in MB.
    pub fn rss_mb(&self) -> f64 {
        self.status_mb("VmRSS:")
    }

    /// Peak resident memory so far (`VmHWM`), in MB.
    pub fn peak_rss_mb(&self) -> f64 {
        self.status_mb("VmHWM:")
    }

    fn status_mb(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

/// The machine's TCP counters named `names` (from the `TcpExt` lines of /proc/net/netstat),
/// 0 for one that is not there.
pub fn tcp_counters<const N: usize>(names: [&str; N]) -> [u64; N] {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(header), Some(values)) = (lines.next(), lines.next()) else {
        return [0; N];
    };
    let pairs: Vec<(&str, u64)> = header
        .split_whitespace()
        .zip(values.split_whitespace())
        .map(|(name, value)| (name, value.parse().unwrap_or(0)))
        .collect();
    names.map(|name| {
        pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    })
}
