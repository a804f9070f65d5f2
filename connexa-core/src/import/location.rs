//! Locations: the many shapes sellers write them in, US state codes and common
//! country codes.

/// A parsed location is a [`Location`] with the parts the text had (never a
/// provider or comment); unknown values are kept as given.
pub use crate::domain::Location;

const US_STATES: &[(&str, &str)] = &[
    ("AL", "Alabama"),
    ("AK", "Alaska"),
    ("AZ", "Arizona"),
    ("AR", "Arkansas"),
    ("CA", "California"),
    ("CO", "Colorado"),
    ("CT", "Connecticut"),
    ("DE", "Delaware"),
    ("DC", "District of Columbia"),
    ("FL", "Florida"),
    ("GA", "Georgia"),
    ("HI", "Hawaii"),
    ("ID", "Idaho"),
    ("IL", "Illinois"),
    ("IN", "Indiana"),
    ("IA", "Iowa"),
    ("KS", "Kansas"),
    ("KY", "Kentucky"),
    ("LA", "Louisiana"),
    ("ME", "Maine"),
    ("MD", "Maryland"),
    ("MA", "Massachusetts"),
    ("MI", "Michigan"),
    ("MN", "Minnesota"),
    ("MS", "Mississippi"),
    ("MO", "Missouri"),
    ("MT", "Montana"),
    ("NE", "Nebraska"),
    ("NV", "Nevada"),
    ("NH", "New Hampshire"),
    ("NJ", "New Jersey"),
    ("NM", "New Mexico"),
    ("NY", "New York"),
    ("NC", "North Carolina"),
    ("ND", "North Dakota"),
    ("OH", "Ohio"),
    ("OK", "Oklahoma"),
    ("OR", "Oregon"),
    ("PA", "Pennsylvania"),
    ("PR", "Puerto Rico"),
    ("RI", "Rhode Island"),
    ("SC", "South Carolina"),
    ("SD", "South Dakota"),
    ("TN", "Tennessee"),
    ("TX", "Texas"),
    ("UT", "Utah"),
    ("VT", "Vermont"),
    ("VA", "Virginia"),
    ("WA", "Washington"),
    ("WV", "West Virginia"),
    ("WI", "Wisconsin"),
    ("WY", "Wyoming"),
];

const COUNTRIES: &[(&str, &str)] = &[
    ("US", "United States"),
    ("USA", "United States"),
    ("CA", "Canada"),
    ("MX", "Mexico"),
    ("BR", "Brazil"),
    ("AR", "Argentina"),
    ("CL", "Chile"),
    ("CO", "Colombia"),
    ("GB", "United Kingdom"),
    ("UK", "United Kingdom"),
    ("IE", "Ireland"),
    ("DE", "Germany"),
    ("FR", "France"),
    ("NL", "Netherlands"),
    ("BE", "Belgium"),
    ("LU", "Luxembourg"),
    ("CH", "Switzerland"),
    ("AT", "Austria"),
    ("IT", "Italy"),
    ("ES", "Spain"),
    ("PT", "Portugal"),
    ("PL", "Poland"),
    ("CZ", "Czechia"),
    ("SK", "Slovakia"),
    ("HU", "Hungary"),
    ("RO", "Romania"),
    ("BG", "Bulgaria"),
    ("GR", "Greece"),
    ("SE", "Sweden"),
    ("NO", "Norway"),
    ("FI", "Finland"),
    ("DK", "Denmark"),
    ("EE", "Estonia"),
    ("LV", "Latvia"),
    ("LT", "Lithuania"),
    ("UA", "Ukraine"),
    ("BY", "Belarus"),
    ("RU", "Russia"),
    ("KZ", "Kazakhstan"),
    ("TR", "Turkey"),
    ("IL", "Israel"),
    ("AE", "United Arab Emirates"),
    ("SA", "Saudi Arabia"),
    ("EG", "Egypt"),
    ("ZA", "South Africa"),
    ("IN", "India"),
    ("CN", "China"),
    ("HK", "Hong Kong"),
    ("TW", "Taiwan"),
    ("JP", "Japan"),
    ("KR", "South Korea"),
    ("SG", "Singapore"),
    ("MY", "Malaysia"),
    ("TH", "Thailand"),
    ("VN", "Vietnam"),
    ("ID", "Indonesia"),
    ("PH", "Philippines"),
    ("AU", "Australia"),
    ("NZ", "New Zealand"),
];

