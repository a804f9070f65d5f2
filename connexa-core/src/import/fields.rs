//! The field names every format shares, and building a [`NewNode`] from them.

use std::net::{IpAddr, SocketAddr};

use super::ErrorReason;
use super::location::{expand_country, expand_state, parse_location};
use crate::domain::{DEFAULT_PORT, NewNode, NodeMeta, Risk};

/// A field a key-value line, a CSV header cell or a JSON key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    Ip,
    Port,
    Login,
    Password,
    Credentials,
    Country,
    State,
    City,
    Zip,
    Provider,
    Comment,
    Location,
    /// A seller's `Scamalytics Fraud Score: 35`.
    ScamalyticsScore,
    /// A seller's `Scamalytics Risk: medium`.
    ScamalyticsRisk,
}

impl Key {
    /// Case-insensitive; `_` and `-` count as spaces. Unknown names give `None`.
    pub(crate) fn of(name: &str) -> Option<Key> {
        let name = name.trim();
        if name.is_empty() || name.len() > 40 {
            return None;
        }
        // ASCII names (nearly all) are normalised on the stack.
        let mut ascii = [0u8; 40];
        let mut owned = String::new();
        let norm: &str = if name.is_ascii() {
            let mut n = 0;
            for b in name.bytes() {
                let b = match b {
                    b'_' | b'-' => b' ',
                    b => b.to_ascii_lowercase(),
                };
                if b == b' ' && n > 0 && ascii[n - 1] == b' ' {
                    continue;
                }
                ascii[n] = b;
                n += 1;
            }
            std::str::from_utf8(&ascii[..n]).unwrap_or_default()
        } else {
            for c in name.chars() {
                let c = if c == '_' || c == '-' { ' ' } else { c };
                if c == ' ' && owned.ends_with(' ') {
                    continue;
                }
                owned.extend(c.to_lowercase());
            }
            &owned
        };
        Some(match norm {
            "ip" | "host" | "ip address" | "ipaddress" | "address" | "server" | "server ip"
            | "hostname" | "ip адрес" | "адрес" | "сервер" => Key::Ip,
            "port" | "порт" => Key::Port,
            "login" | "user" | "username" | "user name" | "логин" | "пользователь" => {
                Key::Login
            }
            "pass" | "password" | "passwd" | "pwd" | "пароль" => Key::Password,
            "credentials" | "creds" | "auth" | "login:pass" | "данные" => Key::Credentials,
            "country" | "страна" => Key::Country,
            "state" | "region" | "province" | "штат" | "регион" => Key::State,
            "city" | "town" | "город" => Key::City,
            "zip" | "zipcode" | "zip code" | "postal" | "postal code" | "postcode" | "индекс" => {
                Key::Zip
            }
            "provider" | "isp" | "seller" | "провайдер" => Key::Provider,
            "comment" | "note" | "notes" | "комментарий" => Key::Comment,
            "location" | "geo" | "локация" | "расположение" => Key::Location,
            "scamalytics fraud score" | "scamalytics score" => Key::ScamalyticsScore,
            "scamalytics risk" | "scamalytics fraud risk" => Key::ScamalyticsRisk,
            _ => return None,
        })
    }
}

/// The raw values of one node, as a format delivered them.
#[derive(Debug, Default, Clone)]
pub(crate) struct Fields {
    pub ip: Option<String>,
    pub port: Option<String>,
    pub login: Option<String>,
    pub password: Option<String>,
    pub country: Option<String>,
    pub state: Option<String>,
    pub city: Option<String>,
    pub zip: Option<String>,
    pub provider: Option<String>,
    pub comment: Option<String>,
    pub location: Option<String>,
    pub scamalytics_score: Option<String>,
    pub scamalytics_risk: Option<String>,
}

