//! The memory limit of the process's control group: containers (Docker,
//! Kubernetes), batch jobs (Slurm's `--mem`) and systemd units run under
//! one, and the kernel kills a process that goes beyond it, whatever
//! `/proc/meminfo` says the machine holds. A 3 GB result in a 2 GiB job was
//! checked against the machine's 24 GiB, granted, and killed (SIGKILL).
//!
//! Both cgroup versions: v2 (`memory.max`, `memory.current`) and v1's
//! memory controller (`memory.limit_in_bytes`, `memory.usage_in_bytes`).
//! The process's group and every ancestor up to the mount's root count (a
//! job's limit sits above the step a task runs in); the tightest wins.

use std::path::{Path, PathBuf};

/// A v1 limit this large means none (the kernel reports `PAGE_COUNTER_MAX`
/// pages, about 2^63 bytes, for "unlimited").
const V1_UNLIMITED: u64 = 1 << 62;

/// The limit in bytes and the room left under it (the limit minus what the
/// group uses, page cache that can be dropped not counted), for the
/// tightest group on the way to the root; `None` without a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    pub(crate) bytes: u64,
    pub(crate) room: u64,
}

/// The limit of the calling process, read from `/proc/self` and the cgroup
/// file systems it names.
pub(crate) fn process_limit() -> Option<Limit> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    limit_of(&mountinfo, &cgroups, Path::new("/"))
}

/// The limit for a process whose `/proc/self/mountinfo` and
/// `/proc/self/cgroup` read `mountinfo` and `cgroups`, with the file system
/// under `root` (`/`, or a test's folder).
pub(crate) fn limit_of(mountinfo: &str, cgroups: &str, root: &Path) -> Option<Limit> {
    let mut found: Option<Limit> = None;
    for version in [Version::V2, Version::V1] {
        let Some(folder) = group_folder(mountinfo, cgroups, version, root) else {
            continue;
        };
        for limit in folder_limits(&folder.group, &folder.mount, version) {
            found = Some(match found {
                Some(f) => Limit {
                    bytes: f.bytes.min(limit.bytes),
                    room: f.room.min(limit.room),
                },
                None => limit,
            });
        }
    }
    found
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

impl Version {
    fn files(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Version::V2 => ("memory.max", "memory.current", "inactive_file"),
            Version::V1 => (
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_inactive_file",
            ),
        }
    }
}

/// Where the process's group lives: its folder, and the mount point above
/// which no ancestor is visible.
struct GroupFolder {
    group: PathBuf,
    mount: PathBuf,
}

/// The folder of the process's group for `version`: the mount of that
/// hierarchy (from `mountinfo`) joined with the process's path in it (from
/// `cgroups`), less the part of that path the mount itself stands for (a
/// container sees its own group mounted as the root).
fn group_folder(
    mountinfo: &str,
    cgroups: &str,
    version: Version,
    root: &Path,
) -> Option<GroupFolder> {
    let (mount_root, mount_point) = mountinfo.lines().find_map(|line| {
        // id parent major:minor root mount-point options [optional...] - fstype source super-options
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let mut after = right.split(' ');
        let (fstype, _source, options) = (after.next()?, after.next()?, after.next().unwrap_or(""));
        let wanted = match version {
            Version::V2 => fstype == "cgroup2",
            Version::V1 => fstype == "cgroup" && options.split(',').any(|o| o == "memory"),
        };
        (wanted && fields.len() >= 5).then(|| (unescape(fields[3]), unescape(fields[4])))
    })?;
    let path = cgroups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = match version {
            Version::V2 => id == "0" && controllers.is_empty(),
            Version::V1 => controllers.split(',').any(|c| c == "memory"),
        };
        wanted.then_some(path)
    })?;
    let inside = match path.strip_prefix(mount_root.as_str()) {
        Some(rest) if mount_root == "/" || rest.is_empty() || rest.starts_with('/') => rest,
        // The group lies outside what this mount shows: only the mount's
        // own files can be read.
        _ => "",
    };
    let mount = root.join(mount_point.trim_start_matches('/'));
    let group = mount.join(inside.trim_start_matches('/'));
    // `..` in a path read from the kernel would be odd; never climb above the mount.
    if inside.split('/').any(|c| c == "..") {
        return None;
    }
    Some(GroupFolder { group, mount })
}

/// Mount fields escape spaces and the like as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The limits set on `group` and on each ancestor up to `mount`.
fn folder_limits(group: &Path, mount: &Path, version: Version) -> Vec<Limit> {
    let (max_file, usage_file, inactive_key) = version.files();
    let mut limits = Vec::new();
    let mut folder = Some(group);
    while let Some(dir) = folder {
        if let Some(bytes) = read_limit(&dir.join(max_file), version) {
            let used = read_number(&dir.join(usage_file)).unwrap_or(0);
            let inactive = std::fs::read_to_string(dir.join("memory.stat"))
                .ok()
                .and_then(|text| stat_field(&text, inactive_key))
                .unwrap_or(0);
            limits.push(Limit {
                bytes,
                room: bytes.saturating_sub(used.saturating_sub(inactive)),
            });
        }
        if dir == mount {
            break;
        }
        folder = dir.parent().filter(|p| p.starts_with(mount));
    }
    limits
}

