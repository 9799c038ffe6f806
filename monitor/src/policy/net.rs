//! Network rules: CIDR/port parsing, domain patterns, LPM-trie compilation
//! and the user-space emulation of the kernel lookup.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use monitor_common::policy::{
    net_action, LpmKey, NetEntry, NetItem, NET_MAX_ENTRIES, NET_MAX_ITEMS,
};

use super::error::CompileError;

/// Syntax errors of a network rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetParseError {
    #[error("invalid address {0:?}; expected an IPv4 or IPv6 address such as 10.0.0.0 or ::1")]
    Address(String),
    #[error("invalid prefix length {0:?}; expected 0..={1}")]
    PrefixLen(String, u8),
    #[error("host bits set in {given}; expected the network address, e.g. {suggestion}")]
    HostBits { given: String, suggestion: String },
    #[error("invalid port {0:?}; expected 1..=65535 or a range LOW-HIGH")]
    Port(String),
    #[error("missing `]` in {0:?}; expected [IPv6]/len:port")]
    Bracket(String),
    #[error("invalid domain {0:?}; expected a name like example.com or *.example.com")]
    Domain(String),
}

/// One CIDR rule: an IPv6 (or v4-mapped) network and a port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrRule {
    /// Network address, IPv4 mapped to `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Prefix length in IPv6 bits (IPv4 prefix + 96).
    pub prefixlen: u8,
    /// The rule was written as IPv4.
    pub v4: bool,
    pub port_lo: u16,
    pub port_hi: u16,
}

impl CidrRule {
    /// Parses `10.0.0.0/8`, `10.0.0.0/8:22`, `1.2.3.4:8000-8999`, `::1`,
    /// `fd00::/8`, `[::1]/128:443`, `[::1]:443`.
    pub fn parse(s: &str) -> Result<CidrRule, NetParseError> {
        let (net, port) = if let Some(rest) = s.strip_prefix('[') {
            let close = rest
                .find(']')
                .ok_or_else(|| NetParseError::Bracket(s.to_string()))?;
            let addr = &rest[..close];
            let after = &rest[close + 1..];
            let (len, port) = match after.split_once(':') {
                Some((len, port)) => (len, Some(port)),
                None => (after, None),
            };
            let len = len.strip_prefix('/');
            if len.is_none() && !after.is_empty() && !after.starts_with(':') {
                return Err(NetParseError::Bracket(s.to_string()));
            }
            ((addr, len), port)
        } else {
            let colons = s.bytes().filter(|&b| b == b':').count();
            let (net, port) = if colons == 1 {
                let (n, p) = s.split_once(':').unwrap_or((s, ""));
                (n, Some(p))
            } else {
                (s, None)
            };
            (
                net.split_once('/')
                    .map_or((net, None), |(a, l)| (a, Some(l))),
                port,
            )
        };
        let (addr_s, len_s) = net;
        let ip: IpAddr = addr_s
            .parse()
            .map_err(|_| NetParseError::Address(addr_s.to_string()))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len_s {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| NetParseError::PrefixLen(l.to_string(), max))?,
        };
        let (port_lo, port_hi) = match port {
            None => (0, u16::MAX),
            Some(p) => parse_ports(p)?,
        };
        let (addr, v4) = match ip {
            IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), true),
            IpAddr::V6(a) => (a.octets(), false),
        };
        let prefixlen = if v4 { len + 96 } else { len };
        let masked = mask(&addr, prefixlen);
        if masked != addr {
            let suggestion = if v4 {
                let o = &masked[12..];
                format!("{}/{len}", Ipv4Addr::new(o[0], o[1], o[2], o[3]))
            } else {
                format!("{}/{len}", Ipv6Addr::from(masked))
            };
            return Err(NetParseError::HostBits {
                given: s.to_string(),
                suggestion,
            });
        }
        Ok(CidrRule {
            addr,
            prefixlen,
            v4,
            port_lo,
            port_hi,
        })
    }

    /// Whether the rule's network contains `addr` (IPv6 or mapped bytes).
    pub fn contains(&self, addr: &[u8; 16]) -> bool {
        mask(addr, self.prefixlen) == self.addr
    }
}