impl Fields {
    /// Sets a field. Credentials (`login:password`) split at the first `:`.
    pub(crate) fn set(&mut self, key: Key, value: &str) {
        let v = Some(value.to_owned());
        match key {
            Key::Ip => self.ip = v,
            Key::Port => self.port = v,
            Key::Login => self.login = v,
            Key::Password => self.password = v,
            Key::Credentials => match value.split_once(':') {
                Some((l, p)) => {
                    self.login = Some(l.to_owned());
                    self.password = Some(p.to_owned());
                }
                None => self.login = v,
            },
            Key::Country => self.country = v,
            Key::State => self.state = v,
            Key::City => self.city = v,
            Key::Zip => self.zip = v,
            Key::Provider => self.provider = v,
            Key::Comment => self.comment = v,
            Key::Location => self.location = v,
            Key::ScamalyticsScore => self.scamalytics_score = v,
            Key::ScamalyticsRisk => self.scamalytics_risk = v,
        }
    }

    /// Is the field already set? (Used to start a new block when a field repeats.)
    pub(crate) fn has(&self, key: Key) -> bool {
        match key {
            Key::Ip => self.ip.is_some(),
            Key::Login => self.login.is_some(),
            Key::Password => self.password.is_some(),
            Key::Credentials => self.login.is_some() || self.password.is_some(),
            _ => false,
        }
    }

    /// Does this carry any identity field (so that it is meant to be a node)?
    pub(crate) fn has_identity(&self) -> bool {
        self.ip.is_some() || self.login.is_some() || self.password.is_some()
    }

    /// Validates and builds the node.
    pub(crate) fn build(self) -> Result<NewNode, ErrorReason> {
        let ip_text = self.ip.as_deref().map(str::trim).unwrap_or_default();
        if ip_text.is_empty() {
            return Err(ErrorReason::MissingIp);
        }
        let (ip, port_in_ip) = split_ip_port(ip_text);
        let port = match self
            .port
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            Some(p) => p
                .parse::<u64>()
                .map_err(|_| ErrorReason::BadPort(p.chars().take(20).collect()))?,
            None => port_in_ip.map_or(u64::from(DEFAULT_PORT), u64::from),
        };
        let login = self.login.as_deref().ok_or(ErrorReason::MissingLogin)?;
        let password = self
            .password
            .as_deref()
            .ok_or(ErrorReason::MissingPassword)?;
        let mut node = NewNode::new(ip, port, login, password)?;
        node.seller_fraud = self.seller_fraud();
        let meta = self.meta();
        meta.check()?;
        Ok(node.with_meta(meta))
    }

    /// The seller's Scamalytics score (`35`, `35/100`, `35%`) and risk (the
    /// stated level, else the score's). A risk without a score, or a score
    /// that is not a number from 0 to 100, is not kept.
    fn seller_fraud(&self) -> Option<(u8, Risk)> {
        let text = self.scamalytics_score.as_deref()?.trim();
        let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
        let score = digits.parse::<u8>().ok().filter(|s| *s <= 100)?;
        let risk = self
            .scamalytics_risk
            .as_deref()
            .and_then(|r| r.parse::<Risk>().ok())
            .unwrap_or_else(|| Risk::from_score(score));
        Some((score, risk))
    }

    fn meta(self) -> NodeMeta {
        let loc = self
            .location
            .as_deref()
            .map(parse_location)
            .unwrap_or_default();
        let country = self
            .country
            .as_deref()
            .and_then(expand_country)
            .or(loc.country);
        let state = self
            .state
            .as_deref()
            .and_then(|s| expand_state(s, country.as_deref()))
            .or(loc.state);
        NodeMeta {
            provider: non_empty(self.provider),
            state,
            city: non_empty(self.city).or(loc.city),
            zipcode: non_empty(self.zip).or(loc.zipcode),
            comment: non_empty(self.comment),
            country,
        }
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Splits `1.2.3.4:1724` or `[2001:db8::1]:1724` into address text and port;
/// anything else is returned whole (and validated by [`NewNode::new`]).
pub(crate) fn split_ip_port(text: &str) -> (&str, Option<u16>) {
    if text.parse::<IpAddr>().is_ok() {
        return (text, None);
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        let end = text.rfind(':').unwrap_or(text.len());
        let addr = text[..end].trim_start_matches('[').trim_end_matches(']');
        return (addr, Some(sa.port()));
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return (inner, None);
    }
    (text, None)
}

/// Replaces `line[start..end]` with `***` (the offsets must be char boundaries).
pub(crate) fn mask_span(line: &str, start: usize, end: usize) -> String {
    let (start, end) = (start.min(line.len()), end.min(line.len()));
    if start >= end || !line.is_char_boundary(start) || !line.is_char_boundary(end) {
        return line.to_owned();
    }
    format!("{}***{}", &line[..start], &line[end..])
}

/// The byte offset of `part` inside `whole` (`part` must be a sub-slice of it).
pub(crate) fn offset_in(whole: &str, part: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize)
}

