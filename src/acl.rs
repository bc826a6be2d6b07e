//! Who may do what: the access control list of `--acl` and the networks of `--admin-allow`.
//! No I/O beyond reading the ACL file once at start.
//!
//! A connection's **identity** is the common name of its client certificate (mutual TLS only;
//! a plain or server-only TLS connection has none). The ACL file is the INI file Python gear's
//! `geard --acl` reads (the server Zuul runs): one section per identity, with
//!
//! ```ini
//! # functions it may register as a worker (CAN_DO), functions it may submit jobs to,
//! # and whether it may administer (see below); comments go on lines of their own
//! [zuul-executor]
//! register = executor:.*
//! invoke = merger:.*|build:.*
//! grant = false
//! ```
//!
//! Deny by default: an identity without a section, a permission left out, or a connection
//! without an identity is refused. The patterns are regular expressions that must match the
//! **whole** function name (gear anchors only the start: a gear ACL can only become stricter
//! here, never looser). `admin` is accepted as another name for `grant`.
//!
//! **Administering** means the admin command `shutdown` and, with an ACL, the admin commands
//! that change state (`cancel job`, `create function`, `drop function`, `maxqueue`). It is
//! allowed to peers on loopback, on a network of `--admin-allow`, and to identities granted
//! it. Without an ACL, every other command (and everything but `shutdown`) is open to all, as
//! in gearmand.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use regex::bytes::Regex;

/// What one identity may do.
#[derive(Debug)]
pub struct Grant {
    /// The identity (certificate common name).
    pub identity: String,
    register: Option<Regex>,
    invoke: Option<Regex>,
    /// May administer.
    pub admin: bool,
}

impl Grant {
    /// Whether this identity may register `function` as a worker.
    pub fn may_register(&self, function: &[u8]) -> bool {
        self.register.as_ref().is_some_and(|r| r.is_match(function))
    }

    /// Whether this identity may submit jobs to `function`.
    pub fn may_invoke(&self, function: &[u8]) -> bool {
        self.invoke.as_ref().is_some_and(|r| r.is_match(function))
    }
}

/// The access control list: a grant per identity.
#[derive(Debug, Default)]
pub struct Acl {
    grants: HashMap<String, Arc<Grant>>,
}

