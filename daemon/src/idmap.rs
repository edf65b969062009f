//! `serve --translate-uid` / `--translate-gid`: user and group ids translated between the
//! guest and the host, in virtiofsd's syntax. Requests carry guest ids (the caller's, and
//! SETATTR's new owner), which become host ids before the core acts; every attribute sent
//! back carries the host's ids made guest ids. Ids no rule names stay as they are.
//!
//! A rule is `TYPE:A:B:COUNT` (or `forbid-guest:A:COUNT`); any separator that is not a
//! letter, digit, `-` or `_` will do, the same within one rule:
//! - `map:GUEST:HOST:COUNT` — the two ranges, one to one, both ways;
//! - `guest:GUEST:HOST:COUNT` — guest to host only; `host:HOST:GUEST:COUNT` — host to guest;
//! - `squash-guest:GUEST:HOST:COUNT` — every guest id of the range becomes the one host id;
//!   `squash-host:HOST:GUEST:COUNT` the other way;
//! - `forbid-guest:GUEST:COUNT` — requests as (or chown to) these guest ids fail with EPERM.
//!
//! The first rule that covers an id decides.

use std::fmt;
use std::str::FromStr;

/// One translation rule. Fields: the first id of the guest and of the host range, and the
/// range's length.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdRule {
    /// `map:`: one to one, both directions.
    Map { guest: u32, host: u32, count: u32 },
    /// `guest:`: one to one, guest to host.
    Guest { guest: u32, host: u32, count: u32 },
    /// `host:`: one to one, host to guest.
    Host { host: u32, guest: u32, count: u32 },
    /// `squash-guest:`: a guest range to one host id.
    SquashGuest { guest: u32, host: u32, count: u32 },
    /// `squash-host:`: a host range to one guest id.
    SquashHost { host: u32, guest: u32, count: u32 },
    /// `forbid-guest:`: a guest range refused.
    ForbidGuest { guest: u32, count: u32 },
}

/// Why a rule did not parse.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdMapError {
    /// The type before the first separator is not one of the six.
    UnknownType(String),
    /// The rule has the wrong number of numbers for its type.
    Fields { expected: usize, seen: usize },
    /// A field is not a 32-bit unsigned number.
    Number(String),
    /// A range of 0 ids, or one that runs past u32::MAX.
    Range(String),
}

impl fmt::Display for IdMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdMapError::UnknownType(t) => write!(
                f,
                "unknown id map type {t:?} (map, guest, host, squash-guest, squash-host, forbid-guest)"
            ),
            IdMapError::Fields { expected, seen } => {
                write!(f, "expected {expected} numbers, got {seen}")
            }
            IdMapError::Number(s) => write!(f, "{s:?} is not an id"),
            IdMapError::Range(s) => write!(f, "{s}: empty range, or past the largest id"),
        }
    }
}

impl std::error::Error for IdMapError {}

impl FromStr for IdRule {
    type Err = IdMapError;

    fn from_str(s: &str) -> Result<Self, IdMapError> {
        let sep = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            .ok_or(IdMapError::Fields {
                expected: 3,
                seen: 0,
            })?;
        let mut parts = s.split(sep);
        let kind = parts.next().unwrap_or_default().to_ascii_lowercase();
        let nums = parts
            .map(|p| p.parse::<u32>().map_err(|_| IdMapError::Number(p.into())))
            .collect::<Result<Vec<_>, _>>()?;
        let want = if kind == "forbid-guest" { 2 } else { 3 };
        let known = [
            "map",
            "guest",
            "host",
            "squash-guest",
            "squash-host",
            "forbid-guest",
        ];
        if !known.contains(&kind.as_str()) {
            return Err(IdMapError::UnknownType(kind));
        }
        if nums.len() != want {
            return Err(IdMapError::Fields {
                expected: want,
                seen: nums.len(),
            });
        }
        let count = nums[want - 1];
        let fits = |start: u32| count > 0 && start.checked_add(count - 1).is_some();
        let ok = match kind.as_str() {
            "map" | "guest" | "host" => fits(nums[0]) && fits(nums[1]),
            _ => fits(nums[0]),
        };
        if !ok {
            return Err(IdMapError::Range(s.into()));
        }
        let (a, b) = (nums[0], nums[1]);
        Ok(match kind.as_str() {
            "map" => IdRule::Map {
                guest: a,
                host: b,
                count,
            },
            "guest" => IdRule::Guest {
                guest: a,
                host: b,
                count,
            },
            "host" => IdRule::Host {
                host: a,
                guest: b,
                count,
            },
            "squash-guest" => IdRule::SquashGuest {
                guest: a,
                host: b,
                count,
            },
            "squash-host" => IdRule::SquashHost {
                host: a,
                guest: b,
                count,
            },
            _ => IdRule::ForbidGuest { guest: a, count },
        })
    }
}

