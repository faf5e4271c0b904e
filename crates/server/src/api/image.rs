//! `/image/…` when the image repository is kept on object storage: its files read from the
//! bucket and streamed (a CDN in front of the bucket is the production path; this keeps the
//! server's own address working for vehicles and tools, as with the local folder). Resumed
//! downloads (`Range: bytes=N-`) are answered 206 as `ServeDir` answers them.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::store::ObjectStorage;

/// The routes under `/image`.
pub(crate) fn router(bucket: ObjectStorage) -> Router {
    Router::new()
        .route("/{*path}", get(serve))
        .with_state(bucket)
}

/// The offset of `Range: bytes=N-` (other forms are ignored: the whole file is sent).
fn range_start(headers: &HeaderMap) -> u64 {
    headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn serve(
    State(bucket): State<ObjectStorage>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    // Only the repository's files: not the writers' lease, not a path out of the prefix.
    if crate::repo::check_target_name(&path).is_err() || !crate::store::is_public_key(&path) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let offset = range_start(&headers);
    match bucket.open_for_reading(&path, offset).await {
        Ok(Some((size, rx))) => {
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            });
            let content_type = if path.ends_with(".json") {
                "application/json"
            } else {
                "application/octet-stream"
            };
            let mut response = Response::builder()
                .header(header::CONTENT_TYPE, content_type)
                .header(header::CONTENT_LENGTH, size.saturating_sub(offset))
                .header(header::ACCEPT_RANGES, "bytes");
            if offset > 0 {
                response = response.status(StatusCode::PARTIAL_CONTENT).header(
                    header::CONTENT_RANGE,
                    format!("bytes {offset}-{}/{size}", size.saturating_sub(1)),
                );
            }
            response
                .body(Body::from_stream(stream))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(crate::error::Error::BadRequest(_)) => {
            StatusCode::RANGE_NOT_SATISFIABLE.into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, path, "could not read the image repository's bucket");
            StatusCode::BAD_GATEWAY.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_download_names_its_offset() {
        let mut h = HeaderMap::new();
        assert_eq!(range_start(&h), 0);
        h.insert(header::RANGE, "bytes=1024-".parse().unwrap());
        assert_eq!(range_start(&h), 1024);
        h.insert(header::RANGE, "bytes=0-99".parse().unwrap());
        assert_eq!(range_start(&h), 0);
    }
}
