//! The OpenAPI 3.1 document, generated from the handlers' annotations
//! (utoipa). Served at `/api/v1/openapi.json`; `docs/openapi.json` is a copy
//! that a test keeps equal to it.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

/// The API document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Connexa API", description = "REST API of Connexa, a toolkit for PPTP VPN server fleets. See docs/http.md."),
    paths(
        crate::healthz,
        crate::metrics::metrics,
        routes::nodes::list,
        routes::nodes::create,
        routes::nodes::delete_matching,
        routes::nodes::values,
        routes::nodes::get_one,
        routes::nodes::patch,
        routes::nodes::delete_one,
        routes::nodes::history,
        routes::jobs::list,
        routes::jobs::create,
        routes::jobs::get_one,
        routes::jobs::cancel,
        routes::jobs::cancel_all,
        routes::jobs::retest_failed,
        routes::jobs::events,
        routes::services::list,
        routes::services::start,
        routes::services::stop,
        routes::services::restart,
        routes::services::profile,
        routes::stats::stats,
        routes::workers::list,
        routes::token::current,
        crate::session::sign_in,
        crate::session::current,
        crate::session::sign_out,
        crate::session::change_password,
        routes::import::import,
        routes::import::list,
        routes::import::get_one,
        routes::import::events,
        routes::export::export,
        routes::audit::list,
        serve,
    ),
    components(schemas(
        routes::jobs::ProgressData,
        routes::jobs::ItemResultView,
        routes::jobs::TestKind,
        connexa_core::domain::SortKey,
        connexa_core::import::OnConflict,
        crate::problem::Problem,
    )),
    modifiers(&Bearer, &CommonErrors, &Roles),
    security(("bearer" = [])),
    tags(
        (name = "nodes", description = "The fleet"),
        (name = "jobs", description = "Test jobs and their live progress"),
        (name = "services", description = "SOCKS5 services through verified nodes"),
        (name = "import", description = "Node lists in"),
        (name = "export", description = "Node lists out"),
        (name = "stats", description = "Counts"),
        (name = "audit", description = "Who changed what"),
        (name = "workers", description = "Worker processes, heartbeats, items in flight"),
        (name = "meta", description = "Health, metrics, this document"),
        (name = "session", description = "Operator accounts: sign in, who am I, sign out, change password"),
    )
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `connexa-http token create --name NAME --role viewer|operator|admin [--metrics]`; each operation names the role it needs (`x-required-role`)",
                    ))
                    .build(),
            ),
        );
    }
}

/// Documents the problems any authenticated operation can answer (bad query,
/// no token, rate limit, server failure, time limit) where a handler did not.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        let common = [
            ("400", "Invalid query parameters or path (`bad-request`)"),
            ("401", "No valid bearer token (`unauthorized`)"),
            (
                "403",
                "The token's role or scope does not allow this (`forbidden`)",
            ),
            ("405", "Method not allowed (`method-not-allowed`)"),
            (
                "429",
                "Too many failed authentication attempts (`rate-limited`)",
            ),
            ("500", "Server failure (`internal`)"),
            ("503", "Request took too long (`timeout`)"),
        ];
        for (path, item) in api.paths.paths.iter_mut() {
            if path == "/healthz" {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let with_body = [
                    ("413", "Body too large (`payload-too-large`)"),
                    ("415", "Wrong content type (`unsupported-media-type`)"),
                    (
                        "422",
                        "The body does not fit the schema, e.g. an unknown field (`invalid-body`)",
                    ),
                ];
                let extra = if op.request_body.is_some() {
                    &with_body[..]
                } else {
                    &[]
                };
                for (code, what) in common.iter().chain(extra) {
                    op.responses
                        .responses
                        .entry((*code).to_owned())
                        .or_insert_with(|| problem(what).into());
                }
                // Every error is a problem document: a handler's error
                // response documented as `application/json` is served as
                // `application/problem+json`.
                for (code, response) in op.responses.responses.iter_mut() {
                    if !(code.starts_with('4') || code.starts_with('5')) {
                        continue;
                    }
                    if let utoipa::openapi::RefOr::T(r) = response
                        && let Some(c) = r.content.shift_remove("application/json")
                    {
                        r.content
                            .entry("application/problem+json".to_owned())
                            .or_insert(c);
                    }
                }
            }
        }
    }
}

/// Writes the role each operation needs ([`crate::roles::ROUTES`]) into the
/// operation: an `x-required-role` extension and a sentence of its description.
struct Roles;

impl Modify for Roles {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use axum::http::Method;
        use utoipa::openapi::extensions::Extensions;
        for (path, item) in api.paths.paths.iter_mut() {
            for (method, op) in [
                (Method::GET, &mut item.get),
                (Method::POST, &mut item.post),
                (Method::PUT, &mut item.put),
                (Method::PATCH, &mut item.patch),
                (Method::DELETE, &mut item.delete),
            ] {
                let Some(op) = op else { continue };
                if crate::roles::is_public(&method, path) {
                    let sentence =
                        "Public: no credentials (rate-limited per address and per account).";
                    op.description = Some(match op.description.take() {
                        Some(d) if !d.is_empty() => format!("{d}\n\n{sentence}"),
                        _ => sentence.to_owned(),
                    });
                    op.extensions
                        .get_or_insert_with(Extensions::default)
                        .insert("x-required-role".to_owned(), "none".into());
                    continue;
                }
                let Some(role) = crate::roles::required_role(&method, path) else {
                    continue;
                };
                let sentence = if path == crate::roles::METRICS_PATH {
                    format!("Needs the `{role}` role, or a token of scope `metrics`.")
                } else {
                    format!("Needs the `{role}` role.")
                };
                op.description = Some(match op.description.take() {
                    Some(d) if !d.is_empty() => format!("{d}\n\n{sentence}"),
                    _ => sentence,
                });
                op.extensions
                    .get_or_insert_with(Extensions::default)
                    .insert("x-required-role".to_owned(), role.as_str().into());
            }
        }
    }
}

/// The document as pretty JSON (what `connexa-http openapi` prints).
pub fn json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
