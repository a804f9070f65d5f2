//! Node statuses and their levels of evidence.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Strength of the evidence a test gathered about a node.
///
/// Levels are ordered: `None < Light < Auth < Speed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Level 0: nothing answered (or nothing was tried yet).
    None = 0,
    /// Level 1: a PPTP server answered the control-channel handshake.
    Light = 1,
    /// Level 2: the credentials were accepted (MS-CHAPv2 success).
    Auth = 2,
    /// Level 3: throughput through the tunnel met the threshold.
    Speed = 3,
}

impl Level {
    /// All levels, lowest first.
    pub const ALL: [Level; 4] = [Level::None, Level::Light, Level::Auth, Level::Speed];

    /// The level as a number 0..=3.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// The status of a node, stored as snake_case text.
///
/// See the table in `docs/architecture.md`; [`transition`](fn@super::transition) is
/// the only function that computes a new status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Imported, no evidence yet (level 0).
    NotTested,
    /// No PPTP server answered: refused, timed out, not PPTP (level 0).
    PingFailed,
    /// The PPTP control channel answered (level 1).
    PingLight,
    /// PPTP answered but the credentials were rejected (level 1).
    AuthFailed,
    /// The credentials were accepted (level 2).
    PingOk,
    /// Throughput through the tunnel measured at or above the threshold (level 3).
    SpeedOk,
    /// A SOCKS5 service is running through this node (level 3).
    Online,
    /// A service was started for this node and its health check now fails (level 3).
    Offline,
}

impl Status {
    /// All eight statuses, in table order.
    pub const ALL: [Status; 8] = [
        Status::NotTested,
        Status::PingFailed,
        Status::PingLight,
        Status::AuthFailed,
        Status::PingOk,
        Status::SpeedOk,
        Status::Online,
        Status::Offline,
    ];

    /// The three verified statuses (`speed_ok`, `online`, `offline`): the
    /// node passed the speed test, services may run through it, and no test
    /// result demotes it. Exactly the statuses for which
    /// [`is_verified`](Status::is_verified) is `true`.
    pub const VERIFIED: [Status; 3] = [Status::SpeedOk, Status::Online, Status::Offline];

    /// The level of evidence this status stands for.
    pub fn level(self) -> Level {
        match self {
            Status::NotTested | Status::PingFailed => Level::None,
            Status::PingLight | Status::AuthFailed => Level::Light,
            Status::PingOk => Level::Auth,
            Status::SpeedOk | Status::Online | Status::Offline => Level::Speed,
        }
    }

    /// `true` for `speed_ok`, `online` and `offline`: the node passed the speed test.
    pub fn is_verified(self) -> bool {
        self.level() == Level::Speed
    }

    /// The stored snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::NotTested => "not_tested",
            Status::PingFailed => "ping_failed",
            Status::PingLight => "ping_light",
            Status::AuthFailed => "auth_failed",
            Status::PingOk => "ping_ok",
            Status::SpeedOk => "speed_ok",
            Status::Online => "online",
            Status::Offline => "offline",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not one of the eight status names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown status {given:?} (expected one of: not_tested, ping_failed, ping_light, auth_failed, ping_ok, speed_ok, online, offline)"
)]
pub struct UnknownStatus {
    /// The text that was given.
    pub given: String,
}

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus {
                given: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for st in Status::ALL {
            assert_eq!(st.as_str().parse::<Status>(), Ok(st));
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
            assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), st);
        }
    }

    #[test]
    fn unknown_name_is_an_error() {
        let err = "SPEED_OK".parse::<Status>().unwrap_err();
        assert_eq!(err.given, "SPEED_OK");
        assert!("".parse::<Status>().is_err());
    }

    #[test]
    fn levels_match_design_table() {
        use Level::*;
        let expected = [None, None, Light, Light, Auth, Speed, Speed, Speed];
        for (st, lvl) in Status::ALL.into_iter().zip(expected) {
            assert_eq!(st.level(), lvl, "{st}");
        }
        assert!(Status::Offline.is_verified());
        assert_eq!(Level::ALL.map(Level::as_u8), [0, 1, 2, 3]);
        assert!(Level::None < Level::Light && Level::Auth < Level::Speed);
        assert!(!Status::PingOk.is_verified());
    }

    #[test]
    fn verified_set_is_exactly_level_three() {
        let by_level: Vec<Status> = Status::ALL
            .into_iter()
            .filter(|s| s.level() == Level::Speed)
            .collect();
        assert_eq!(Status::VERIFIED.to_vec(), by_level);
        for st in Status::ALL {
            assert_eq!(
                st.is_verified(),
                Status::VERIFIED.contains(&st),
                "{st}: is_verified and VERIFIED disagree"
            );
        }
        assert_eq!(
            Status::VERIFIED.map(Status::as_str),
            ["speed_ok", "online", "offline"]
        );
    }
}
