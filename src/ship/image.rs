//! What "the same executable image" means: the identity of the file a process runs
//! ([`ImageId`]), the path workers are started from ([`exe_path`]), and the address ranges
//! that file is mapped at ([`main_image_ranges`]), where shippable functions live.

use serde::{Deserialize, Serialize};
use std::io;
use std::sync::OnceLock;

/// The identity of an executable file: device, inode, size and modification time.
///
/// Workers are started from `/proc/self/exe` on Linux, which names the parent's own image
/// even if the file was replaced on disk; the handshake compares both identities anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImageId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl ImageId {
    /// This process's executable identity (read once).
    pub(crate) fn current() -> io::Result<ImageId> {
        static CURRENT: OnceLock<Result<ImageId, (io::ErrorKind, String)>> = OnceLock::new();
        CURRENT
            .get_or_init(|| {
                use std::os::unix::fs::MetadataExt;
                let path = exe_path();
                let meta = std::fs::metadata(&path)
                    .map_err(|e| (e.kind(), format!("reading {}: {e}", path.display())))?;
                Ok(ImageId {
                    dev: meta.dev(),
                    ino: meta.ino(),
                    len: meta.len(),
                    mtime: meta.mtime(),
                    mtime_nsec: meta.mtime_nsec(),
                })
            })
            .clone()
            .map_err(|(kind, message)| io::Error::new(kind, message))
    }
}

/// The path a worker is started from: the parent's own image.
pub(crate) fn exe_path() -> std::path::PathBuf {
    if cfg!(target_os = "linux") {
        "/proc/self/exe".into()
    } else {
        std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into())
    }
}

/// The address ranges mapped from the file that holds `anchor` (an address of this crate's
/// code, the same on every call), read once from `/proc/self/maps`. `None` where there is
/// no such file to read.
pub(crate) fn main_image_ranges(anchor: usize) -> Option<&'static [(usize, usize)]> {
    static RANGES: OnceLock<Option<Vec<(usize, usize)>>> = OnceLock::new();
    RANGES
        .get_or_init(|| {
            let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
            parse_image_ranges(&maps, anchor)
        })
        .as_deref()
}

fn parse_image_ranges(maps: &str, anchor: usize) -> Option<Vec<(usize, usize)>> {
    let lines: Vec<(usize, usize, &str)> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (lo, hi) = fields.next()?.split_once('-')?;
            let path = fields.nth(4).unwrap_or("");
            Some((
                usize::from_str_radix(lo, 16).ok()?,
                usize::from_str_radix(hi, 16).ok()?,
                path,
            ))
        })
        .collect();
    let image = lines
        .iter()
        .find(|(lo, hi, _)| (*lo..*hi).contains(&anchor))
        .map(|(_, _, path)| *path)
        .filter(|path| !path.is_empty())?;
    Some(
        lines
            .iter()
            .filter(|(_, _, path)| *path == image)
            .map(|(lo, hi, _)| (*lo, *hi))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ranges_come_from_the_anchors_file() {
        let maps = "\
1000-2000 r-xp 00000000 08:01 1 /usr/bin/app
2000-3000 r--p 00000000 08:01 1 /usr/bin/app
4000-5000 r-xp 00000000 08:01 2 /usr/lib/libplugin.so
6000-7000 rw-p 00000000 00:00 0
";
        let ranges = parse_image_ranges(maps, 0x1800).unwrap();
        assert_eq!(ranges, vec![(0x1000, 0x2000), (0x2000, 0x3000)]);
        assert!(parse_image_ranges(maps, 0x6800).is_none());
    }

    #[test]
    fn this_process_has_an_identity() {
        assert_eq!(ImageId::current().unwrap(), ImageId::current().unwrap());
    }
}