impl fmt::Display for CidrRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.v4 {
            let o = &self.addr[12..];
            write!(
                f,
                "{}/{}",
                Ipv4Addr::new(o[0], o[1], o[2], o[3]),
                self.prefixlen - 96
            )?;
        } else {
            write!(f, "[{}]/{}", Ipv6Addr::from(self.addr), self.prefixlen)?;
        }
        if (self.port_lo, self.port_hi) != (0, u16::MAX) {
            if self.port_lo == self.port_hi {
                write!(f, ":{}", self.port_lo)?;
            } else {
                write!(f, ":{}-{}", self.port_lo, self.port_hi)?;
            }
        }
        Ok(())
    }
}

fn parse_ports(p: &str) -> Result<(u16, u16), NetParseError> {
    let err = || NetParseError::Port(p.to_string());
    let one = |s: &str| s.parse::<u16>().ok().filter(|&v| v != 0).ok_or_else(err);
    match p.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (one(lo)?, one(hi)?);
            if lo > hi {
                return Err(err());
            }
            Ok((lo, hi))
        }
        None => {
            let v = one(p)?;
            Ok((v, v))
        }
    }
}

/// `addr` with all bits past `len` cleared.
pub fn mask(addr: &[u8; 16], len: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let bits = (len as i32 - 8 * i as i32).clamp(0, 8);
        let m: u8 = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
        *o = addr[i] & m;
    }
    out
}

/// The 16-byte form used by the trie.
pub fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// A domain pattern: `example.com` (exactly) or `*.example.com` (any
/// subdomain, at any depth, not the apex). Case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPattern {
    /// Lowercase name without the `*.` and without a trailing dot.
    pub name: String,
    pub wildcard: bool,
}

