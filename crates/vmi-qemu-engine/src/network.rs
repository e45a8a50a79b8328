//! A Linux phone's network, when its image asks for one: QEMU's user-mode network (the guest's connections become
//! QEMU's own sockets on the site: no device on the host, no route into its networks), fenced off the site itself.
//! The fence is BPF programs on the phone's cgroup (cgroup v2), run by the kernel on every `connect` and every
//! datagram QEMU sends: IPv4 to loopback (QEMU's gateway address 10.0.2.2 is the site's loopback), "this host",
//! link-local (cloud metadata services), the private and shared ranges (a provider's own machines: 10/8,
//! 172.16/12, 192.168/16, 100.64/10), multicast and the other reserved ranges, or any of the site's own networks
//! is refused with `EPERM`, and IPv6 is refused whole (it is off in the guest). Only the Internet is reached, as
//! the site reaches it. The site's networks are read when the phone starts.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// QEMU's arguments for a phone's network: user-mode, IPv4 only, nothing forwarded into the guest.
pub(crate) fn qemu_args(network: bool) -> Vec<String> {
    if !network {
        return vec!["-nic".into(), "none".into()];
    }
    vec![
        "-netdev".into(),
        "user,id=net0,ipv6=off,restrict=off".into(),
        "-device".into(),
        "virtio-net-pci,netdev=net0".into(),
    ]
}

/// The IPv4 networks a phone's QEMU may not reach: everything that is not the Internet (loopback, the private and
/// shared ranges a provider's own machines live on, link-local, multicast, the other reserved ranges) and each of
/// the site's own networks (its interfaces' subnets), as they are now. Fails (and the phone is not started) if the
/// site's addresses cannot be read.
pub fn blocked_networks() -> Result<Vec<(Ipv4Addr, u8)>, String> {
    let mut blocked = vec![
        (Ipv4Addr::new(0, 0, 0, 0), 8),
        (Ipv4Addr::new(10, 0, 0, 0), 8),
        (Ipv4Addr::new(100, 64, 0, 0), 10),
        (Ipv4Addr::new(127, 0, 0, 0), 8),
        (Ipv4Addr::new(169, 254, 0, 0), 16),
        (Ipv4Addr::new(172, 16, 0, 0), 12),
        (Ipv4Addr::new(192, 0, 0, 0), 24),
        (Ipv4Addr::new(192, 168, 0, 0), 16),
        (Ipv4Addr::new(198, 18, 0, 0), 15),
        (Ipv4Addr::new(224, 0, 0, 0), 3),
    ];
    for (address, prefix) in site_networks()? {
        if !blocked.iter().any(|&(net, p)| p <= prefix && within(address, net, p)) {
            blocked.push((address, prefix));
        }
    }
    Ok(blocked)
}

fn within(address: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = mask_of(prefix);
    u32::from(address) & mask == u32::from(net) & mask
}

fn mask_of(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) }
}

/// Every IPv4 network on the site's interfaces: each address with its prefix.
fn site_networks() -> Result<Vec<(Ipv4Addr, u8)>, String> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs; each entry is read only while the list lives.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return Err(format!("cannot list the site's addresses: {}", std::io::Error::last_os_error()));
        }
        let mut at = list;
        while !at.is_null() {
            let addr = (*at).ifa_addr;
            if !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let v4 = &*(addr as *const libc::sockaddr_in);
                let mask = (*at).ifa_netmask;
                let prefix = if mask.is_null() {
                    32
                } else {
                    u32::from_be((*(mask as *const libc::sockaddr_in)).sin_addr.s_addr).leading_ones() as u8
                };
                out.push((Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)), prefix));
            }
            at = (*at).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    Ok(out)
}

/// Attaches the fence to the cgroup v2 directory `group`: its processes reach none of `blocked` and no IPv6.
pub fn fence(group: &Path, blocked: &[(Ipv4Addr, u8)]) -> Result<(), String> {
    let dir = std::fs::File::open(group).map_err(|e| format!("opening {}: {e}", group.display()))?;
    let v4 = ipv4_program(blocked);
    let refuse_all = [insn(MOV64_K, 0, 0, 0, 0), insn(EXIT, 0, 0, 0, 0)];
    for (program, attach, what) in [
        (&v4[..], BPF_CGROUP_INET4_CONNECT, "IPv4 connections"),
        (&v4[..], BPF_CGROUP_UDP4_SENDMSG, "IPv4 datagrams"),
        (&refuse_all[..], BPF_CGROUP_INET6_CONNECT, "IPv6 connections"),
        (&refuse_all[..], BPF_CGROUP_UDP6_SENDMSG, "IPv6 datagrams"),
    ] {
        let prog = load(program, attach).map_err(|e| format!("loading the BPF program for {what}: {e}"))?;
        attach_to(&dir, &prog, attach)
            .map_err(|e| format!("attaching the BPF program for {what} to {}: {e}", group.display()))?;
        // The cgroup holds the program now; this descriptor can go.
    }
    Ok(())
}

