//! `--xattrmap`: virtiofsd's extended attribute name mapping (virtiofsd's
//! doc/xattr-mapping.md), so a command line written for virtiofsd maps the same names.
//!
//! A map is an ordered list of rules `:type:scope:key:prepend:`, the first non-blank
//! character of each rule being its separator. The first rule that matches a name decides:
//!
//! - a name from the client (GETXATTR, SETXATTR, REMOVEXATTR) matches a rule whose scope is
//!   `client` or `all` and whose `key` begins the name;
//! - a name from the host (each name of a LISTXATTR answer) matches a rule whose scope is
//!   `server` or `all` and whose `prepend` begins the name.
//!
//! | type | client name | host name |
//! |---|---|---|
//! | `prefix` | `prepend` + the whole name | the name without `prepend` |
//! | `ok` | unchanged | unchanged |
//! | `bad` | refused (EPERM; ENODATA for GETXATTR) | hidden |
//! | `unsupported` | refused (ENOTSUP) | hidden |
//!
//! `:map:key:prepend:` is shorthand for the rules that prefix `key` names with `prepend`
//! and keep the two name spaces apart; it must be the last rule.
//!
//! A name no rule matches is treated as `bad`: the C virtiofsd ends every map with an
//! implicit `:bad:all:::`, so a map that forgets its catch-all fails closed.

use std::borrow::Cow;
use std::ffi::{CStr, CString};
use std::fmt;
use std::str::FromStr;

/// The longest xattr name Linux takes (include/uapi/linux/limits.h).
pub const XATTR_NAME_MAX: usize = 255;

/// What a rule does to the names it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleType {
    /// Client names matching `key` go to the host with `prepend` put before them; host
    /// names starting with `prepend` reach the client with it stripped.
    Prefix,
    /// Matching names pass unchanged.
    Ok,
    /// Matching client names are refused (ENODATA for reads, EPERM for changes);
    /// matching host names are hidden.
    Bad,
    /// Matching client names are refused with EOPNOTSUPP; matching host names are hidden.
    Unsupported,
}

/// Which names a rule is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Names from the client, on `key`.
    Client,
    /// Names from the host, on `prepend`.
    Server,
    /// Both.
    All,
}

impl Scope {
    fn client(self) -> bool {
        matches!(self, Scope::Client | Scope::All)
    }

    fn server(self) -> bool {
        matches!(self, Scope::Server | Scope::All)
    }
}

/// One rule of an `--xattrmap`; the first rule whose scope and prefix match a name decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What the rule does.
    pub kind: RuleType,
    /// Which direction it applies to.
    pub scope: Scope,
    /// Prefix matched against client names.
    pub key: Vec<u8>,
    /// Prefix matched against host names; for `Prefix`, what is put before client names.
    pub prepend: Vec<u8>,
}

impl fmt::Display for Rule {
    /// The rule as virtiofsd's syntax spells it, for logs (`map` shows expanded).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            RuleType::Prefix => "prefix",
            RuleType::Ok => "ok",
            RuleType::Bad => "bad",
            RuleType::Unsupported => "unsupported",
        };
        let scope = match self.scope {
            Scope::Client => "client",
            Scope::Server => "server",
            Scope::All => "all",
        };
        let key = String::from_utf8_lossy(&self.key);
        let prepend = String::from_utf8_lossy(&self.prepend);
        // The first separator that appears in neither name, so the text parses back.
        let sep = [':', '/', '|', ',', ';', '#', '%']
            .into_iter()
            .find(|c| !key.contains(*c) && !prepend.contains(*c))
            .unwrap_or('\u{1}');
        write!(f, "{sep}{kind}{sep}{scope}{sep}{key}{sep}{prepend}{sep}")
    }
}

/// A parsed `--xattrmap`: its rules with `map` expanded, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XattrMap {
    rules: Vec<Rule>,
}

/// Why a client's name is not passed to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A `bad` rule, or no rule at all.
    Bad,
    /// An `unsupported` rule.
    Unsupported,
    /// The mapped name is longer than XATTR_NAME_MAX.
    TooLong,
}

