//! Seeing inside the hub: Prometheus metrics (`metrics`), the server side of the Socket.IO
//! admin UI (`admin`), and Courier's dashboard for streams and consumers (`dashboard`).
//!
//! `routes` adds their HTTP routes next to the API: `/metrics` and the dashboard's JSON behind
//! the API token (as `/api/v1` is), the dashboard's page and the admin UI's built files without
//! it (they hold no data; the dashboard asks for the token, the admin UI logs in itself).

pub mod admin;
pub mod dashboard;
pub mod metrics;
pub mod settings;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use courier_cluster::Cluster;
use courier_server::Io;

use crate::settings::Settings;

/// The observation routes `settings` turn on; `guard` puts a router behind the API token.
pub fn routes(
    io: &Io,
    cluster: Option<&Cluster>,
    settings: &Settings,
    guard: impl Fn(Router) -> Router,
) -> Router {
    let mut open = Router::new();
    let mut guarded = Router::new();
    if settings.metrics.enabled {
        let exporter = Arc::new(metrics::Exporter::new(
            io.clone(),
            cluster.cloned(),
            settings.metrics.max_consumer_series,
        ));
        guarded = guarded.route(
            "/metrics",
            get(|State(e): State<Arc<metrics::Exporter>>| async move {
                (
                    [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
                    e.render().await,
                )
            })
            .with_state(exporter),
        );
    }
    if settings.dashboard.enabled {
        open = open
            .route(
                "/dashboard",
                get(|| async { Redirect::permanent("/dashboard/") }),
            )
            .merge(dashboard::page());
        guarded = guarded.merge(dashboard::api(io.clone(), cluster.cloned()));
    }
    if !settings.admin.ui_dir.as_os_str().is_empty() {
        let dir = Arc::new(settings.admin.ui_dir.clone());
        open = open
            .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
            .route(
                "/admin/",
                get(|State(d): State<Arc<PathBuf>>| async move { static_file(&d, "").await })
                    .with_state(dir.clone()),
            )
            .route(
                "/admin/{*path}",
                get(
                    |State(d): State<Arc<PathBuf>>,
                     axum::extract::Path(p): axum::extract::Path<String>| async move {
                        static_file(&d, &p).await
                    },
                )
                .with_state(dir),
            );
    }
    open.merge(guard(guarded))
}

/// A file of `dir` (`index.html` for the directory itself), never one outside it.
async fn static_file(dir: &Path, path: &str) -> Response {
    let rel = Path::new(path);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut file = dir.join(rel);
    if path.is_empty() || path.ends_with('/') {
        file = file.join("index.html");
    }
    match tokio::fs::read(&file).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, content_type(&file))], bytes).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_files_stay_inside_their_directory() {
        let dir = std::env::temp_dir().join(format!("courier-static-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("js")).unwrap();
        std::fs::write(dir.join("index.html"), "<html>").unwrap();
        std::fs::write(dir.join("js/app.js"), "1").unwrap();
        assert_eq!(static_file(&dir, "").await.status(), StatusCode::OK);
        let js = static_file(&dir, "js/app.js").await;
        assert_eq!(js.status(), StatusCode::OK);
        assert_eq!(
            js.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        for bad in ["../etc/passwd", "/etc/passwd", "js/../../x", "missing.js"] {
            assert_eq!(
                static_file(&dir, bad).await.status(),
                StatusCode::NOT_FOUND,
                "{bad}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
