//! The process metrics that Prometheus' client libraries share (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, …), read from `/proc/self` at each scrape. Elsewhere
//! than on Linux, or when `/proc` is not mounted, they are left out.

use std::{fs, path::Path};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

/// Clock ticks per second of the times in `/proc/[pid]/stat`: the kernel's `USER_HZ`, which
/// is 100 on every architecture that Linux supports today.
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads the process' figures at each scrape.
#[derive(Debug)]
pub(super) struct ProcessCollector;

/// What `/proc` says about this process; a figure that could not be read is `None`.
#[derive(Debug, Default, PartialEq)]
struct Figures {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    threads: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    start_time_seconds: Option<f64>,
}

impl Figures {
    fn read(proc: &Path) -> Figures {
        let text = |name: &str| fs::read_to_string(proc.join(name)).ok();
        let mut figures = Figures::default();
        if let Some(stat) = text("self/stat") {
            figures.read_stat(&stat, text("stat").as_deref());
        }
        if let Some(status) = text("self/status") {
            figures.resident_bytes = status_kib(&status, "VmRSS:").map(|kib| kib * 1024);
            figures.virtual_bytes = status_kib(&status, "VmSize:").map(|kib| kib * 1024);
        }
        figures.open_fds = fs::read_dir(proc.join("self/fd"))
            .ok()
            .map(|entries| entries.count() as u64);
        figures.max_fds = text("self/limits").as_deref().and_then(max_open_files);
        figures
    }

    /// CPU time, threads and start time from `/proc/self/stat`, whose second field (the
    /// command name, in parentheses) may hold spaces: fields are counted after its `)`.
    fn read_stat(&mut self, stat: &str, system_stat: Option<&str>) {
        let Some((_, after_name)) = stat.rsplit_once(')') else {
            return;
        };
        // Field 3 (the state) is the first after the name; fields are numbered from 1.
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (field(14), field(15)) {
            self.cpu_seconds = Some((user + system) as f64 / TICKS_PER_SECOND);
        }
        self.threads = field(20);
        let boot_time = system_stat.and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("btime "))
                .and_then(|secs| secs.trim().parse::<u64>().ok())
        });
        if let (Some(boot), Some(ticks)) = (boot_time, field(22)) {
            self.start_time_seconds = Some(boot as f64 + ticks as f64 / TICKS_PER_SECOND);
        }
    }
}

/// A `Name:   1234 kB` line of `/proc/self/status`, in KiB.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix(name))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The soft limit of `Max open files` in `/proc/self/limits`; `None` when unlimited.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let figures = Figures::read(Path::new("/proc"));
        if let Some(seconds) = figures.cpu_seconds {
            let metric = ConstCounter::new(seconds);
            metric.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                metric.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                figures.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                figures.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                figures.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (the soft limit).",
                figures.max_fds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                figures.threads,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let metric = ConstGauge::new(value);
                metric.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    metric.metric_type(),
                )?)?;
            }
        }
        if let Some(seconds) = figures.start_time_seconds {
            let metric = ConstGauge::new(seconds);
            metric.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                metric.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_from_proc_files() {
        let dir = std::env::temp_dir().join(format!("causeway-proc-{}", uuid::Uuid::now_v7()));
        fs::create_dir_all(dir.join("self/fd")).unwrap();
        for fd in ["0", "1", "2", "7"] {
            fs::write(dir.join("self/fd").join(fd), "").unwrap();
        }
        // A command name with spaces and a parenthesis, as a process may choose.
        let mut stat = String::from("4242 (cause way) x) S 1 4242 4242 0 -1 4194560 1 0 0 0 ");
        stat.push_str("250 130 0 0 20 0 9 0 123456 2000000 900 18446744073709551615\n");
        fs::write(dir.join("self/stat"), stat).unwrap();
        fs::write(
            dir.join("stat"),
            "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n",
        )
        .unwrap();
        fs::write(
            dir.join("self/status"),
            "Name:\tcauseway\nVmSize:\t  20000 kB\nVmRSS:\t    3600 kB\n",
        )
        .unwrap();
        fs::write(
            dir.join("self/limits"),
            "Limit                     Soft Limit           Hard Limit           Units\n\
             Max open files            1024                 524288               files\n",
        )
        .unwrap();
        let mut figures = Figures::read(&dir);
        let started = figures.start_time_seconds.take().unwrap();
        assert!((started - 1_700_001_234.56).abs() < 1e-3, "{started}");
        assert_eq!(
            figures,
            Figures {
                cpu_seconds: Some(3.8),
                resident_bytes: Some(3600 * 1024),
                virtual_bytes: Some(20000 * 1024),
                threads: Some(9),
                open_fds: Some(4),
                max_fds: Some(1024),
                start_time_seconds: None,
            }
        );
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(Figures::read(&dir), Figures::default());
    }
}