/// `id` in `[start, start + count)`: its offset there.
fn within(id: u32, start: u32, count: u32) -> Option<u32> {
    id.checked_sub(start).filter(|off| *off < count)
}

/// The rules for one kind of id (users or groups), in command-line order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    rules: Vec<IdRule>,
}

impl IdMap {
    /// A map of `rules`; empty maps every id to itself.
    pub fn new(rules: Vec<IdRule>) -> Self {
        IdMap { rules }
    }

    /// No rule: ids pass unchanged.
    pub fn is_identity(&self) -> bool {
        self.rules.is_empty()
    }

    /// The host id for guest id `id`; None when a rule forbids it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        for rule in &self.rules {
            match *rule {
                IdRule::Map { guest, host, count } | IdRule::Guest { guest, host, count } => {
                    if let Some(off) = within(id, guest, count) {
                        return Some(host + off);
                    }
                }
                IdRule::SquashGuest { guest, host, count } => {
                    if within(id, guest, count).is_some() {
                        return Some(host);
                    }
                }
                IdRule::ForbidGuest { guest, count } => {
                    if within(id, guest, count).is_some() {
                        return None;
                    }
                }
                IdRule::Host { .. } | IdRule::SquashHost { .. } => {}
            }
        }
        Some(id)
    }

    /// The guest id for host id `id`.
    pub fn to_guest(&self, id: u32) -> u32 {
        for rule in &self.rules {
            match *rule {
                IdRule::Map { guest, host, count } | IdRule::Host { host, guest, count } => {
                    if let Some(off) = within(id, host, count) {
                        return guest + off;
                    }
                }
                IdRule::SquashHost { host, guest, count } => {
                    if within(id, host, count).is_some() {
                        return guest;
                    }
                }
                IdRule::Guest { .. } | IdRule::SquashGuest { .. } | IdRule::ForbidGuest { .. } => {}
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rules: &[&str]) -> IdMap {
        IdMap::new(rules.iter().map(|r| r.parse().unwrap()).collect())
    }

    #[test]
    fn rules_parse_as_virtiofsd_writes_them() {
        assert_eq!(
            "map:1000:2000:10".parse(),
            Ok(IdRule::Map {
                guest: 1000,
                host: 2000,
                count: 10
            })
        );
        assert_eq!(
            "Squash-Guest/0/65534/1000".parse(),
            Ok(IdRule::SquashGuest {
                guest: 0,
                host: 65534,
                count: 1000
            })
        );
        assert_eq!(
            "forbid-guest:0:1".parse(),
            Ok(IdRule::ForbidGuest { guest: 0, count: 1 })
        );
        for bad in [
            "",
            "map",
            "map:1:2",
            "map:1:2:3:4",
            "mop:1:2:3",
            "map:1:x:3",
            "map:1:2:0",
            "map:4294967295:1:2",
            "forbid-guest:1:2:3",
            "map:1:2/3",
        ] {
            assert!(bad.parse::<IdRule>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_translate_by_the_first_rule_that_covers_them() {
        let m = map(&[
            "forbid-guest:5:1",
            "map:1000:2000:10",
            "squash-guest:0:65534:1000",
        ]);
        assert_eq!(m.to_host(1003), Some(2003));
        assert_eq!(m.to_host(1010), Some(1010), "past the range: identity");
        assert_eq!(m.to_host(0), Some(65534));
        assert_eq!(m.to_host(5), None, "forbidden before the squash");
        assert_eq!(m.to_guest(2009), 1009);
        assert_eq!(m.to_guest(65534), 65534, "squash-guest is one way");
        let h = map(&["host:0:100:1", "squash-host:1:7:100"]);
        assert_eq!(h.to_guest(0), 100);
        assert_eq!(h.to_guest(50), 7);
        assert_eq!(h.to_host(100), Some(100), "host rules are one way");
        assert!(IdMap::default().is_identity());
    }
}