/// A malformed `--xattrmap`. Rules are counted from 1, as the operator wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XattrMapError {
    /// Nothing but white space.
    Empty,
    /// The rule ends before the separator that closes `field`.
    Unterminated {
        /// The rule's number.
        rule: usize,
        /// The field left open (`type`, `scope`, `key`, `prepend`).
        field: &'static str,
        /// The separator the rule started with.
        separator: char,
    },
    /// A type other than `prefix`, `ok`, `bad`, `unsupported` or `map`.
    UnknownType {
        /// The rule's number.
        rule: usize,
        /// The type as written.
        found: String,
    },
    /// A scope other than `client`, `server` or `all`.
    UnknownScope {
        /// The rule's number.
        rule: usize,
        /// The scope as written.
        found: String,
    },
    /// A `map` rule followed by another rule.
    MapNotLast {
        /// The `map` rule's number.
        rule: usize,
    },
    /// A NUL byte, which no xattr name can hold.
    Nul {
        /// The rule's number.
        rule: usize,
    },
    /// A `key` or `prepend` longer than any xattr name: the rule could never apply.
    TooLong {
        /// The rule's number.
        rule: usize,
        /// `key` or `prepend`.
        field: &'static str,
    },
}

impl fmt::Display for XattrMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XattrMapError::Empty => write!(f, "no rules"),
            XattrMapError::Unterminated {
                rule,
                field,
                separator,
            } => write!(
                f,
                "rule {rule}: no '{separator}' after its {field} field (rules are \
                 :type:scope:key:prepend: or :map:key:prepend:)"
            ),
            XattrMapError::UnknownType { rule, found } => write!(
                f,
                "rule {rule}: unknown type {found:?} (prefix, ok, bad, unsupported or map)"
            ),
            XattrMapError::UnknownScope { rule, found } => write!(
                f,
                "rule {rule}: unknown scope {found:?} (client, server or all)"
            ),
            XattrMapError::MapNotLast { rule } => {
                write!(f, "rule {rule}: a map rule must be the last rule")
            }
            XattrMapError::Nul { rule } => write!(f, "rule {rule}: contains a NUL byte"),
            XattrMapError::TooLong { rule, field } => write!(
                f,
                "rule {rule}: {field} is longer than an xattr name can be ({XATTR_NAME_MAX} bytes)"
            ),
        }
    }
}

impl std::error::Error for XattrMapError {}

/// Takes the next field of a rule: everything up to the next `sep`, which is consumed.
fn next_field<'a>(rest: &mut &'a str, sep: char) -> Option<&'a str> {
    let end = rest.find(sep)?;
    let field = &rest[..end];
    *rest = &rest[end + sep.len_utf8()..];
    Some(field)
}

fn name_part(rule: usize, field: &'static str, s: &str) -> Result<Vec<u8>, XattrMapError> {
    if s.contains('\0') {
        return Err(XattrMapError::Nul { rule });
    }
    if s.len() > XATTR_NAME_MAX {
        return Err(XattrMapError::TooLong { rule, field });
    }
    Ok(s.as_bytes().to_vec())
}

/// The rules `:map:key:prepend:` stands for, as virtiofsd expands it.
fn expand_map(key: Vec<u8>, prepend: Vec<u8>) -> Vec<Rule> {
    let rule = |kind, key, prepend| Rule {
        kind,
        scope: Scope::All,
        key,
        prepend,
    };
    if key.is_empty() {
        // Every client name is prefixed, and a host name without the prefix (one the
        // guest did not set) is hidden.
        vec![
            rule(RuleType::Prefix, Vec::new(), prepend),
            rule(RuleType::Bad, Vec::new(), Vec::new()),
        ]
    } else {
        // Only `key` names are prefixed. The host's own `key` names are hidden, and the
        // client may not reach the prefixed names directly: otherwise an unprivileged guest
        // user could write `user.virtiofs.trusted.x` where `trusted.x` is meant to be
        // root's. Everything else passes unchanged.
        vec![
            rule(RuleType::Prefix, key.clone(), prepend.clone()),
            rule(RuleType::Bad, prepend, key),
            rule(RuleType::Ok, Vec::new(), Vec::new()),
        ]
    }
}

impl FromStr for XattrMap {
    type Err = XattrMapError;