impl DomainPattern {
    pub fn parse(s: &str) -> Result<DomainPattern, NetParseError> {
        let err = || NetParseError::Domain(s.to_string());
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, s),
        };
        let name = rest.strip_suffix('.').unwrap_or(rest).to_ascii_lowercase();
        if name.is_empty() || name.len() > 253 {
            return Err(err());
        }
        for label in name.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(err());
            }
        }
        Ok(DomainPattern { name, wildcard })
    }

    pub fn matches(&self, host: &str) -> bool {
        let h = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if self.wildcard {
            h.len() > self.name.len() + 1
                && h.ends_with(&self.name)
                && h.as_bytes()[h.len() - self.name.len() - 1] == b'.'
        } else {
            h == self.name
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// The compiled LPM trie content, sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetTables {
    pub entries: Vec<(LpmKey, NetEntry)>,
}

/// A CIDR rule with its ID and action, input of [`compile_net`].
#[derive(Debug, Clone, Copy)]
pub struct NetRuleRef {
    pub rule_id: u32,
    /// One of [`net_action`].
    pub action: u8,
    pub rule: CidrRule,
}

/// Builds one LPM entry per distinct prefix. Each entry holds the items of
/// every rule whose network contains the prefix (its own and covering ones),
/// ordered by precedence: longer prefix first, then deny before allow, then
/// rule ID. The first item whose port range contains the port decides.
pub fn compile_net(policy: &str, rules: &[NetRuleRef]) -> Result<NetTables, CompileError> {
    let mut prefixes: Vec<([u8; 16], u8)> = rules
        .iter()
        .map(|r| (r.rule.addr, r.rule.prefixlen))
        .collect();
    prefixes.sort();
    prefixes.dedup();
    if prefixes.len() > NET_MAX_ENTRIES {
        return Err(CompileError::NetTooManyEntries {
            policy: policy.to_string(),
            entries: prefixes.len(),
            max: NET_MAX_ENTRIES,
        });
    }
    let mut entries = Vec::with_capacity(prefixes.len());
    for (addr, len) in prefixes {
        let mut items: Vec<&NetRuleRef> = rules
            .iter()
            .filter(|r| r.rule.prefixlen <= len && r.rule.contains(&addr))
            .collect();
        items.sort_by_key(|r| {
            (
                std::cmp::Reverse(r.rule.prefixlen),
                r.action != net_action::DENY,
                r.rule_id,
            )
        });
        if items.len() > NET_MAX_ITEMS {
            let display = CidrRule {
                addr,
                prefixlen: len,
                v4: false,
                port_lo: 0,
                port_hi: u16::MAX,
            };
            return Err(CompileError::NetTooManyItems {
                policy: policy.to_string(),
                prefix: display.to_string(),
                items: items.len(),
                max: NET_MAX_ITEMS,
            });
        }
        let mut entry = NetEntry {
            nitems: items.len() as u32,
            ..NetEntry::default()
        };
        for (slot, r) in entry.items.iter_mut().zip(&items) {
            *slot = NetItem {
                rule_id: r.rule_id,
                port_lo: r.rule.port_lo,
                port_hi: r.rule.port_hi,
                action: r.action,
                prefixlen: r.rule.prefixlen,
                _pad: [0; 2],
            };
        }
        entries.push((
            LpmKey {
                prefixlen: len as u32,
                addr,
            },
            entry,
        ));
    }
    Ok(NetTables { entries })
}

impl NetTables {
    /// Longest-prefix match, as the kernel's LPM trie does it.
    pub fn lookup(&self, addr: IpAddr) -> Option<&NetEntry> {
        let a = ip_bytes(addr);
        self.entries
            .iter()
            .filter(|(k, _)| mask(&a, k.prefixlen as u8) == k.addr)
            .max_by_key(|(k, _)| k.prefixlen)
            .map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        let r = CidrRule::parse("10.0.0.0/8:22").unwrap();
        assert_eq!(
            (r.prefixlen, r.port_lo, r.port_hi, r.v4),
            (104, 22, 22, true)
        );
        assert_eq!(r.to_string(), "10.0.0.0/8:22");
        let r = CidrRule::parse("[::1]/128:443").unwrap();
        assert_eq!((r.prefixlen, r.port_lo), (128, 443));
        assert_eq!(CidrRule::parse("[::1]:443").unwrap().prefixlen, 128);
        assert_eq!(CidrRule::parse("fd00::/8").unwrap().prefixlen, 8);
        assert_eq!(CidrRule::parse("169.254.169.254").unwrap().prefixlen, 128);
        let r = CidrRule::parse("1.2.3.0/24:8000-8999").unwrap();
        assert_eq!((r.port_lo, r.port_hi), (8000, 8999));
        assert!(matches!(
            CidrRule::parse("10.0.0.1/8"),
            Err(NetParseError::HostBits { .. })
        ));
        assert!(matches!(
            CidrRule::parse("10.0.0.0/33"),
            Err(NetParseError::PrefixLen(..))
        ));
        assert!(matches!(
            CidrRule::parse("10.0.0.0/8:0"),
            Err(NetParseError::Port(_))
        ));
        assert!(matches!(
            CidrRule::parse("10.0.0.0/8:9-1"),
            Err(NetParseError::Port(_))
        ));
        assert!(matches!(
            CidrRule::parse("example.com"),
            Err(NetParseError::Address(_))
        ));
        assert!(matches!(
            CidrRule::parse("[::1/128"),
            Err(NetParseError::Bracket(_))
        ));
    }

    #[test]
    fn domains() {
        let d = DomainPattern::parse("*.Example.com.").unwrap();
        assert!(d.matches("a.b.example.com"));
        assert!(!d.matches("example.com"));
        assert!(!d.matches("badexample.com"));
        assert!(DomainPattern::parse("example.com")
            .unwrap()
            .matches("EXAMPLE.com."));
        assert!(DomainPattern::parse("a..b").is_err());
        assert!(DomainPattern::parse("*").is_err());
    }

    #[test]
    fn push_down_and_precedence() {
        let r = |id, action, s: &str| NetRuleRef {
            rule_id: id,
            action,
            rule: CidrRule::parse(s).unwrap(),
        };
        let rules = [
            r(0, net_action::DENY, "10.0.0.0/8"),
            r(1, net_action::ALLOW, "10.1.0.0/16:443"),
            r(2, net_action::DENY, "10.1.0.0/16:443"),
            r(3, net_action::ALLOW, "10.1.2.3/32:5432"),
        ];
        let t = compile_net("t", &rules).unwrap();
        assert_eq!(t.entries.len(), 3);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let e = t.lookup(ip("10.1.2.3")).unwrap();
        assert_eq!(e.nitems, 4);
        assert_eq!(e.lookup(5432).unwrap().rule_id, 3);
        assert_eq!(e.lookup(443).unwrap().rule_id, 2); // same prefix: deny first
        assert_eq!(e.lookup(80).unwrap().rule_id, 0); // covering /8
        assert_eq!(
            t.lookup(ip("10.9.9.9"))
                .unwrap()
                .lookup(443)
                .unwrap()
                .rule_id,
            0
        );
        assert!(t.lookup(ip("11.0.0.1")).is_none());
        assert!(t.lookup(ip("::1")).is_none());
    }
}
