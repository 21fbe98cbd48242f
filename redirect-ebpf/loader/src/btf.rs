//! Just enough of the kernel's BTF to find two field offsets of
//! `struct sock`, which the sk_msg program reads to do the flow control the
//! kernel leaves out of redirected messages. BTF format: a header, a type
//! section (records of variable length) and a string section; see the
//! kernel's Documentation/bpf/btf.rst.

use std::collections::HashMap;

use crate::CaptureError;

/// Where the kernel's own BTF is.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Byte offsets in the running kernel's `struct sock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sk_backlog.rmem_alloc` (`sk_rmem_alloc`): bytes queued for reading.
    pub rmem_alloc: u32,
    /// `sk_rcvbuf`: the receive buffer size.
    pub rcvbuf: u32,
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

struct Type {
    name: u32,
    kind: u32,
    kind_flag: bool,
    /// The `size_or_type` word: a referenced type for typedefs and modifiers.
    target: u32,
    /// Struct and union members: (name, type, bit offset).
    members: Vec<(u32, u32, u32)>,
}

struct Btf<'a> {
    strings: &'a [u8],
    types: Vec<Type>,
}

fn bad(why: &str) -> CaptureError {
    CaptureError::Btf(format!("{VMLINUX_BTF}: {why}"))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, CaptureError> {
    data.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| bad("truncated"))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Btf<'a>, CaptureError> {
        if data.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(bad("not BTF (bad magic) or not little-endian"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = hdr_len + u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = hdr_len + u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let strings = data
            .get(str_off..str_off + str_len)
            .ok_or_else(|| bad("string section out of bounds"))?;
        let section = data
            .get(type_off..type_off + type_len)
            .ok_or_else(|| bad("type section out of bounds"))?;
        let mut types = Vec::new();
        let mut at = 0;
        while at < section.len() {
            let name = u32_at(section, at)?;
            let info = u32_at(section, at + 4)?;
            let target = u32_at(section, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_ARRAY => at += 12,
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        members.push((
                            u32_at(section, at)?,
                            u32_at(section, at + 4)?,
                            u32_at(section, at + 8)?,
                        ));
                        at += 12;
                    }
                }
                KIND_ENUM | KIND_FUNC_PROTO => at += 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => at += 12 * vlen,
                _ => {}
            }
            types.push(Type {
                name,
                kind,
                kind_flag: info >> 31 == 1,
                target,
                members,
            });
        }
        Ok(Btf { strings, types })
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    /// Type ids start at 1 (0 is void).
    fn get(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.get(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.target;
                }
                _ => return Some(t),
            }
        }
        None
    }

    fn members(&self, t: &Type) -> HashMap<&str, (u32, u32)> {
        t.members
            .iter()
            .map(|(name, ty, off)| {
                let bits = if t.kind_flag { off & 0x00ff_ffff } else { *off };
                (self.name(*name), (*ty, bits))
            })
            .collect()
    }
}

/// Reads the running kernel's BTF and finds the offsets.
pub fn sock_offsets() -> Result<SockOffsets, CaptureError> {
    let data = std::fs::read(VMLINUX_BTF).map_err(|e| bad(&e.to_string()))?;
    sock_offsets_in(&data)
}

fn sock_offsets_in(data: &[u8]) -> Result<SockOffsets, CaptureError> {
    let btf = Btf::parse(data)?;
    let sock = btf
        .types
        .iter()
        .find(|t| t.kind == KIND_STRUCT && btf.name(t.name) == "sock")
        .ok_or_else(|| bad("no struct sock"))?;
    let members = btf.members(sock);
    let &(_, rcvbuf) = members
        .get("sk_rcvbuf")
        .ok_or_else(|| bad("no sock.sk_rcvbuf"))?;
    let &(backlog_ty, backlog) = members
        .get("sk_backlog")
        .ok_or_else(|| bad("no sock.sk_backlog"))?;
    let backlog_struct = btf
        .resolve(backlog_ty)
        .filter(|t| t.kind == KIND_STRUCT)
        .ok_or_else(|| bad("sock.sk_backlog is not a struct"))?;
    let &(_, rmem) = btf
        .members(backlog_struct)
        .get("rmem_alloc")
        .ok_or_else(|| bad("no sock.sk_backlog.rmem_alloc"))?;
    Ok(SockOffsets {
        rmem_alloc: (backlog + rmem) / 8,
        rcvbuf: rcvbuf / 8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernels_struct_sock_offsets_are_found_and_plausible() {
        let o = sock_offsets().expect("the kernel's BTF (this machine kind has it)");
        // Both fields sit well inside struct sock, past sock_common (>= 100
        // bytes), and are distinct.
        assert!(o.rmem_alloc >= 100 && o.rmem_alloc < 2048, "{o:?}");
        assert!(o.rcvbuf >= 100 && o.rcvbuf < 2048, "{o:?}");
        assert_ne!(o.rmem_alloc, o.rcvbuf);
    }

    #[test]
    fn data_that_is_not_btf_is_rejected_with_a_reason() {
        let e = sock_offsets_in(b"definitely not btf").unwrap_err();
        assert!(e.to_string().contains("bad magic"), "{e}");
    }
}