/// Masks a line no format recognised, or one that failed before its password
/// was found. The separator is not known, so any of `:`, `;`, `|`, `,` and
/// white space ends a field: the first field is shown, the second too when the
/// first looks like an address (it is then a login, `1.2.3.999;user;***`), and
/// everything after is hidden (it may be a password). The rest is cut to a
/// readable length.
pub(crate) fn mask_unknown(line: &str) -> String {
    let sep = |c: char| matches!(c, ':' | ';' | '|' | ',') || c.is_whitespace();
    let Some(first_end) = line.find(sep) else {
        return truncate(line, 120);
    };
    let first = &line[..first_end];
    let address_like = first.parse::<std::net::IpAddr>().is_ok()
        || (!first.is_empty() && first.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
    let mut keep = first_end;
    if address_like {
        // One separator (or one run of white space), then the second field:
        // shown only when it is not empty and not the last field (a last
        // field after an address may well be a password).
        let rest = &line[first_end..];
        let after = match rest.chars().next() {
            Some(c) if c.is_whitespace() => rest.trim_start(),
            Some(c) => &rest[c.len_utf8()..],
            None => rest,
        };
        if let Some(end) = after.find(sep).filter(|e| *e > 0) {
            keep = line.len() - after.len() + end;
        }
    }
    let sep_char = line[keep..].chars().next().unwrap_or(':');
    truncate(&format!("{}{sep_char}***", &line[..keep]), 120)
}

/// Cuts text to at most `max` characters, marking the cut with `…`.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_case_insensitive_with_aliases() {
        assert_eq!(Key::of("IP"), Some(Key::Ip));
        assert_eq!(Key::of(" Host "), Some(Key::Ip));
        assert_eq!(Key::of("Zip_Code"), Some(Key::Zip));
        assert_eq!(Key::of("ZIPCODE"), Some(Key::Zip));
        assert_eq!(Key::of("Пароль"), Some(Key::Password));
        assert_eq!(Key::of("Scamalytics Risk"), Some(Key::ScamalyticsRisk));
        assert_eq!(
            Key::of("scamalytics_fraud_score"),
            Some(Key::ScamalyticsScore)
        );
        assert_eq!(Key::of("Fraud Score"), None);
    }

    #[test]
    fn ip_with_port() {
        assert_eq!(split_ip_port("1.2.3.4:1724"), ("1.2.3.4", Some(1724)));
        assert_eq!(split_ip_port("[2001:db8::1]:99"), ("2001:db8::1", Some(99)));
        assert_eq!(split_ip_port("[2001:db8::1]"), ("2001:db8::1", None));
        assert_eq!(split_ip_port("2001:db8::1"), ("2001:db8::1", None));
        assert_eq!(split_ip_port("1.2.3.400"), ("1.2.3.400", None));
    }

    #[test]
    fn masking() {
        let line = "1.2.3.4:admin:hunter2";
        assert_eq!(mask_span(line, 14, 21), "1.2.3.4:admin:***");
        assert_eq!(mask_unknown("admin:hunter2 xyz"), "admin:***");
        assert_eq!(mask_unknown("1.2.3.999;user;SECRET"), "1.2.3.999;user;***");
        assert_eq!(mask_unknown("ip|user|SECRET|x"), "ip|***");
        assert_eq!(
            mask_unknown("1.2.3.4 user  SECRET more"),
            "1.2.3.4 user ***"
        );
        assert_eq!(mask_unknown("2001:db8::1;u;SECRET"), "2001:db8:***");
        assert_eq!(mask_unknown("1.2.3.4:admin"), "1.2.3.4:***");
        assert_eq!(mask_unknown("1.2.3.4,,SECRET"), "1.2.3.4,***");
        assert_eq!(mask_unknown("justoneword"), "justoneword");
    }
}