    fn from_str(s: &str) -> Result<Self, XattrMapError> {
        let mut rules = Vec::new();
        let mut rest = s;
        let mut n = 0;
        let mut map_rule = None;
        loop {
            rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
            let Some(sep) = rest.chars().next() else {
                break;
            };
            if let Some(rule) = map_rule {
                return Err(XattrMapError::MapNotLast { rule });
            }
            n += 1;
            rest = &rest[sep.len_utf8()..];
            let mut field = |name: &'static str| {
                next_field(&mut rest, sep).ok_or(XattrMapError::Unterminated {
                    rule: n,
                    field: name,
                    separator: sep,
                })
            };
            let kind = match field("type")? {
                "prefix" => Some(RuleType::Prefix),
                "ok" => Some(RuleType::Ok),
                "bad" => Some(RuleType::Bad),
                "unsupported" => Some(RuleType::Unsupported),
                "map" => None,
                other => {
                    return Err(XattrMapError::UnknownType {
                        rule: n,
                        found: other.to_string(),
                    })
                }
            };
            let Some(kind) = kind else {
                let key = name_part(n, "key", field("key")?)?;
                let prepend = name_part(n, "prepend", field("prepend")?)?;
                rules.extend(expand_map(key, prepend));
                map_rule = Some(n);
                continue;
            };
            let scope = match field("scope")? {
                "client" => Scope::Client,
                "server" => Scope::Server,
                "all" => Scope::All,
                other => {
                    return Err(XattrMapError::UnknownScope {
                        rule: n,
                        found: other.to_string(),
                    })
                }
            };
            let key = name_part(n, "key", field("key")?)?;
            let prepend = name_part(n, "prepend", field("prepend")?)?;
            rules.push(Rule {
                kind,
                scope,
                key,
                prepend,
            });
        }
        if rules.is_empty() {
            return Err(XattrMapError::Empty);
        }
        Ok(XattrMap { rules })
    }
}