/// The canonical name of a US state given its two-letter code or its name (any case).
pub fn us_state(text: &str) -> Option<&'static str> {
    let t = text.trim();
    US_STATES
        .iter()
        .find(|(code, name)| code.eq_ignore_ascii_case(t) || name.eq_ignore_ascii_case(t))
        .map(|(_, name)| *name)
}

/// The canonical name of a country given a common ISO code (`US`, `DE`, also `USA`,
/// `UK`) or its name (any case).
pub fn country(text: &str) -> Option<&'static str> {
    let t = text.trim();
    COUNTRIES
        .iter()
        .find(|(code, name)| code.eq_ignore_ascii_case(t) || name.eq_ignore_ascii_case(t))
        .map(|(_, name)| *name)
}

/// Expands a country value: a known code or name becomes the canonical name;
/// anything else is kept as given (trimmed). Empty becomes `None`.
pub fn expand_country(text: &str) -> Option<String> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    Some(country(t).map_or_else(|| t.to_owned(), str::to_owned))
}

/// Expands a state value: a US state code or name becomes the canonical name when
/// the country is unknown or the United States; anything else is kept as given.
pub fn expand_state(text: &str, country: Option<&str>) -> Option<String> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    let us = country.is_none_or(|c| c == "United States");
    if us && let Some(name) = us_state(t) {
        return Some(name.to_owned());
    }
    Some(t.to_owned())
}

/// A postal code: 3 to 10 characters of digits with at most one inner `-`
/// (`85001`, `12345-6789`).
pub(crate) fn is_zip(text: &str) -> bool {
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    (3..=10).contains(&text.len())
        && digits >= 3
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
        && text.bytes().filter(|b| *b == b'-').count() <= 1
}

/// Does this look like a country in an explicit country position: a known code or
/// name, or two or three ASCII letters (an unknown code, kept as given)?
pub(crate) fn is_country_like(text: &str) -> bool {
    let t = text.trim();
    country(t).is_some()
        || ((2..=3).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphabetic()))
}