/// Why an ACL file cannot be used, with the line it is about.
#[derive(Debug)]
pub struct AclError(pub String);

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Acl {
    /// Reads and checks an ACL file.
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AclError(format!("cannot read {}: {e}", path.display())))?;
        Acl::parse(&text).map_err(|AclError(e)| AclError(format!("{}: {e}", path.display())))
    }

    /// Parses the text of an ACL file (INI, as Python's configparser reads it: `[section]`
    /// lines, `key = value` or `key: value`, `#` and `;` comment lines, indented lines
    /// continuing a value, keys case-insensitive, `[DEFAULT]` giving defaults to every
    /// section). A key, section or boolean it does not know is an error, never ignored.
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut sections: Vec<(String, Vec<Setting>)> = Vec::new();
        let mut last_key: Option<usize> = None;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            if raw.starts_with([' ', '\t']) && last_key.is_some() {
                // A continuation of the previous value.
                let (_, keys) = sections.last_mut().expect("a key is in a section");
                let value = &mut keys.last_mut().expect("a key was read").1;
                value.push('\n');
                value.push_str(trimmed);
                continue;
            }
            if let Some(rest) = trimmed.strip_prefix('[') {
                let name = rest
                    .strip_suffix(']')
                    .ok_or_else(|| AclError(format!("line {n}: a section line ends with ]")))?;
                if sections.iter().any(|(s, _)| s == name) {
                    return Err(AclError(format!("line {n}: section [{name}] given twice")));
                }
                sections.push((name.to_string(), Vec::new()));
                last_key = None;
                continue;
            }
            let Some(split) = trimmed.find(['=', ':']) else {
                return Err(AclError(format!(
                    "line {n}: expected `key = value` or `[identity]`"
                )));
            };
            let key = trimmed[..split].trim().to_ascii_lowercase();
            let value = trimmed[split + 1..].trim().to_string();
            let Some((section, keys)) = sections.last_mut() else {
                return Err(AclError(format!(
                    "line {n}: `{key}` before any [identity] section"
                )));
            };
            if !matches!(key.as_str(), "register" | "invoke" | "grant" | "admin") {
                return Err(AclError(format!(
                    "line {n}: unknown key `{key}` in [{section}] (register, invoke, grant)"
                )));
            }
            if keys.iter().any(|(k, _, _)| *k == key) {
                return Err(AclError(format!(
                    "line {n}: `{key}` given twice in [{section}]"
                )));
            }
            keys.push((key, value, n));
            last_key = Some(n);
        }
        let defaults = sections
            .iter()
            .position(|(s, _)| s == "DEFAULT")
            .map(|i| sections.remove(i).1)
            .unwrap_or_default();
        let mut acl = Acl::default();
        for (identity, keys) in sections {
            let value = |key: &str| {
                keys.iter()
                    .chain(defaults.iter())
                    .find(|(k, _, _)| k == key)
                    .map(|(_, v, n)| (v.as_str(), *n))
            };
            let pattern = |key: &str| -> Result<Option<Regex>, AclError> {
                match value(key) {
                    // An empty pattern grants nothing, as in gear.
                    None | Some(("", _)) => Ok(None),
                    Some((p, n)) => Regex::new(&format!("^(?:{p})$"))
                        .map(Some)
                        .map_err(|e| AclError(format!("line {n}: `{key}` of [{identity}]: {e}"))),
                }
            };
            if value("grant").is_some() && value("admin").is_some() {
                return Err(AclError(format!(
                    "[{identity}]: `grant` and `admin` are one permission; give one of them"
                )));
            }
            let admin = match value("grant").or(value("admin")) {
                None => false,
                Some((v, n)) => parse_bool(v).ok_or_else(|| {
                    AclError(format!(
                        "line {n}: `grant` of [{identity}] must be true or false, not {v:?}"
                    ))
                })?,
            };
            let grant = Grant {
                register: pattern("register")?,
                invoke: pattern("invoke")?,
                admin,
                identity: identity.clone(),
            };
            acl.grants.insert(identity, Arc::new(grant));
        }
        Ok(acl)
    }

    /// The grant of an identity, if the ACL has one.
    pub fn grant(&self, identity: &str) -> Option<Arc<Grant>> {
        self.grants.get(identity).cloned()
    }

    /// Number of identities listed.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// Whether no identity is listed.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

/// A `key = value` line of a section: key, value, line number.
type Setting = (String, String, usize);

/// configparser's booleans.
fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// One network: an address and the number of leading bits that must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n`, or an address alone (all its bits).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or a network (CIDR)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => match b.parse::<u8>() {
                Ok(b) if b <= max => b,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr { addr, bits })
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn mask(bits: u8, width: u32) -> u128 {
            if bits == 0 {
                0
            } else {
                (!0u128 << (width - bits as u32)) & (u128::MAX >> (128 - width))
            }
        }
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let m = mask(self.bits, 32);
                (u32::from(net) as u128 & m) == (u32::from(ip) as u128 & m)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let m = mask(self.bits, 128);
                (u128::from(net) & m) == (u128::from(ip) & m)
            }
            _ => false,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Who may administer by address (`--admin-allow`): loopback unless `none` was given, and the
/// networks listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminNets {
    loopback: bool,
    nets: Vec<Cidr>,
}

impl Default for AdminNets {
    /// Loopback only.
    fn default() -> AdminNets {
        AdminNets {
            loopback: true,
            nets: Vec::new(),
        }
    }
}

