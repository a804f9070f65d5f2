//! Schema migrations (sea-orm-migration, run on connect).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// All migrations, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(M0001Initial),
            Box::new(M0002ItemSeq),
            Box::new(M0003Enrichment),
            Box::new(M0004ExitIp),
            Box::new(M0005ServiceRuntime),
            Box::new(M0006TokenRoles),
            Box::new(M0007Audit),
            Box::new(M0008Accounts),
            Box::new(M0009Workers),
            Box::new(M0010ServiceKind),
            Box::new(M0011ServicePlacement),
            Box::new(M0012Imports),
        ]
    }
}

struct M0001Initial;

impl MigrationName for M0001Initial {
    fn name(&self) -> &str {
        "m0001_initial"
    }
}

#[derive(DeriveIden)]
enum Nodes {
    Table,
    Id,
    Ip,
    Port,
    Login,
    Password,
    Provider,
    Country,
    State,
    City,
    Zipcode,
    Comment,
    Status,
    LastCheckedAt,
    LastError,
    ConsecutiveFailures,
    PingMs,
    SpeedDownMbps,
    SpeedUpMbps,
    PptpVersion,
    PptpHostname,
    PptpVendor,
    PptpFirmware,
    SocksHost,
    SocksPort,
    SocksUser,
    SocksPassword,
    ServiceWanted,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum StatusHistory {
    Table,
    Id,
    NodeId,
    FromStatus,
    ToStatus,
    Event,
    Reached,
    Failure,
    Detail,
    JobId,
    At,
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    Kind,
    State,
    Options,
    Total,
    CreatedAt,
    FinishedAt,
    DeadlineAt,
}

#[derive(DeriveIden)]
enum JobItems {
    Table,
    Id,
    JobId,
    NodeId,
    State,
    Worker,
    ClaimedAt,
    FinishedAt,
    ResultStatus,
    Detail,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Name,
    PasswordHash,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    Id,
    Name,
    TokenHash,
    UserId,
    CreatedAt,
    LastUsedAt,
    ExpiresAt,
    Revoked,
}

fn index(name: &str, table: impl IntoIden, cols: &[&'static str]) -> IndexCreateStatement {
    let mut idx = Index::create();
    idx.name(name).table(table).if_not_exists();
    for c in cols {
        idx.col(Alias::new(*c));
    }
    idx.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for M0001Initial {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Nodes::Table)
                .if_not_exists()
                .col(big_pk_auto(Nodes::Id))
                .col(string(Nodes::Ip))
                .col(integer(Nodes::Port))
                .col(string(Nodes::Login))
                .col(string(Nodes::Password))
                .col(string_null(Nodes::Provider))
                .col(string_null(Nodes::Country))
                .col(string_null(Nodes::State))
                .col(string_null(Nodes::City))
                .col(string_null(Nodes::Zipcode))
                .col(text_null(Nodes::Comment))
                .col(string(Nodes::Status).default("not_tested"))
                .col(big_integer_null(Nodes::LastCheckedAt))
                .col(text_null(Nodes::LastError))
                .col(integer(Nodes::ConsecutiveFailures).default(0))
                .col(double_null(Nodes::PingMs))
                .col(double_null(Nodes::SpeedDownMbps))
                .col(double_null(Nodes::SpeedUpMbps))
                .col(integer_null(Nodes::PptpVersion))
                .col(string_null(Nodes::PptpHostname))
                .col(string_null(Nodes::PptpVendor))
                .col(integer_null(Nodes::PptpFirmware))
                .col(string_null(Nodes::SocksHost))
                .col(integer_null(Nodes::SocksPort))
                .col(string_null(Nodes::SocksUser))
                .col(string_null(Nodes::SocksPassword))
                .col(boolean(Nodes::ServiceWanted).default(false))
                .col(big_integer(Nodes::CreatedAt))
                .col(big_integer(Nodes::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("nodes_identity")
                .table(Nodes::Table)
                .col(Nodes::Ip)
                .col(Nodes::Port)
                .col(Nodes::Login)
                .unique()
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        for (name, cols) in [
            ("nodes_status", &["status"][..]),
            (
                "nodes_country_state_city",
                &["country", "state", "city"][..],
            ),
            ("nodes_provider", &["provider"][..]),
            ("nodes_zipcode", &["zipcode"][..]),
            ("nodes_last_checked", &["last_checked_at"][..]),
            ("nodes_speed_down", &["speed_down_mbps"][..]),
            ("nodes_service_wanted", &["service_wanted"][..]),
        ] {
            m.create_index(index(name, Nodes::Table, cols)).await?;
        }

        m.create_table(
            Table::create()
                .table(StatusHistory::Table)
                .if_not_exists()
                .col(big_pk_auto(StatusHistory::Id))
                .col(big_integer(StatusHistory::NodeId))
                .col(string(StatusHistory::FromStatus))
                .col(string_null(StatusHistory::ToStatus))
                .col(string(StatusHistory::Event))
                .col(small_integer_null(StatusHistory::Reached))
                .col(text_null(StatusHistory::Failure))
                .col(text_null(StatusHistory::Detail))
                .col(big_integer_null(StatusHistory::JobId))
                .col(big_integer(StatusHistory::At))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "status_history_node",
            StatusHistory::Table,
            &["node_id", "id"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(Jobs::Table)
                .if_not_exists()
                .col(big_pk_auto(Jobs::Id))
                .col(string(Jobs::Kind))
                .col(string(Jobs::State))
                .col(text(Jobs::Options))
                .col(big_integer(Jobs::Total))
                .col(big_integer(Jobs::CreatedAt))
                .col(big_integer_null(Jobs::FinishedAt))
                .col(big_integer_null(Jobs::DeadlineAt))
                .to_owned(),
        )
        .await?;
        m.create_index(index("jobs_state", Jobs::Table, &["state"]))
            .await?;

        m.create_table(
            Table::create()
                .table(JobItems::Table)
                .if_not_exists()
                .col(big_pk_auto(JobItems::Id))
                .col(big_integer(JobItems::JobId))
                .col(big_integer(JobItems::NodeId))
                .col(string(JobItems::State))
                .col(string_null(JobItems::Worker))
                .col(big_integer_null(JobItems::ClaimedAt))
                .col(big_integer_null(JobItems::FinishedAt))
                .col(string_null(JobItems::ResultStatus))
                .col(text_null(JobItems::Detail))
                .foreign_key(
                    ForeignKey::create()
                        .from(JobItems::Table, JobItems::JobId)
                        .to(Jobs::Table, Jobs::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "job_items_job_state",
            JobItems::Table,
            &["job_id", "state"],
        ))
        .await?;
        m.create_index(index(
            "job_items_job_finished",
            JobItems::Table,
            &["job_id", "finished_at"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(Users::Table)
                .if_not_exists()
                .col(big_pk_auto(Users::Id))
                .col(string_uniq(Users::Name))
                .col(string(Users::PasswordHash))
                .col(big_integer(Users::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(ApiTokens::Table)
                .if_not_exists()
                .col(big_pk_auto(ApiTokens::Id))
                .col(string(ApiTokens::Name))
                .col(string_uniq(ApiTokens::TokenHash))
                .col(big_integer_null(ApiTokens::UserId))
                .col(big_integer(ApiTokens::CreatedAt))
                .col(big_integer_null(ApiTokens::LastUsedAt))
                .col(big_integer_null(ApiTokens::ExpiresAt))
                .col(boolean(ApiTokens::Revoked).default(false))
                .foreign_key(
                    ForeignKey::create()
                        .from(ApiTokens::Table, ApiTokens::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "api_tokens",
            "users",
            "job_items",
            "jobs",
            "status_history",
            "nodes",
        ] {
            m.drop_table(Table::drop().table(Alias::new(t)).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

/// `job_items.seq`: the per-job commit number of the transaction that ended the
/// item. Commits of one job are serialised (SQLite: one writer; Postgres: the
/// job row is locked), so "items with `seq` > N" never misses a result that
/// commits later: the HTTP event stream resumes from it (`Last-Event-ID`).
struct M0002ItemSeq;

impl MigrationName for M0002ItemSeq {
    fn name(&self) -> &str {
        "m0002_job_items_seq"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0002ItemSeq {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(JobItems::Table)
                .add_column(big_integer_null(Alias::new("seq")))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "job_items_job_seq",
            JobItems::Table,
            &["job_id", "seq"],
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("job_items_job_seq")
                .table(JobItems::Table)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(JobItems::Table)
                .drop_column(Alias::new("seq"))
                .to_owned(),
        )
        .await
    }
}

/// GEO and fraud enrichment stored with each node (nullable columns, filled by
/// `geo` and `fraud` jobs, never by a status event), and the TTL cache of
/// online providers' answers.
struct M0003Enrichment;

impl MigrationName for M0003Enrichment {
    fn name(&self) -> &str {
        "m0003_enrichment"
    }
}

/// The columns M0003 adds to `nodes`, with their types.
const ENRICHMENT_COLUMNS: [(&str, ColType); 19] = [
    ("geo_ip", ColType::Text),
    ("geo_country_code", ColType::Text),
    ("geo_country", ColType::Text),
    ("geo_region", ColType::Text),
    ("geo_city", ColType::Text),
    ("geo_postal", ColType::Text),
    ("geo_latitude", ColType::Double),
    ("geo_longitude", ColType::Double),
    ("geo_time_zone", ColType::Text),
    ("geo_source", ColType::Text),
    ("geo_at", ColType::BigInt),
    ("asn", ColType::BigInt),
    ("asn_org", ColType::Text),
    ("location_mismatch", ColType::Bool),
    ("fraud_ip", ColType::Text),
    ("fraud_score", ColType::Int),
    ("fraud_risk", ColType::Text),
    ("fraud_provider", ColType::Text),
    ("fraud_at", ColType::BigInt),
];

#[derive(Clone, Copy)]
enum ColType {
    Text,
    Double,
    BigInt,
    Int,
    Bool,
}

#[derive(DeriveIden)]
enum EnrichmentCache {
    Table,
    Provider,
    Key,
    Value,
    FetchedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for M0003Enrichment {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for (name, ty) in ENRICHMENT_COLUMNS {
            let col = Alias::new(name);
            let def = match ty {
                ColType::Text => string_null(col),
                ColType::Double => double_null(col),
                ColType::BigInt => big_integer_null(col),
                ColType::Int => integer_null(col),
                ColType::Bool => boolean_null(col),
            };
            m.alter_table(
                Table::alter()
                    .table(Nodes::Table)
                    .add_column(def)
                    .to_owned(),
            )
            .await?;
        }
        for (name, cols) in [
            ("nodes_asn", &["asn"][..]),
            ("nodes_fraud_score", &["fraud_score"][..]),
            ("nodes_geo_country", &["geo_country_code"][..]),
        ] {
            m.create_index(index(name, Nodes::Table, cols)).await?;
        }
        m.create_table(
            Table::create()
                .table(EnrichmentCache::Table)
                .if_not_exists()
                .col(string(EnrichmentCache::Provider))
                .col(string(EnrichmentCache::Key))
                .col(text(EnrichmentCache::Value))
                .col(big_integer(EnrichmentCache::FetchedAt))
                .primary_key(
                    Index::create()
                        .col(EnrichmentCache::Provider)
                        .col(EnrichmentCache::Key),
                )
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table(EnrichmentCache::Table)
                .if_exists()
                .to_owned(),
        )
        .await?;
        for name in ["nodes_asn", "nodes_fraud_score", "nodes_geo_country"] {
            m.drop_index(Index::drop().name(name).table(Nodes::Table).to_owned())
                .await?;
        }
        for (name, _) in ENRICHMENT_COLUMNS.iter().rev() {
            m.alter_table(
                Table::alter()
                    .table(Nodes::Table)
                    .drop_column(Alias::new(*name))
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}

/// The node's exit address (`nodes.exit_ip`), recorded by speed tests.
struct M0004ExitIp;

impl MigrationName for M0004ExitIp {
    fn name(&self) -> &str {
        "m0004_exit_ip"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0004ExitIp {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Nodes::Table)
                .add_column(string_null(Alias::new("exit_ip")))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Nodes::Table)
                .drop_column(Alias::new("exit_ip"))
                .to_owned(),
        )
        .await
    }
}

/// The runtime state of services (`service_runtime`, one row per node that
/// ran a service or was asked to restart one): the counters the process
/// running the service flushes, and a pending restart request. Kept apart
/// from `nodes` so that no write here can touch a status.
struct M0005ServiceRuntime;

impl MigrationName for M0005ServiceRuntime {
    fn name(&self) -> &str {
        "m0005_service_runtime"
    }
}

#[derive(DeriveIden)]
enum ServiceRuntime {
    Table,
    NodeId,
    Connections,
    ConnectionsTotal,
    BytesUp,
    BytesDown,
    LastError,
    StartedAt,
    UpdatedAt,
    RestartRequestedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for M0005ServiceRuntime {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ServiceRuntime::Table)
                .if_not_exists()
                .col(big_integer(ServiceRuntime::NodeId).primary_key())
                .col(big_integer(ServiceRuntime::Connections).default(0))
                .col(big_integer(ServiceRuntime::ConnectionsTotal).default(0))
                .col(big_integer(ServiceRuntime::BytesUp).default(0))
                .col(big_integer(ServiceRuntime::BytesDown).default(0))
                .col(text_null(ServiceRuntime::LastError))
                .col(big_integer_null(ServiceRuntime::StartedAt))
                .col(big_integer_null(ServiceRuntime::UpdatedAt))
                .col(big_integer_null(ServiceRuntime::RestartRequestedAt))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table(ServiceRuntime::Table)
                .if_exists()
                .to_owned(),
        )
        .await
    }
}

struct M0006TokenRoles;

impl MigrationName for M0006TokenRoles {
    fn name(&self) -> &str {
        "m0006_token_roles"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0006TokenRoles {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        m.alter_table(
            Table::alter()
                .table(ApiTokens::Table)
                .add_column(string(Alias::new("role")).default("admin"))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(ApiTokens::Table)
                .add_column(string(Alias::new("scope")).default("full"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in ["scope", "role"] {
            m.alter_table(
                Table::alter()
                    .table(ApiTokens::Table)
                    .drop_column(Alias::new(col))
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}

struct M0007Audit;

impl MigrationName for M0007Audit {
    fn name(&self) -> &str {
        "m0007_audit"
    }
}

#[derive(DeriveIden)]
enum Audit {
    Table,
    Id,
    At,
    Actor,
    Source,
    Action,
    Target,
    Count,
}

#[async_trait::async_trait]
impl MigrationTrait for M0007Audit {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Audit::Table)
                .if_not_exists()
                .col(big_pk_auto(Audit::Id))
                .col(big_integer(Audit::At))
                .col(text(Audit::Actor))
                .col(text_null(Audit::Source))
                .col(text(Audit::Action))
                .col(text_null(Audit::Target))
                .col(big_integer_null(Audit::Count))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Audit::Table).if_exists().to_owned())
            .await
    }
}

/// Operator accounts: `users` (unused since m0001) gains a role, a disabled
/// flag and the time of the last password change; `sessions` holds the
/// console's sign-in sessions (only the SHA-256 of a session id is stored).
struct M0008Accounts;

impl MigrationName for M0008Accounts {
    fn name(&self) -> &str {
        "m0008_accounts"
    }
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    Id,
    TokenHash,
    AccountId,
    CreatedAt,
    LastSeen,
    ExpiresAt,
    Source,
}

#[async_trait::async_trait]
impl MigrationTrait for M0008Accounts {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        for mut col in [
            string(Alias::new("role")).default("viewer").to_owned(),
            boolean(Alias::new("disabled")).default(false).to_owned(),
            big_integer_null(Alias::new("password_changed_at")),
        ] {
            m.alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(&mut col)
                    .to_owned(),
            )
            .await?;
        }
        m.create_table(
            Table::create()
                .table(Sessions::Table)
                .if_not_exists()
                .col(big_pk_auto(Sessions::Id))
                .col(string_uniq(Sessions::TokenHash))
                .col(big_integer(Sessions::AccountId))
                .col(big_integer(Sessions::CreatedAt))
                .col(big_integer(Sessions::LastSeen))
                .col(big_integer(Sessions::ExpiresAt))
                .col(text_null(Sessions::Source))
                .foreign_key(
                    ForeignKey::create()
                        .from(Sessions::Table, Sessions::AccountId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(index("sessions_account", Sessions::Table, &["account_id"]))
            .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Sessions::Table).if_exists().to_owned())
            .await?;
        for col in ["password_changed_at", "disabled", "role"] {
            m.alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(Alias::new(col))
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}

/// Workers and leases: one `workers` row per live process (name, host, pid,
/// version, roles, heartbeat), and on each claimed job item its claim token
/// and lease deadline (`job_items.claim_token`, `job_items.lease_until`).
struct M0009Workers;

impl MigrationName for M0009Workers {
    fn name(&self) -> &str {
        "m0009_workers"
    }
}

#[derive(DeriveIden)]
enum Workers {
    Table,
    Name,
    Host,
    Pid,
    Version,
    Roles,
    StartedAt,
    LastHeartbeat,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for M0009Workers {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Workers::Table)
                .if_not_exists()
                .col(string(Workers::Name).primary_key())
                .col(text(Workers::Host))
                .col(big_integer(Workers::Pid))
                .col(text(Workers::Version))
                .col(text(Workers::Roles))
                .col(big_integer(Workers::StartedAt))
                .col(big_integer(Workers::LastHeartbeat))
                .col(big_integer(Workers::ExpiresAt))
                .to_owned(),
        )
        .await?;
        // One column per statement: SQLite alters one thing at a time.
        for col in ["claim_token", "lease_until"] {
            m.alter_table(
                Table::alter()
                    .table(JobItems::Table)
                    .add_column(big_integer_null(Alias::new(col)))
                    .to_owned(),
            )
            .await?;
        }
        m.create_index(index(
            "job_items_state_worker",
            JobItems::Table,
            &["state", "worker"],
        ))
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("job_items_state_worker")
                .table(JobItems::Table)
                .to_owned(),
        )
        .await?;
        for col in ["lease_until", "claim_token"] {
            m.alter_table(
                Table::alter()
                    .table(JobItems::Table)
                    .drop_column(Alias::new(col))
                    .to_owned(),
            )
            .await?;
        }
        m.drop_table(Table::drop().table(Workers::Table).if_exists().to_owned())
            .await
    }
}

/// The desired kind of each node's service (`socks` or `tun`), next to
/// `service_wanted`; existing nodes keep SOCKS5.
struct M0010ServiceKind;

impl MigrationName for M0010ServiceKind {
    fn name(&self) -> &str {
        "m0010_service_kind"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0010ServiceKind {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Nodes::Table)
                .add_column(string(Alias::new("service_kind")).default("socks"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Nodes::Table)
                .drop_column(Alias::new("service_kind"))
                .to_owned(),
        )
        .await
    }
}

/// Service placement: `service_placements` (per wanted service, the worker
/// that runs it, an optional pin and an optional label) and each worker's
/// capacity and labels (`workers.max_services`, `workers.labels`).
struct M0011ServicePlacement;

impl MigrationName for M0011ServicePlacement {
    fn name(&self) -> &str {
        "m0011_service_placement"
    }
}

#[derive(DeriveIden)]
enum ServicePlacements {
    Table,
    NodeId,
    Worker,
    Pinned,
    Label,
    PlacedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for M0011ServicePlacement {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ServicePlacements::Table)
                .if_not_exists()
                .col(big_integer(ServicePlacements::NodeId).primary_key())
                .col(string_null(ServicePlacements::Worker))
                .col(string_null(ServicePlacements::Pinned))
                .col(string_null(ServicePlacements::Label))
                .col(big_integer_null(ServicePlacements::PlacedAt))
                .to_owned(),
        )
        .await?;
        // "The services of worker W" (its count, its services held) without a scan.
        m.create_index(
            Index::create()
                .name("idx_service_placements_worker")
                .table(ServicePlacements::Table)
                .col(ServicePlacements::Worker)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Workers::Table)
                .add_column(big_integer_null(Alias::new("max_services")))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Workers::Table)
                .add_column(text_null(Alias::new("labels")))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Workers::Table)
                .drop_column(Alias::new("labels"))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Workers::Table)
                .drop_column(Alias::new("max_services"))
                .to_owned(),
        )
        .await?;
        m.drop_table(
            Table::drop()
                .table(ServicePlacements::Table)
                .if_exists()
                .to_owned(),
        )
        .await
    }
}

/// Import jobs: `imports` holds how far each got (the parser rows the
/// committed batches cover, the bytes read, who holds it) and `import_parts` the report of each
/// committed batch.
struct M0012Imports;

impl MigrationName for M0012Imports {
    fn name(&self) -> &str {
        "m0012_imports"
    }
}

#[derive(DeriveIden)]
enum Imports {
    Table,
    JobId,
    RowsDone,
    BytesDone,
    BytesTotal,
    Worker,
    LeaseUntil,
    TestJob,
    Error,
}

#[derive(DeriveIden)]
enum ImportParts {
    Table,
    Id,
    JobId,
    Part,
}

#[async_trait::async_trait]
impl MigrationTrait for M0012Imports {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Imports::Table)
                .if_not_exists()
                .col(big_integer(Imports::JobId).primary_key())
                .col(big_integer(Imports::RowsDone))
                .col(big_integer(Imports::BytesDone))
                .col(big_integer(Imports::BytesTotal))
                .col(text_null(Imports::Worker))
                .col(big_integer_null(Imports::LeaseUntil))
                .col(big_integer_null(Imports::TestJob))
                .col(text_null(Imports::Error))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(ImportParts::Table)
                .if_not_exists()
                .col(big_pk_auto(ImportParts::Id))
                .col(big_integer(ImportParts::JobId))
                .col(text(ImportParts::Part))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_import_parts_job")
                .table(ImportParts::Table)
                .col(ImportParts::JobId)
                .col(ImportParts::Id)
                .if_not_exists()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table(ImportParts::Table)
                .if_exists()
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table(Imports::Table).if_exists().to_owned())
            .await
    }
}