/// Parses the location shapes sellers use:
///
/// * `US (Washington, Mill Creek)`, `Texas (Austin)`
/// * `US, Washington, Mill Creek`, `US: Washington: Mill Creek`
/// * `Arizona/Phoenix 85001` (a trailing postal code is taken as the zip)
/// * a single value: a US state (code or name), else a known country, else kept as the state.
///
/// With two parts the first is a country only if it is a known country and not a
/// US state (`CA, Los Angeles` is California); with three or more the first part
/// is always the country position.
///
/// ```
/// use connexa_core::import::location::parse_location;
/// let l = parse_location("US (Washington, Mill Creek)");
/// assert_eq!(l.country.as_deref(), Some("United States"));
/// assert_eq!(l.state.as_deref(), Some("Washington"));
/// assert_eq!(l.city.as_deref(), Some("Mill Creek"));
/// let l = parse_location("Arizona/Phoenix 85001");
/// assert_eq!((l.state.as_deref(), l.city.as_deref(), l.zipcode.as_deref()),
///            (Some("Arizona"), Some("Phoenix"), Some("85001")));
/// ```
pub fn parse_location(text: &str) -> Location {
    let mut loc = Location::default();
    let mut s = text.trim();
    if s.is_empty() {
        return loc;
    }
    // A trailing postal code.
    if let Some((head, last)) = s.rsplit_once(char::is_whitespace) {
        if is_zip(last) {
            loc.zipcode = Some(last.to_owned());
            s = head.trim_end_matches(|c: char| c == ',' || c.is_whitespace());
        }
    } else if is_zip(s) {
        loc.zipcode = Some(s.to_owned());
        return loc;
    }
    let mut parts: Vec<&str> = Vec::with_capacity(4);
    if let Some(open) = s.find('(') {
        parts.push(&s[..open]);
        let inner = s[open + 1..].trim_end().trim_end_matches(')');
        parts.extend(inner.split([',', '/', ';', ':']));
    } else {
        parts.extend(s.split([',', '/', ';', ':', '|']));
    }
    let parts: Vec<&str> = parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    match parts.as_slice() {
        [] => {}
        [one] => {
            if let Some(state) = us_state(one) {
                loc.state = Some(state.to_owned());
            } else if let Some(c) = country(one) {
                loc.country = Some(c.to_owned());
            } else {
                loc.state = Some((*one).to_owned());
            }
        }
        [first, rest @ ..] => {
            let is_country = if parts.len() >= 3 {
                is_country_like(first) || country(first).is_some()
            } else {
                country(first).is_some() && us_state(first).is_none()
            };
            let rest: &[&str] = if is_country {
                loc.country = expand_country(first);
                rest
            } else {
                &parts[..]
            };
            if let Some((state, city)) = rest.split_first() {
                loc.state = expand_state(state, loc.country.as_deref());
                if !city.is_empty() {
                    loc.city = Some(city.join(", "));
                }
            }
        }
    }
    loc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(c: Option<&str>, s: Option<&str>, ci: Option<&str>, z: Option<&str>) -> Location {
        Location {
            country: c.map(str::to_owned),
            state: s.map(str::to_owned),
            city: ci.map(str::to_owned),
            zipcode: z.map(str::to_owned),
            ..Location::default()
        }
    }

    #[test]
    fn every_listed_shape() {
        let us = Some("United States");
        let cases = [
            (
                "US (Washington, Mill Creek)",
                l(us, Some("Washington"), Some("Mill Creek"), None),
            ),
            (
                "Texas (Austin)",
                l(None, Some("Texas"), Some("Austin"), None),
            ),
            (
                "US, Washington, Mill Creek",
                l(us, Some("Washington"), Some("Mill Creek"), None),
            ),
            (
                "US: Washington: Mill Creek",
                l(us, Some("Washington"), Some("Mill Creek"), None),
            ),
            (
                "Arizona/Phoenix 85001",
                l(None, Some("Arizona"), Some("Phoenix"), Some("85001")),
            ),
            ("CA", l(None, Some("California"), None, None)),
            ("United States", l(us, None, None, None)),
            ("Germany", l(Some("Germany"), None, None, None)),
            ("Bavaria", l(None, Some("Bavaria"), None, None)),
            ("90210", l(None, None, None, Some("90210"))),
            (
                "DE, Berlin, Mitte",
                l(Some("Germany"), Some("Berlin"), Some("Mitte"), None),
            ),
            (
                "CA, Los Angeles",
                l(None, Some("California"), Some("Los Angeles"), None),
            ),
            (
                "US, TX, Dallas 75201",
                l(us, Some("Texas"), Some("Dallas"), Some("75201")),
            ),
            (
                "XX, Somewhere, Town",
                l(Some("XX"), Some("Somewhere"), Some("Town"), None),
            ),
            (
                "Россия, Москва",
                l(None, Some("Россия"), Some("Москва"), None),
            ),
            ("", l(None, None, None, None)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_location(text), want, "{text:?}");
        }
    }

    #[test]
    fn codes_expand_and_unknown_values_are_kept() {
        assert_eq!(expand_country("us").as_deref(), Some("United States"));
        assert_eq!(expand_country("CA").as_deref(), Some("Canada"));
        assert_eq!(expand_country("Narnia").as_deref(), Some("Narnia"));
        assert_eq!(expand_state("ny", None).as_deref(), Some("New York"));
        assert_eq!(
            expand_state("CA", Some("United States")).as_deref(),
            Some("California")
        );
        assert_eq!(expand_state("ON", Some("Canada")).as_deref(), Some("ON"));
        assert_eq!(expand_state("  ", None), None);
        assert!(is_zip("12345-6789") && !is_zip("12") && !is_zip("-123") && !is_zip("ab123"));
    }
}