impl AdminNets {
    /// Parses `--admin-allow`: comma-separated networks (added to loopback), or `none`.
    pub fn parse(list: &str) -> Result<AdminNets, String> {
        if list.trim().eq_ignore_ascii_case("none") {
            return Ok(AdminNets {
                loopback: false,
                nets: Vec::new(),
            });
        }
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            nets.push(Cidr::parse(item)?);
        }
        if nets.is_empty() {
            return Err("no network given (a CIDR list, or `none`)".into());
        }
        Ok(AdminNets {
            loopback: true,
            nets,
        })
    }

    /// Whether a peer at `ip` may administer.
    pub fn allows(&self, ip: IpAddr) -> bool {
        (self.loopback && canonical(ip).is_loopback()) || self.nets.iter().any(|n| n.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gear_acl_files_parse() {
        let acl = Acl::parse(
            "# who may do what\n\
             [DEFAULT]\n\
             grant = no\n\
             [client]\n\
             invoke = build:.*\n\
             \n\
             [worker]\n\
             Register: build:.*|merge\n\
             [root]\n\
             grant = True\n\
             invoke =\n",
        )
        .unwrap();
        assert_eq!(acl.len(), 3);
        let client = acl.grant("client").unwrap();
        assert!(client.may_invoke(b"build:x") && client.may_invoke(b"build:"));
        assert!(!client.may_invoke(b"xbuild:x") && !client.may_register(b"build:x"));
        assert!(!client.admin);
        let worker = acl.grant("worker").unwrap();
        assert!(worker.may_register(b"build:1") && worker.may_register(b"merge"));
        // The whole name must match, not a prefix (gear's `re.match`).
        assert!(!worker.may_register(b"merger"));
        let root = acl.grant("root").unwrap();
        assert!(root.admin && !root.may_invoke(b"") && !root.may_invoke(b"x"));
        assert!(acl.grant("nobody").is_none());
    }

    #[test]
    fn bad_acl_files_are_refused_with_the_line() {
        for (text, want) in [
            ("invoke = x\n", "line 1"),
            ("[a]\ninvoke = (\n", "line 2"),
            ("[a]\nregistr = x\n", "unknown key"),
            ("[a]\ngrant = maybe\n", "true or false"),
            ("[a]\n[a]\n", "twice"),
            ("[a]\ninvoke = x\ninvoke = y\n", "twice"),
            ("[a]\ngrant = 1\nadmin = 1\n", "one permission"),
            ("[a\n", "ends with ]"),
            ("[a]\njust words\n", "key = value"),
        ] {
            let e = Acl::parse(text).unwrap_err().0;
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn networks_match_by_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let n = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(n.contains(ip("10.1.200.3")) && !n.contains(ip("10.2.0.1")));
        assert!(n.contains(ip("::ffff:10.1.0.9")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(Cidr::parse("10.0.0.1").unwrap().contains(ip("10.0.0.1")));
        assert!(!Cidr::parse("10.0.0.1").unwrap().contains(ip("10.0.0.2")));
        assert!(Cidr::parse("10.0.0.0/33").is_err() && Cidr::parse("host").is_err());

        let default = AdminNets::default();
        assert!(default.allows(ip("127.0.0.1")) && default.allows(ip("127.3.2.1")));
        assert!(default.allows(ip("::1")) && default.allows(ip("::ffff:127.0.0.1")));
        assert!(!default.allows(ip("10.0.0.1")));
        let more = AdminNets::parse("10.0.0.0/8, 192.168.1.7").unwrap();
        assert!(more.allows(ip("127.0.0.1")) && more.allows(ip("10.9.9.9")));
        assert!(more.allows(ip("192.168.1.7")) && !more.allows(ip("192.168.1.8")));
        let none = AdminNets::parse("none").unwrap();
        assert!(!none.allows(ip("127.0.0.1")) && !none.allows(ip("::1")));
        assert!(AdminNets::parse(" , ").is_err());
    }
}