/// One BPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: dst | (src << 4), off, imm }
}

/// `r_dst = *(u32 *)(r_src + off)`
const LOAD_W: u8 = 0x61;
/// `w_dst = w_src`
const MOV32_X: u8 = 0xbc;
/// `w_dst &= imm`
const AND32_K: u8 = 0x54;
/// `if w_dst == imm goto +off` (32-bit compare)
const JEQ32_K: u8 = 0x16;
/// `r_dst = imm`
const MOV64_K: u8 = 0xb7;
const EXIT: u8 = 0x95;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
const BPF_CGROUP_UDP6_SENDMSG: u32 = 15;
/// `offsetof(struct bpf_sock_addr, user_ip4)`: the destination, in network byte order.
const USER_IP4: i16 = 4;

/// The IPv4 program: 1 (go on) unless the destination lies in one of `blocked`, then 0 (refused).
fn ipv4_program(blocked: &[(Ipv4Addr, u8)]) -> Vec<Insn> {
    let mut p = vec![insn(LOAD_W, 2, 1, USER_IP4, 0)];
    // Three instructions a network, then "allow" (two), then "deny".
    let deny = 1 + 3 * blocked.len() + 2;
    for &(net, prefix) in blocked {
        // The address as loaded: its bytes in network order read as a native u32, and the mask the same way.
        let mask = u32::from_ne_bytes(mask_of(prefix).to_be_bytes());
        let net = u32::from_ne_bytes(net.octets()) & mask;
        p.push(insn(MOV32_X, 3, 2, 0, 0));
        p.push(insn(AND32_K, 3, 0, 0, mask as i32));
        let after = p.len() + 1;
        p.push(insn(JEQ32_K, 3, 0, (deny - after) as i16, net as i32));
    }
    p.push(insn(MOV64_K, 0, 0, 0, 1));
    p.push(insn(EXIT, 0, 0, 0, 0));
    debug_assert_eq!(p.len(), deny);
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// `union bpf_attr`, as much of it as these calls use (the kernel reads the rest as zero).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(&mut self, at: usize, v: u32) -> &mut Attr {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, at: usize, v: u64) -> &mut Attr {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: the bpf system call with an attribute block of the size passed; pointers in it outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

fn load(program: &[Insn], attach: u32) -> std::io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = Attr::new();
    attr.u32(0, BPF_PROG_TYPE_CGROUP_SOCK_ADDR)
        .u32(4, program.len() as u32)
        .u64(8, program.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(68, attach);
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: a descriptor the kernel just returned, owned from here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn attach_to(group: &std::fs::File, program: &OwnedFd, attach: u32) -> std::io::Result<()> {
    let mut attr = Attr::new();
    attr.u32(0, group.as_raw_fd() as u32).u32(4, program.as_raw_fd() as u32).u32(8, attach);
    bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blocked_networks_hold_loopback_and_the_sites_own_addresses() {
        let blocked = blocked_networks().expect("blocked networks");
        let hit = |a: Ipv4Addr| blocked.iter().any(|&(n, p)| within(a, n, p));
        assert!(hit(Ipv4Addr::new(127, 0, 0, 1)) && hit(Ipv4Addr::new(127, 9, 9, 9)));
        assert!(hit(Ipv4Addr::new(169, 254, 169, 254)), "cloud metadata");
        assert!(hit(Ipv4Addr::new(100, 100, 100, 200)), "shared address space (another cloud's metadata)");
        assert!(hit(Ipv4Addr::new(172, 17, 0, 2)) && hit(Ipv4Addr::new(192, 168, 1, 10)), "private networks");
        for (own, prefix) in site_networks().expect("the site's networks") {
            assert!(hit(own), "{own}");
            let last = Ipv4Addr::from(u32::from(own) | !mask_of(prefix));
            assert!(hit(last), "{own}/{prefix}: the whole subnet");
        }
        assert!(!hit(Ipv4Addr::new(8, 8, 8, 8)), "the Internet is not fenced off");
    }

    #[test]
    fn the_ipv4_program_jumps_to_its_refusal_from_every_check() {
        let p = ipv4_program(&[(Ipv4Addr::new(127, 0, 0, 0), 8), (Ipv4Addr::new(10, 1, 2, 3), 32)]);
        let deny = p.len() - 2;
        for (i, x) in p.iter().enumerate().filter(|(_, x)| x.code == JEQ32_K) {
            assert_eq!(i + 1 + x.off as usize, deny);
        }
        // 127.0.0.0/8 as loaded on this machine: the first byte 127, the mask its first byte.
        assert_eq!(p[2].imm as u32, u32::from_ne_bytes([255, 0, 0, 0]));
        assert_eq!(p[3].imm as u32, u32::from_ne_bytes([127, 0, 0, 0]));
    }
}
