//! The default thread count: one per performance core.
//!
//! Decode streams weights and gains nothing from a second hyper-thread of a core; and on a
//! hybrid CPU (Intel Alder Lake and later, ARM big.LITTLE) a thread on an efficiency core
//! finishes its share of every matmul last, so the fast cores wait for it at each step. Linux
//! says which cores are which: `cpu_capacity` (scaled to 1024 for the fastest, on ARM and
//! on Intel hybrids with ITMT) or, failing that, `cpufreq/cpuinfo_max_freq`. A core counts as
//! a performance core when its capacity is within 10 % of the fastest's. Without topology
//! (containers, other systems) the count falls back to physical cores from /proc/cpuinfo.

use std::collections::BTreeMap;
use std::path::Path;

/// One logical CPU this process may run on.
#[derive(Clone, Debug, PartialEq)]
pub struct Cpu {
    /// (package, core) — hyper-threads share it.
    pub core: (u32, u32),
    /// Relative speed (cpu_capacity, or the maximum frequency), if Linux gives one.
    pub capacity: Option<u64>,
}

/// The count chosen, and why (for `-v`).
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub threads: usize,
    pub why: String,
}

/// Performance cores among `cpus`.
pub fn choose(cpus: &[Cpu]) -> Option<Choice> {
    if cpus.is_empty() {
        return None;
    }
    // Per core, its fastest logical CPU.
    let mut cores: BTreeMap<(u32, u32), Option<u64>> = BTreeMap::new();
    for c in cpus {
        let e = cores.entry(c.core).or_insert(c.capacity);
        *e = (*e).max(c.capacity);
    }
    let caps: Vec<u64> = cores.values().filter_map(|&c| c).collect();
    let (n_cores, n_logical) = (cores.len(), cpus.len());
    if caps.len() == n_cores {
        let max = *caps.iter().max().unwrap_or(&0);
        let fast = caps.iter().filter(|&&c| c * 10 >= max * 9).count();
        if fast < n_cores {
            return Some(Choice {
                threads: fast,
                why: format!(
                    "{fast} performance cores of {n_cores} ({} slower cores left idle; -t to change)",
                    n_cores - fast
                ),
            });
        }
    }
    Some(Choice {
        threads: n_cores,
        why: if n_cores < n_logical {
            format!("{n_cores} cores ({n_logical} hardware threads; one thread per core)")
        } else {
            format!("{n_cores} cores")
        },
    })
}

/// The CPUs of this process's affinity mask, with their topology from sysfs.
pub fn read_cpus(sysfs: &Path, allowed: &[u32]) -> Vec<Cpu> {
    let read_u64 = |p: std::path::PathBuf| -> Option<u64> {
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    };
    let mut out = Vec::new();
    for &id in allowed {
        let d = sysfs.join(format!("cpu{id}"));
        let (Some(pkg), Some(core)) = (
            read_u64(d.join("topology/physical_package_id")),
            read_u64(d.join("topology/core_id")),
        ) else {
            return Vec::new();
        };
        let capacity = read_u64(d.join("cpu_capacity"))
            .or_else(|| read_u64(d.join("cpufreq/cpuinfo_max_freq")));
        out.push(Cpu {
            core: (pkg as u32, core as u32),
            capacity,
        });
    }
    // Capacities only mean something if every CPU has one.
    if out.iter().any(|c| c.capacity.is_none()) {
        out.iter_mut().for_each(|c| c.capacity = None);
    }
    out
}

/// The CPUs this process may use, from /proc/self/status's `Cpus_allowed_list` ("0-3,8").
pub fn allowed_cpus() -> Vec<u32> {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return Vec::new();
    };
    let Some(list) = s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")) else {
        return Vec::new();
    };
    parse_list(list.trim())
}

fn parse_list(list: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<u32>().ok()),
        }
    }
    out
}

/// The default: performance cores from sysfs, else physical cores.
pub fn default_threads() -> Choice {
    let cpus = read_cpus(Path::new("/sys/devices/system/cpu"), &allowed_cpus());
    choose(&cpus).unwrap_or_else(|| {
        let n = super::physical_cores();
        Choice {
            threads: n,
            why: format!("{n} physical cores (/proc/cpuinfo)"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(core: u32, capacity: Option<u64>) -> Cpu {
        Cpu {
            core: (0, core),
            capacity,
        }
    }

    #[test]
    fn hybrid_laptop_uses_the_performance_cores_only() {
        // 6 P-cores with two hyper-threads each (capacity 1024), 8 E-cores (capacity 600).
        let mut cpus = Vec::new();
        for c in 0..6 {
            cpus.push(cpu(c, Some(1024)));
            cpus.push(cpu(c, Some(1024)));
        }
        for c in 6..14 {
            cpus.push(cpu(c, Some(600)));
        }
        let ch = choose(&cpus).unwrap();
        assert_eq!(ch.threads, 6, "{}", ch.why);
        assert!(ch.why.contains("8 slower"), "{}", ch.why);
    }

    #[test]
    fn big_little_by_max_frequency() {
        // 4 big at 2.4 GHz (one slightly lower binned), 4 LITTLE at 1.8 GHz.
        let mut cpus: Vec<Cpu> = (0..4)
            .map(|c| cpu(c, Some(2_400_000 - 100_000 * (c == 3) as u64)))
            .collect();
        cpus.extend((4..8).map(|c| cpu(c, Some(1_800_000))));
        assert_eq!(choose(&cpus).unwrap().threads, 4);
    }

    #[test]
    fn uniform_cores_one_thread_each_and_no_capacity_means_all_cores() {
        let smt: Vec<Cpu> = (0..8).map(|i| cpu(i / 2, Some(1024))).collect();
        let ch = choose(&smt).unwrap();
        assert_eq!(ch.threads, 4);
        assert!(ch.why.contains("8 hardware threads"), "{}", ch.why);
        let unknown: Vec<Cpu> = (0..3).map(|i| cpu(i, None)).collect();
        assert_eq!(choose(&unknown).unwrap().threads, 3);
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_list("0-3,8,10-11"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_list("5"), vec![5]);
        assert_eq!(parse_list(""), Vec::<u32>::new());
    }

    #[test]
    fn reads_a_sysfs_tree() {
        let root = std::env::temp_dir().join(format!("ledge-sysfs-{}", std::process::id()));
        for (id, core, cap) in [(0, 0, 1024), (1, 0, 1024), (2, 1, 1024), (3, 2, 512)] {
            let d = root.join(format!("cpu{id}"));
            std::fs::create_dir_all(d.join("topology")).unwrap();
            std::fs::write(d.join("topology/physical_package_id"), "0\n").unwrap();
            std::fs::write(d.join("topology/core_id"), format!("{core}\n")).unwrap();
            std::fs::write(d.join("cpu_capacity"), format!("{cap}\n")).unwrap();
        }
        let cpus = read_cpus(&root, &[0, 1, 2, 3]);
        assert_eq!(choose(&cpus).unwrap().threads, 2);
        // Only CPUs 0 and 1 allowed: one core.
        assert_eq!(choose(&read_cpus(&root, &[0, 1])).unwrap().threads, 1);
        // A CPU without topology: no sysfs answer at all.
        assert!(read_cpus(&root, &[0, 7]).is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }
}
