//! sea-orm entities. Timestamps are stored as Unix milliseconds (`BIGINT`), so
//! they sort and compare the same way on SQLite and Postgres.

/// The `nodes` table.
pub mod nodes {
    use sea_orm::entity::prelude::*;

    /// A row of `nodes`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "nodes")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub ip: String,
        pub port: i32,
        pub login: String,
        pub password: String,
        pub provider: Option<String>,
        pub country: Option<String>,
        pub state: Option<String>,
        pub city: Option<String>,
        pub zipcode: Option<String>,
        pub comment: Option<String>,
        pub status: String,
        pub last_checked_at: Option<i64>,
        pub last_error: Option<String>,
        pub consecutive_failures: i32,
        pub ping_ms: Option<f64>,
        pub speed_down_mbps: Option<f64>,
        pub speed_up_mbps: Option<f64>,
        pub pptp_version: Option<i32>,
        pub pptp_hostname: Option<String>,
        pub pptp_vendor: Option<String>,
        pub pptp_firmware: Option<i32>,
        pub socks_host: Option<String>,
        pub socks_port: Option<i32>,
        pub socks_user: Option<String>,
        pub socks_password: Option<String>,
        pub service_wanted: bool,
        pub created_at: i64,
        pub updated_at: i64,
        // Enrichment (migration m0003), never written by `apply`.
        pub geo_ip: Option<String>,
        pub geo_country_code: Option<String>,
        pub geo_country: Option<String>,
        pub geo_region: Option<String>,
        pub geo_city: Option<String>,
        pub geo_postal: Option<String>,
        pub geo_latitude: Option<f64>,
        pub geo_longitude: Option<f64>,
        pub geo_time_zone: Option<String>,
        pub geo_source: Option<String>,
        pub geo_at: Option<i64>,
        pub asn: Option<i64>,
        pub asn_org: Option<String>,
        pub location_mismatch: Option<bool>,
        pub fraud_ip: Option<String>,
        pub fraud_score: Option<i32>,
        pub fraud_risk: Option<String>,
        pub fraud_provider: Option<String>,
        pub fraud_at: Option<i64>,
        pub exit_ip: Option<String>,
        /// `socks` or `tun` (migration m0010).
        pub service_kind: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `status_history` table (rows outlive their node: no foreign key).
pub mod status_history {
    use sea_orm::entity::prelude::*;

    /// A row of `status_history`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "status_history")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub node_id: i64,
        pub from_status: String,
        pub to_status: Option<String>,
        pub event: String,
        pub reached: Option<i16>,
        pub failure: Option<String>,
        pub detail: Option<String>,
        pub job_id: Option<i64>,
        pub at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `jobs` table.
pub mod jobs {
    use sea_orm::entity::prelude::*;

    /// A row of `jobs`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "jobs")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub kind: String,
        pub state: String,
        pub options: String,
        pub total: i64,
        pub created_at: i64,
        pub finished_at: Option<i64>,
        pub deadline_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `job_items` table.
pub mod job_items {
    use sea_orm::entity::prelude::*;

    /// A row of `job_items`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "job_items")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub job_id: i64,
        pub node_id: i64,
        pub state: String,
        pub worker: Option<String>,
        pub claimed_at: Option<i64>,
        pub finished_at: Option<i64>,
        pub result_status: Option<String>,
        pub detail: Option<String>,
        /// The job's commit number that ended the item (migration m0002).
        pub seq: Option<i64>,
        /// The token of the claim that holds the item (migration m0009).
        pub claim_token: Option<i64>,
        /// Until when the holder's lease runs, ms (migration m0009).
        pub lease_until: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `api_tokens` table (connexa-http's bearer tokens, stored as SHA-256 hashes).
pub mod api_tokens {
    use sea_orm::entity::prelude::*;

    /// A row of `api_tokens`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_tokens")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
        pub token_hash: String,
        pub user_id: Option<i64>,
        pub created_at: i64,
        pub last_used_at: Option<i64>,
        pub expires_at: Option<i64>,
        pub revoked: bool,
        /// `viewer`, `operator` or `admin` (migration m0006).
        pub role: String,
        /// `full` or `metrics` (migration m0006).
        pub scope: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `enrichment_cache` table (migration m0003): online providers' answers by address.
pub mod enrichment_cache {
    use sea_orm::entity::prelude::*;

    /// A row of `enrichment_cache`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "enrichment_cache")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub provider: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        pub value: String,
        pub fetched_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `service_runtime` table (migration m0005): services' counters and
/// restart requests, one row per node.
pub mod service_runtime {
    use sea_orm::entity::prelude::*;

    /// A row of `service_runtime`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "service_runtime")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub node_id: i64,
        pub connections: i64,
        pub connections_total: i64,
        pub bytes_up: i64,
        pub bytes_down: i64,
        pub last_error: Option<String>,
        pub started_at: Option<i64>,
        pub updated_at: Option<i64>,
        pub restart_requested_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `users` table: operator accounts (reshaped by migration m0008).
pub mod users {
    use sea_orm::entity::prelude::*;

    /// A row of `users`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
        /// An Argon2id PHC string.
        pub password_hash: String,
        pub created_at: i64,
        /// `viewer`, `operator` or `admin`.
        pub role: String,
        pub disabled: bool,
        pub password_changed_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `sessions` table (migration m0008): console sign-in sessions by the
/// SHA-256 of their id.
pub mod sessions {
    use sea_orm::entity::prelude::*;

    /// A row of `sessions`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "sessions")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub token_hash: String,
        pub account_id: i64,
        pub created_at: i64,
        pub last_seen: i64,
        pub expires_at: i64,
        pub source: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `workers` table (migration m0009): one row per registered process.
pub mod workers {
    use sea_orm::entity::prelude::*;

    /// A row of `workers`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "workers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub host: String,
        pub pid: i64,
        pub version: String,
        /// Comma-separated roles (`jobs,services`).
        pub roles: String,
        pub started_at: i64,
        pub last_heartbeat: i64,
        pub expires_at: i64,
        /// Most services placed on it (migration m0011); `None`: no limit.
        pub max_services: Option<i64>,
        /// Comma-separated placement labels (migration m0011).
        pub labels: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `service_placements` table (migration m0011): which worker runs each
/// wanted service, and its pin.
pub mod service_placements {
    use sea_orm::entity::prelude::*;

    /// A row of `service_placements`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "service_placements")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub node_id: i64,
        pub worker: Option<String>,
        pub pinned: Option<String>,
        pub label: Option<String>,
        pub placed_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `imports` table: how far each import job got (migration m0012).
pub mod imports {
    use sea_orm::entity::prelude::*;

    /// A row of `imports`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "imports")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub job_id: i64,
        pub rows_done: i64,
        pub bytes_done: i64,
        pub bytes_total: i64,
        pub worker: Option<String>,
        pub lease_until: Option<i64>,
        pub test_job: Option<i64>,
        pub error: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `import_parts` table: the report of each committed import batch (migration m0012).
pub mod import_parts {
    use sea_orm::entity::prelude::*;

    /// A row of `import_parts`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "import_parts")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub job_id: i64,
        pub part: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
