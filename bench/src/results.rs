//! Provenance of a result (date, machine, command, commit) and result files.
//!
//! Everything here degrades to `unknown` rather than failing: a result
//! without a kernel version is still a result.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;

/// The machine a result was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model name from `/proc/cpuinfo`.
    pub cpu: String,
    /// CPUs available to this process.
    pub cores: usize,
    /// Total memory, human-readable (from `/proc/meminfo`).
    pub memory: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
}

impl Machine {
    /// Describes the current machine.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpu: proc_field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".to_owned()),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory: proc_field(&meminfo, "MemTotal")
                .and_then(|v| parse_kib(&v))
                .map_or_else(
                    || "unknown".to_owned(),
                    |kib| format!("{:.1} GiB", kib as f64 / 1_048_576.0),
                ),
            kernel: command_output("uname", &["-r"]).unwrap_or_else(|| "unknown".to_owned()),
        }
    }
}

/// The value of the first `key : value` line of a `/proc` file.
fn proc_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

/// Parses `16318412 kB` into kibibytes.
fn parse_kib(value: &str) -> Option<u64> {
    value
        .strip_suffix("kB")
        .unwrap_or(value)
        .trim()
        .parse()
        .ok()
}

/// Trimmed stdout of a successful command.
fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

/// The short commit of the current checkout, `-dirty` when tracked files
/// have changes; `None` outside a repository or before the first commit.
pub fn git_commit() -> Option<String> {
    let commit = command_output("git", &["rev-parse", "--short", "HEAD"])?;
    let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_some();
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

/// Tracked files with uncommitted changes (`git status --porcelain`, untracked files
/// left out): what `-dirty` in [`git_commit`] stands for. Empty when clean or unknown.
pub fn uncommitted_paths() -> Vec<String> {
    // Not `command_output`: trimming would eat the first line's leading status column.
    let Ok(out) = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
    else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.get(3..))
        .map(str::to_owned)
        .collect()
}

/// CPU time counters at one instant, for telling how busy the rest of the machine was
/// during a run (all in clock ticks, `USER_HZ`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    /// Busy time of every CPU (`/proc/stat`: all but idle and iowait).
    pub machine_busy: u64,
    /// Busy plus idle time of every CPU.
    pub machine_total: u64,
    /// This process's time plus that of its children it has waited for
    /// (`/proc/self/stat`: utime, stime, cutime, cstime).
    pub ours: u64,
}

impl CpuSample {
    /// Reads the counters now; zeros where `/proc` cannot be read.
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let (machine_busy, machine_total) = parse_proc_stat(&stat).unwrap_or_default();
        Self {
            machine_busy,
            machine_total,
            ours: parse_self_stat(&own).unwrap_or_default(),
        }
    }

    /// The share of the machine's CPU time between `self` and `later` used by processes
    /// other than this one and its waited-for children (0 to 1); `None` when unknown.
    pub fn others_share(&self, later: &Self) -> Option<f64> {
        let total = later.machine_total.checked_sub(self.machine_total)?;
        let busy = later.machine_busy.checked_sub(self.machine_busy)?;
        let ours = later.ours.checked_sub(self.ours)?;
        (total > 0).then(|| busy.saturating_sub(ours) as f64 / total as f64)
    }
}

/// (busy, total) ticks from the `cpu` line of `/proc/stat`.
fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice: inside user/nice]
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// utime + stime + cutime + cstime from `/proc/self/stat`.
fn parse_self_stat(text: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces: count fields after its `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, cstime field 17.
    (11..=14).map(|i| f.get(i)?.parse::<u64>().ok()).sum()
}

/// The command line of this process, quoted for a POSIX shell.
pub fn command_line() -> String {
    std::env::args()
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// A UTC calendar date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    /// Year.
    pub year: i64,
    /// Month, 1–12.
    pub month: u32,
    /// Day of the month, 1–31.
    pub day: u32,
    /// Seconds since midnight.
    pub second_of_day: u32,
}

impl UtcTime {
    /// The current time.
    pub fn now() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self::from_unix(i64::try_from(secs).unwrap_or(i64::MAX))
    }

    /// The time `secs` seconds after 1970-01-01T00:00:00Z.
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let second_of_day = secs.rem_euclid(86_400) as u32;
        // Civil-from-days over 400-year eras of 146 097 days, with years
        // starting on 1 March so that the leap day ends the year.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month,
            day,
            second_of_day,
        }
    }

    /// `YYYY-MM-DD`.
    pub fn date(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn rfc3339(&self) -> String {
        let s = self.second_of_day;
        format!(
            "{}T{:02}:{:02}:{:02}Z",
            self.date(),
            s / 3600,
            s / 60 % 60,
            s % 60
        )
    }
}

/// Writes `STEM.json` and `STEM.md` into `dir` (created if needed) and
/// returns their paths.
pub fn write_pair(
    dir: &Path,
    stem: &str,
    json: &impl Serialize,
    markdown: &str,
) -> anyhow::Result<[PathBuf; 2]> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json_path = dir.join(format!("{stem}.json"));
    let md_path = dir.join(format!("{stem}.md"));
    let mut text = serde_json::to_string_pretty(json)?;
    text.push('\n');
    std::fs::write(&json_path, text)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    std::fs::write(&md_path, markdown)
        .with_context(|| format!("cannot write {}", md_path.display()))?;
    Ok([json_path, md_path])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(UtcTime::from_unix(0).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(UtcTime::from_unix(19_723 * 86_400).date(), "2024-01-01");
        assert_eq!(UtcTime::from_unix(19_782 * 86_400).date(), "2024-02-29");
        assert_eq!(UtcTime::from_unix(11_017 * 86_400).date(), "2000-03-01");
        assert_eq!(
            UtcTime::from_unix(1_700_000_000).rfc3339(),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(UtcTime::from_unix(-1).rfc3339(), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn proc_fields() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu\n";
        assert_eq!(
            proc_field(cpuinfo, "model name").as_deref(),
            Some("AMD EPYC 7B13")
        );
        assert_eq!(proc_field(cpuinfo, "missing"), None);
        let meminfo = "MemTotal:       16318412 kB\nMemFree: 1 kB\n";
        assert_eq!(
            proc_field(meminfo, "MemTotal").and_then(|v| parse_kib(&v)),
            Some(16_318_412)
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--duration"), "--duration");
        assert_eq!(shell_quote("target/release/aigw"), "target/release/aigw");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn cpu_counters() {
        let stat = "cpu  100 5 50 800 20 1 2 3 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_proc_stat(stat), Some((161, 981)));
        let own = "1234 (aigw bench) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15";
        assert_eq!(parse_self_stat(own), Some(11 + 12 + 13 + 14));
        let a = CpuSample {
            machine_busy: 100,
            machine_total: 1000,
            ours: 40,
        };
        let b = CpuSample {
            machine_busy: 700,
            machine_total: 2000,
            ours: 340,
        };
        assert_eq!(a.others_share(&b), Some(0.3));
        assert!(CpuSample::now().machine_total > 0);
    }

    #[test]
    fn machine_detection_does_not_fail() {
        let m = Machine::detect();
        assert!(!m.cpu.is_empty() && !m.kernel.is_empty());
    }
}