impl XattrMap {
    /// The rules, `map` expanded.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The host name for a name the client sent, or why it is refused.
    pub fn to_host<'a>(&self, name: &'a CStr) -> Result<Cow<'a, CStr>, Refusal> {
        let bytes = name.to_bytes();
        let rule = self
            .rules
            .iter()
            .find(|r| r.scope.client() && bytes.starts_with(&r.key));
        match rule.map(|r| (r.kind, &r.prepend)) {
            Some((RuleType::Ok, _)) => Ok(Cow::Borrowed(name)),
            Some((RuleType::Prefix, prepend)) => {
                if prepend.len() + bytes.len() > XATTR_NAME_MAX {
                    return Err(Refusal::TooLong);
                }
                let mut host = Vec::with_capacity(prepend.len() + bytes.len() + 1);
                host.extend_from_slice(prepend);
                host.extend_from_slice(bytes);
                // Neither part holds a NUL (a CStr, and a prepend checked when parsed).
                CString::new(host).map(Cow::Owned).map_err(|_| Refusal::Bad)
            }
            Some((RuleType::Unsupported, _)) => Err(Refusal::Unsupported),
            Some((RuleType::Bad, _)) | None => Err(Refusal::Bad),
        }
    }

    /// The name the client sees for host name `name`, or `None` when it is hidden.
    pub fn to_client<'a>(&self, name: &'a [u8]) -> Option<&'a [u8]> {
        let rule = self
            .rules
            .iter()
            .find(|r| r.scope.server() && name.starts_with(&r.prepend))?;
        match rule.kind {
            RuleType::Ok => Some(name),
            // A host name that is exactly the prefix would become an empty name, which the
            // client could neither show nor ask for.
            RuleType::Prefix => Some(&name[rule.prepend.len()..]).filter(|n| !n.is_empty()),
            RuleType::Bad | RuleType::Unsupported => None,
        }
    }

    /// A LISTXATTR answer (NUL-terminated names, as listxattr(2) gives them) as the client
    /// sees it: hidden names left out, prefixes stripped. Never longer than `list`.
    pub fn list_to_client(&self, list: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(list.len());
        for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if let Some(client) = self.to_client(name) {
                out.extend_from_slice(client);
                out.push(0);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> XattrMap {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn rule(kind: RuleType, scope: Scope, key: &str, prepend: &str) -> Rule {
        Rule {
            kind,
            scope,
            key: key.into(),
            prepend: prepend.into(),
        }
    }

    fn host(map: &XattrMap, name: &str) -> Result<String, Refusal> {
        let name = CString::new(name).unwrap();
        map.to_host(&name)
            .map(|n| String::from_utf8(n.to_bytes().to_vec()).unwrap())
    }

    fn client(map: &XattrMap, name: &str) -> Option<String> {
        map.to_client(name.as_bytes())
            .map(|n| String::from_utf8(n.to_vec()).unwrap())
    }

    fn list(map: &XattrMap, names: &[&str]) -> Vec<String> {
        let mut raw = Vec::new();
        for n in names {
            raw.extend_from_slice(n.as_bytes());
            raw.push(0);
        }
        let out = map.list_to_client(&raw);
        assert!(out.len() <= raw.len());
        assert!(out.is_empty() || out.last() == Some(&0));
        out.split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| String::from_utf8(n.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn full_rules_parse_with_any_separator_and_white_space_between() {
        use RuleType::*;
        use Scope::*;
        let map = parse(
            "  /prefix/all/trusted./user.virtiofs./
               /bad/server//trusted./
               /bad/client/user.virtiofs.//
               /ok/all///  ",
        );
        assert_eq!(
            map.rules(),
            [
                rule(Prefix, All, "trusted.", "user.virtiofs."),
                rule(Bad, Server, "", "trusted."),
                rule(Bad, Client, "user.virtiofs.", ""),
                rule(Ok, All, "", ""),
            ]
        );
        // Each rule picks its own separator, also one that is not ASCII.
        let map = parse(":unsupported:client:security.::|ok|server||x|§bad§all§§§");
        assert_eq!(
            map.rules(),
            [
                rule(Unsupported, Client, "security.", ""),
                rule(Ok, Server, "", "x"),
                rule(Bad, All, "", ""),
            ]
        );
        // Rules may follow each other with no blank between.
        assert_eq!(
            parse(":prefix:all::user.virtiofs.::bad:all:::")
                .rules()
                .len(),
            2
        );
    }

    #[test]
    fn rules_print_as_they_parse() {
        let map = parse(":unsupported:client:security.:: /map/trusted./user:virtiofs./");
        let text: Vec<String> = map.rules().iter().map(Rule::to_string).collect();
        assert_eq!(
            text,
            [
                ":unsupported:client:security.::",
                "/prefix/all/trusted./user:virtiofs./",
                "/bad/all/user:virtiofs./trusted./",
                ":ok:all:::",
            ]
        );
        assert_eq!(parse(&text.join(" ")), map);
    }

    /// Whatever the command line holds: an error or a map, never a panic; and whatever a
    /// parsed map is asked, an answer.
    #[test]
    fn arbitrary_maps_and_names_never_panic() {
        const SEPS: &[&str] = &[":", "/", "§", "."];
        const TYPES: &[&str] = &["prefix", "ok", "bad", "unsupported", "map", "", "x"];
        const SCOPES: &[&str] = &["all", "client", "server", "", "x"];
        const NAMES: &[&str] = &["", "user.", "trusted.", "user.virtiofs.", "\0", "§", " "];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let names = ["", "user.x", "trusted.", "user.virtiofs.trusted.x", "§"];
        let mut parsed = 0;
        for _ in 0..20_000 {
            // Rules almost well formed: now and then a wrong separator, a field missing, or
            // the text cut short.
            let mut input = String::new();
            for _ in 0..1 + next(3) {
                let sep = SEPS[next(SEPS.len())];
                let kind = TYPES[next(TYPES.len())];
                let mut fields = vec![kind];
                if kind != "map" || next(8) == 0 {
                    fields.push(SCOPES[next(SCOPES.len())]);
                }
                fields.push(NAMES[next(NAMES.len())]);
                fields.push(NAMES[next(NAMES.len())]);
                if next(8) == 0 {
                    fields.remove(next(fields.len()));
                }
                input.push_str(sep);
                for f in fields {
                    input.push_str(f);
                    input.push_str(if next(16) == 0 { ":" } else { sep });
                }
                input.push_str([" ", "", "\n"][next(3)]);
            }
            if next(8) == 0 {
                let mut cut = next(input.len() + 1);
                while !input.is_char_boundary(cut) {
                    cut -= 1;
                }
                input.truncate(cut);
            }
            let Ok(map) = input.parse::<XattrMap>() else {
                continue;
            };
            parsed += 1;
            for name in names {
                let _ = map.to_host(&CString::new(name).unwrap());
                let _ = map.to_client(name.as_bytes());
            }
            let _ = map.list_to_client(b"user.x\0\0trusted.y\0user.virtiofs.");
        }
        assert!(
            parsed > 1_000,
            "{parsed} of 20000 parsed: too few to mean much"
        );
    }

    #[test]
    fn map_expands_as_virtiofsd_documents() {
        use RuleType::*;
        use Scope::*;
        // doc/xattr-mapping.md, example 1.
        assert_eq!(
            parse(":map::user.virtiofs.:").rules(),
            parse(":prefix:all::user.virtiofs.::bad:all:::").rules()
        );
        // Example 2: the shorthand's `bad` rule is the doc's two in one.
        assert_eq!(
            parse("/map/trusted./user.virtiofs./").rules(),
            [
                rule(Prefix, All, "trusted.", "user.virtiofs."),
                rule(Bad, All, "user.virtiofs.", "trusted."),
                rule(Ok, All, "", ""),
            ]
        );
        // After other rules, as long as it is last.
        let map = parse(":bad:all:security.:security.: :map::user.virtiofs.:");
        assert_eq!(map.rules().len(), 3);
    }

    #[test]
    fn malformed_maps_are_errors_naming_the_rule() {
        use XattrMapError as E;
        let cases: &[(&str, XattrMapError)] = &[
            ("", E::Empty),
            (" \n\t ", E::Empty),
            (
                ":prefix:client:hi",
                E::Unterminated {
                    rule: 1,
                    field: "key",
                    separator: ':',
                },
            ),
            (
                ":prefix:all:trusted.:user.vm.",
                E::Unterminated {
                    rule: 1,
                    field: "prepend",
                    separator: ':',
                },
            ),
            (
                ":ok:all::: :",
                E::Unterminated {
                    rule: 2,
                    field: "type",
                    separator: ':',
                },
            ),
            (
                ":map:user.:",
                E::Unterminated {
                    rule: 1,
                    field: "prepend",
                    separator: ':',
                },
            ),
            (
                ":ok:all::: :TOMATOPIRATE:all:::",
                E::UnknownType {
                    rule: 2,
                    found: "TOMATOPIRATE".into(),
                },
            ),
            (
                ":Prefix:all:::",
                E::UnknownType {
                    rule: 1,
                    found: "Prefix".into(),
                },
            ),
            (
                "/prefix/helloworld///",
                E::UnknownScope {
                    rule: 1,
                    found: "helloworld".into(),
                },
            ),
            (
                ":map::user.virtiofs.: :ok:all:::",
                E::MapNotLast { rule: 1 },
            ),
            (
                ":map:trusted.:virtiofs.user.::map:trusted.:virtiofs.user.:",
                E::MapNotLast { rule: 1 },
            ),
            (":ok:all:a\0b::", E::Nul { rule: 1 }),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<XattrMap>().as_ref(), Err(want), "{input:?}");
            // Every error reads as one line.
            assert!(!want.to_string().contains('\n'));
        }
        let long = format!(":prefix:all::{}:", "p".repeat(256));
        assert_eq!(
            long.parse::<XattrMap>(),
            Err(E::TooLong {
                rule: 1,
                field: "prepend"
            })
        );
        // A map is not a single rule without its separators.
        assert!("prefix".parse::<XattrMap>().is_err());
        assert!("::::".parse::<XattrMap>().is_err());
    }

    /// The SELinux case of the doc (example 1): every guest name lives under
    /// `user.virtiofs.` on the host, and the host's own names are invisible.
    #[test]
    fn everything_under_one_prefix() {
        for map in [
            parse(":prefix:all::user.virtiofs.::bad:all:::"),
            parse(":map::user.virtiofs.:"),
        ] {
            assert_eq!(
                host(&map, "security.selinux").as_deref(),
                Ok("user.virtiofs.security.selinux")
            );
            assert_eq!(
                host(&map, "user.virtiofs.x").as_deref(),
                Ok("user.virtiofs.user.virtiofs.x")
            );
            assert_eq!(
                host(&map, "trusted.x").as_deref(),
                Ok("user.virtiofs.trusted.x")
            );
            assert_eq!(
                client(&map, "user.virtiofs.security.selinux").as_deref(),
                Some("security.selinux")
            );
            assert_eq!(client(&map, "security.selinux"), None);
            assert_eq!(
                client(&map, "user.virtiofs."),
                None,
                "empty after the strip"
            );
            assert_eq!(
                list(
                    &map,
                    &[
                        "security.selinux",
                        "user.virtiofs.security.selinux",
                        "user.host",
                        "user.virtiofs.trusted.x",
                    ]
                ),
                ["security.selinux", "trusted.x"]
            );
        }
    }

    /// Example 2: only `trusted.` is moved, and the guest may not reach the moved names
    /// directly.
    #[test]
    fn one_namespace_moved_the_rest_passed() {
        for map in [
            parse(
                "/prefix/all/trusted./user.virtiofs./ /bad/server//trusted./
                 /bad/client/user.virtiofs.// /ok/all///",
            ),
            parse("/map/trusted./user.virtiofs./"),
        ] {
            assert_eq!(
                host(&map, "trusted.x").as_deref(),
                Ok("user.virtiofs.trusted.x")
            );
            assert_eq!(host(&map, "user.x").as_deref(), Ok("user.x"));
            assert_eq!(
                host(&map, "security.selinux").as_deref(),
                Ok("security.selinux")
            );
            assert_eq!(host(&map, "user.virtiofs.trusted.x"), Err(Refusal::Bad));
            assert_eq!(host(&map, "user.virtiofs."), Err(Refusal::Bad));
            assert_eq!(
                list(
                    &map,
                    &[
                        "trusted.host",
                        "user.virtiofs.trusted.x",
                        "user.x",
                        "security.a"
                    ]
                ),
                ["trusted.x", "user.x", "security.a"]
            );
        }
    }

    /// Example 3: `security.` hidden both ways, everything else passes.
    #[test]
    fn bad_and_unsupported_refuse_and_hide() {
        let map = parse("/bad/all/security./security./ /ok/all///");
        assert_eq!(host(&map, "security.selinux"), Err(Refusal::Bad));
        assert_eq!(host(&map, "user.a").as_deref(), Ok("user.a"));
        assert_eq!(list(&map, &["security.selinux", "user.a"]), ["user.a"]);

        let map = parse(":unsupported:all:system.posix_acl_:system.posix_acl_: :ok:all:::");
        assert_eq!(
            host(&map, "system.posix_acl_access"),
            Err(Refusal::Unsupported)
        );
        assert_eq!(
            list(&map, &["system.posix_acl_default", "user.a"]),
            ["user.a"]
        );
    }

    #[test]
    fn scopes_apply_to_their_own_direction_only() {
        // A server rule never touches client names and the other way round.
        let map = parse(":prefix:client:trusted.:user.virtiofs.: :ok:server:::");
        assert_eq!(
            host(&map, "trusted.x").as_deref(),
            Ok("user.virtiofs.trusted.x")
        );
        assert_eq!(
            client(&map, "user.virtiofs.trusted.x").as_deref(),
            Some("user.virtiofs.trusted.x")
        );
        // No client rule matches `user.a`: refused, as the implicit final `bad`.
        assert_eq!(host(&map, "user.a"), Err(Refusal::Bad));

        let map = parse(":prefix:server::user.virtiofs.:");
        assert_eq!(client(&map, "user.virtiofs.a").as_deref(), Some("a"));
        assert_eq!(client(&map, "user.a"), None, "no rule: hidden");
        assert_eq!(host(&map, "a"), Err(Refusal::Bad), "no client rule");
    }

    #[test]
    fn first_match_wins() {
        let map = parse(":ok:all:user.keep:: :prefix:all:user.:guest.: :bad:all:::");
        assert_eq!(host(&map, "user.keep.me").as_deref(), Ok("user.keep.me"));
        assert_eq!(host(&map, "user.other").as_deref(), Ok("guest.user.other"));
        // On the server side `ok` with an empty prepend matches every name first.
        assert_eq!(list(&map, &["guest.user.a", "x"]), ["guest.user.a", "x"]);
    }

    #[test]
    fn mapped_names_never_grow_past_xattr_name_max() {
        let map = parse(":map::user.virtiofs.:");
        let room = XATTR_NAME_MAX - "user.virtiofs.".len();
        let fits = format!("user.{}", "a".repeat(room - "user.".len()));
        assert_eq!(host(&map, &fits).map(|n| n.len()), Ok(XATTR_NAME_MAX));
        let over = format!("{fits}b");
        assert_eq!(host(&map, &over), Err(Refusal::TooLong));
        assert_eq!(host(&map, &"x".repeat(4096)), Err(Refusal::TooLong));
    }

    #[test]
    fn host_lists_of_any_shape_are_mapped_without_panicking() {
        let map = parse(":map::user.virtiofs.:");
        for raw in [
            &b""[..],
            b"\0",
            b"\0\0\0",
            b"user.virtiofs.a",
            b"user.virtiofs.a\0\0user.virtiofs.b\0",
            b"\xff\xfe\0user.virtiofs.\xff\0",
        ] {
            let out = map.list_to_client(raw);
            assert!(out.len() <= raw.len(), "{raw:?}");
            assert!(!out.starts_with(b"\0") && !out.windows(2).any(|w| w == b"\0\0"));
        }
        assert_eq!(
            map.list_to_client(b"user.virtiofs.a\0\0user.virtiofs.b"),
            b"a\0b\0"
        );
        assert_eq!(map.list_to_client(b"user.virtiofs.\xff\0"), b"\xff\0");
    }
}