/// A limit file's value: `None` for none (`max`, v1's huge number) or when
/// unreadable.
fn read_limit(path: &Path, version: Version) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    if text == "max" {
        return None;
    }
    let value: u64 = text.parse().ok()?;
    (version == Version::V2 || value < V1_UNLIMITED).then_some(value)
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a `memory.stat` text (`key value` per line).
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("unet_rt_cgroup_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const V2_MOUNT: &str = "41 31 0:38 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";

    #[test]
    fn v2_the_tightest_ancestor_wins_and_page_cache_is_room() {
        let root = temp("v2");
        // A job limit of 4 GiB above the step the process runs in (none).
        write(
            &root,
            "sys/fs/cgroup/job/memory.max",
            &format!("{}\n", 4 * GIB),
        );
        write(
            &root,
            "sys/fs/cgroup/job/memory.current",
            &format!("{}\n", 3 * GIB),
        );
        write(
            &root,
            "sys/fs/cgroup/job/memory.stat",
            &format!("anon 1\ninactive_file {}\n", 2 * GIB),
        );
        write(&root, "sys/fs/cgroup/job/step/memory.max", "max\n");
        write(&root, "sys/fs/cgroup/memory.max", "max\n");
        let limit = limit_of(V2_MOUNT, "0::/job/step\n", &root).unwrap();
        assert_eq!(
            limit,
            Limit {
                bytes: 4 * GIB,
                room: 3 * GIB
            }
        );
        // No limit anywhere: none.
        write(&root, "sys/fs/cgroup/job/memory.max", "max\n");
        assert_eq!(limit_of(V2_MOUNT, "0::/job/step\n", &root), None);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn v1_memory_controller_and_its_unlimited_value() {
        let root = temp("v1");
        let mounts = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                      32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n";
        let groups = "4:memory:/process_api/abc\n1:cpu:/\n0::/\n";
        write(
            &root,
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(
            &root,
            "sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        assert_eq!(limit_of(mounts, groups, &root), None);
        write(
            &root,
            "sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes",
            &format!("{}\n", 2 * GIB),
        );
        write(
            &root,
            "sys/fs/cgroup/memory/process_api/abc/memory.usage_in_bytes",
            &format!("{}\n", GIB),
        );
        write(
            &root,
            "sys/fs/cgroup/memory/process_api/abc/memory.stat",
            "total_inactive_file 0\n",
        );
        assert_eq!(
            limit_of(mounts, groups, &root),
            Some(Limit {
                bytes: 2 * GIB,
                room: GIB
            })
        );
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_container_sees_its_own_group_as_the_mount_root() {
        let root = temp("container");
        // Docker without a cgroup namespace: the path names the host's group,
        // which the container has mounted at the hierarchy's mount point.
        let mounts = "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n";
        write(
            &root,
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            &format!("{}\n", GIB),
        );
        let limit = limit_of(mounts, "9:memory:/docker/abc\n", &root).unwrap();
        assert_eq!(limit.bytes, GIB);
        // A path outside the mount's root reads the mount's own files.
        assert_eq!(
            limit_of(mounts, "9:memory:/elsewhere\n", &root)
                .unwrap()
                .bytes,
            GIB
        );
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn unreadable_or_odd_files_mean_no_limit() {
        let root = temp("odd");
        assert_eq!(limit_of("", "", &root), None);
        assert_eq!(limit_of(V2_MOUNT, "0::/a\n", &root), None);
        write(&root, "sys/fs/cgroup/a/memory.max", "lots\n");
        assert_eq!(limit_of(V2_MOUNT, "0::/a\n", &root), None);
        assert!(limit_of(V2_MOUNT, "0::/a/../../etc\n", &root).is_none());
        // Usage above the limit leaves no room, without wrapping.
        write(&root, "sys/fs/cgroup/a/memory.max", "100\n");
        write(&root, "sys/fs/cgroup/a/memory.current", "300\n");
        assert_eq!(
            limit_of(V2_MOUNT, "0::/a\n", &root),
            Some(Limit {
                bytes: 100,
                room: 0
            })
        );
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn mount_fields_are_unescaped() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/a\0"), r"/a\0");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn this_process_reads_without_error() {
        // Whatever this machine has; only that reading it works.
        if let Some(limit) = process_limit() {
            assert!(limit.room <= limit.bytes);
        }
    }
}
