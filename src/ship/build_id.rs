//! The GNU build-id of this executable: a hash of its contents the linker writes into an
//! ELF note (`NT_GNU_BUILD_ID`), the same for every copy of one build, wherever it lies.
//! Ranks of an MPI job on other nodes run copies of the binary, whose file identity
//! ([`super::ImageId`]) cannot match; their build-ids can.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::OnceLock;

/// The type of the note that holds the build-id.
const NT_GNU_BUILD_ID: u32 = 3;
/// A program header of this type points to notes.
const PT_NOTE: u32 = 4;
/// Notes are read up to this size; a build-id note is about 36 bytes.
const MAX_NOTES: u64 = 1 << 20;

/// A build-id read once, or why it could not be.
type Once = Result<Option<Vec<u8>>, (io::ErrorKind, String)>;

/// This executable's build-id (read once), `None` if it has none (linked without
/// `--build-id`).
pub(crate) fn current() -> io::Result<Option<Vec<u8>>> {
    static CURRENT: OnceLock<Once> = OnceLock::new();
    CURRENT
        .get_or_init(|| {
            let path = super::exe_path();
            let read = std::fs::File::open(&path).and_then(|mut file| of_file(&mut file));
            read.map_err(|e| (e.kind(), format!("reading {}: {e}", path.display())))
        })
        .clone()
        .map_err(|(kind, message)| io::Error::new(kind, message))
}

/// The build-id in the notes of the ELF file `file`; `None` if it has none.
pub(crate) fn of_file(file: &mut (impl Read + Seek)) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0_u8; 64];
    file.read_exact(&mut header[..52])?;
    let elf = Elf::from_ident(&header)?;
    if elf.wide {
        file.read_exact(&mut header[52..64])?;
    }
    // e_phoff, e_phentsize, e_phnum
    let (phoff, phentsize, phnum) = if elf.wide {
        (
            elf.u64(&header[0x20..]),
            elf.u16(&header[0x36..]),
            elf.u16(&header[0x38..]),
        )
    } else {
        (
            u64::from(elf.u32(&header[0x1c..])),
            elf.u16(&header[0x2a..]),
            elf.u16(&header[0x2c..]),
        )
    };
    let entry = usize::from(phentsize);
    if entry < if elf.wide { 56 } else { 32 } {
        return Err(invalid("program headers too small"));
    }
    let table = entry * usize::from(phnum);
    if table > 1 << 20 {
        return Err(invalid("program header table too large"));
    }
    let mut headers = vec![0_u8; table];
    file.seek(SeekFrom::Start(phoff))?;
    file.read_exact(&mut headers)?;
    for ph in headers.chunks_exact(entry) {
        if elf.u32(ph) != PT_NOTE {
            continue;
        }
        // p_offset, p_filesz
        let (offset, size) = if elf.wide {
            (elf.u64(&ph[0x08..]), elf.u64(&ph[0x20..]))
        } else {
            (
                u64::from(elf.u32(&ph[0x04..])),
                u64::from(elf.u32(&ph[0x10..])),
            )
        };
        let mut notes = vec![0_u8; usize::try_from(size.min(MAX_NOTES)).unwrap_or(0)];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut notes)?;
        if let Some(id) = elf.find_build_id(&notes) {
            return Ok(Some(id.to_vec()));
        }
    }
    Ok(None)
}

/// How an ELF file's integers read: its class (64-bit or not) and byte order.
#[derive(Debug, Clone, Copy)]
struct Elf {
    wide: bool,
    big_endian: bool,
}

impl Elf {
    fn from_ident(header: &[u8]) -> io::Result<Elf> {
        if header[..4] != *b"\x7fELF" {
            return Err(invalid("not an ELF file"));
        }
        let wide = match header[4] {
            1 => false,
            2 => true,
            _ => return Err(invalid("unknown ELF class")),
        };
        let big_endian = match header[5] {
            1 => false,
            2 => true,
            _ => return Err(invalid("unknown ELF byte order")),
        };
        Ok(Elf { wide, big_endian })
    }

    fn u16(self, at: &[u8]) -> u16 {
        let bytes = [at[0], at[1]];
        if self.big_endian {
            u16::from_be_bytes(bytes)
        } else {
            u16::from_le_bytes(bytes)
        }
    }

    fn u32(self, at: &[u8]) -> u32 {
        let bytes = [at[0], at[1], at[2], at[3]];
        if self.big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        }
    }

    fn u64(self, at: &[u8]) -> u64 {
        let mut bytes = [0_u8; 8];
        bytes.copy_from_slice(&at[..8]);
        if self.big_endian {
            u64::from_be_bytes(bytes)
        } else {
            u64::from_le_bytes(bytes)
        }
    }

    /// The description of the `GNU` note of type [`NT_GNU_BUILD_ID`] among `notes`.
    fn find_build_id(self, mut notes: &[u8]) -> Option<&[u8]> {
        let padded = |n: u32| usize::try_from(n).ok()?.checked_next_multiple_of(4);
        while notes.len() >= 12 {
            let (name_size, desc_size, kind) = (
                self.u32(notes),
                self.u32(&notes[4..]),
                self.u32(&notes[8..]),
            );
            let name_len = padded(name_size)?;
            let desc_len = padded(desc_size)?;
            let body = notes.get(12..)?;
            let name = body.get(..usize::try_from(name_size).ok()?)?;
            let desc_at = body.get(name_len..)?;
            let desc = desc_at.get(..usize::try_from(desc_size).ok()?)?;
            if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
                return Some(desc);
            }
            notes = desc_at.get(desc_len..)?;
        }
        None
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// The build-id as hex, for errors.
pub(crate) fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn this_executable_has_the_build_id_readelf_shows() {
        let ours = current().unwrap();
        if !cfg!(target_os = "linux") {
            return;
        }
        let ours = ours.expect("the linker writes a build-id on this platform");
        assert!(ours.len() >= 8, "{ours:?}");
        // readelf is part of binutils, which the linker comes from.
        let exe = std::env::current_exe().unwrap();
        if let Ok(out) = std::process::Command::new("readelf")
            .arg("-n")
            .arg(&exe)
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&hex(&ours)), "{text}");
        }
    }

    #[test]
    fn a_file_without_notes_has_none_and_a_non_elf_file_is_an_error() {
        // A minimal 64-bit little-endian header with no program headers.
        let mut elf = vec![0_u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x36] = 56;
        assert_eq!(of_file(&mut io::Cursor::new(elf)).unwrap(), None);
        let text = b"#!/bin/sh\necho hello, this is not a program at all\n".to_vec();
        assert!(of_file(&mut io::Cursor::new(text)).is_err());
    }

    proptest! {
        /// Whatever a file holds, reading its build-id returns, never panics.
        #[test]
        fn any_bytes_give_an_answer(mut bytes in proptest::collection::vec(any::<u8>(), 0..512), elf in any::<bool>()) {
            if elf && bytes.len() >= 6 {
                bytes[..4].copy_from_slice(b"\x7fELF");
                bytes[4] = 1 + (bytes[4] & 1);
                bytes[5] = 1 + (bytes[5] & 1);
            }
            let _ = of_file(&mut io::Cursor::new(bytes));
        }

        #[test]
        fn any_notes_give_an_answer(notes in proptest::collection::vec(any::<u8>(), 0..256), big in any::<bool>()) {
            let _ = Elf { wide: true, big_endian: big }.find_build_id(&notes);
        }
    }
}
