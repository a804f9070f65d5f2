//! One node typed by hand (`connexa nodes add`, `POST /api/v1/nodes`, the
//! console's "add node" form), validated exactly as an import row.

use super::ErrorReason;
use super::fields::Fields;
use crate::domain::NewNode;

/// The fields of one node as an operator types them. [`NodeFields::validate`]
/// checks them with the import's own rules, so a hand-added node is refused
/// for exactly what an import refuses, with the same messages.
///
/// ```
/// use connexa_core::import::NodeFields;
/// let good = NodeFields::new("198.51.100.7", "admin", "s3cret").with_country("US");
/// let node = good.validate().unwrap();
/// assert_eq!(node.meta.country.as_deref(), Some("United States"));
/// let bad = NodeFields::new("198.51.100.300", "admin", "s3cret");
/// assert_eq!(bad.validate().unwrap_err().to_string(), r#"invalid IP address "198.51.100.300""#);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFields {
    /// IPv4 or IPv6 address (`1.2.3.4:1724` and `[2001:db8::1]:1724` carry a port).
    pub ip: String,
    /// PPTP control port as typed (default 1723).
    pub port: Option<String>,
    /// Login.
    pub login: String,
    /// Password.
    pub password: String,
    /// Provider (seller).
    pub provider: Option<String>,
    /// Country: a code (`US`) or a name.
    pub country: Option<String>,
    /// State or region: a US state code is expanded as an import does.
    pub state: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Zip code.
    pub zip: Option<String>,
    /// Comment.
    pub comment: Option<String>,
}

impl NodeFields {
    /// The identity fields; the rest empty.
    pub fn new(
        ip: impl Into<String>,
        login: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        NodeFields {
            ip: ip.into(),
            login: login.into(),
            password: password.into(),
            ..NodeFields::default()
        }
    }

    /// Sets the country.
    pub fn with_country(mut self, country: impl Into<String>) -> Self {
        self.country = Some(country.into());
        self
    }

    /// Validates the fields as an import row and builds the node: the same
    /// address and port parsing, the same country and state expansion, the
    /// same limits, the same [`ErrorReason`] (and so the same message).
    pub fn validate(&self) -> Result<NewNode, ErrorReason> {
        let fields = Fields {
            ip: Some(self.ip.clone()),
            port: self.port.clone(),
            login: Some(self.login.clone()),
            password: Some(self.password.clone()),
            country: self.country.clone(),
            state: self.state.clone(),
            city: self.city.clone(),
            zip: self.zip.clone(),
            provider: self.provider.clone(),
            comment: self.comment.clone(),
            ..Fields::default()
        };
        fields.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::parse;

    /// The message of a hand-typed node is the message the import gives for
    /// the same values on a line.
    #[test]
    fn refusals_match_the_import_line_parser() {
        let cases = [
            (
                "198.51.100.300",
                None,
                "admin",
                "pw",
                "198.51.100.300:admin:pw",
            ),
            ("0.0.0.0", None, "admin", "pw", "0.0.0.0:admin:pw"),
            (
                "198.51.100.1",
                Some("70000"),
                "admin",
                "pw",
                "Ip: 198.51.100.1\nPort: 70000\nLogin: admin\nPass: pw",
            ),
        ];
        for (ip, port, login, pw, line) in cases {
            let mut f = NodeFields::new(ip, login, pw);
            f.port = port.map(str::to_owned);
            let mine = f.validate().unwrap_err().to_string();
            let rows: Vec<_> = parse(line.as_bytes()).collect();
            let theirs = rows[0].as_ref().unwrap_err().reason.to_string();
            assert_eq!(mine, theirs, "{line}");
        }
        let mut f = NodeFields::new("198.51.100.1", "admin", "pw");
        f.port = Some("x1".into());
        assert_eq!(
            f.validate().unwrap_err().to_string(),
            r#"port "x1" is not a number"#
        );
        f.port = None;
        f.comment = Some("a\u{0}b".into());
        assert_eq!(
            f.validate().unwrap_err().to_string(),
            "comment contains a control character"
        );
    }

    #[test]
    fn a_port_in_the_address_and_state_codes_are_read_as_an_import_does() {
        let mut f = NodeFields::new("198.51.100.1:1724", "admin", "pw");
        f.state = Some("TX".into());
        let n = f.validate().unwrap();
        assert_eq!((n.port(), n.meta.state.as_deref()), (1724, Some("Texas")));
    }
}
