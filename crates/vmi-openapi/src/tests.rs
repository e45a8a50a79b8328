use super::*;
use axum::body::Body as HttpBody;
use axum::routing::{get, post};
use tower_service::Service;

/// A user, as a test API takes it.
#[derive(serde::Deserialize, JsonSchema)]
#[allow(dead_code)]
struct NewUser {
    /// The name.
    name: String,
}

#[tokio::test]
async fn routes_are_served_and_described_by_the_same_call() {
    let (mut router, doc): (Router, ApiDoc) = ApiRouter::new("Test", "A test API.")
        .route(
            "/v1/users/{user}/devices",
            post(|| async { "made" }).get(|| async { "listed" }),
            [
                Op::post("Makes a device").access("admin of {user}").json::<NewUser>().returns::<NewUser>(201, "it"),
                Op::get("Lists devices").access("admin of {user}"),
            ],
        )
        .route("/healthz", get(|| async { "ok" }), [Op::get("Says the process answers")])
        .finish();
    let json = doc.to_json();
    assert_eq!(json["openapi"], "3.1.0");
    let devices = &json["paths"]["/v1/users/{user}/devices"];
    assert_eq!(devices["post"]["x-vmi-access"], "admin of {user}");
    assert_eq!(devices["post"]["parameters"][0]["name"], "user");
    assert_eq!(
        devices["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/NewUser"
    );
    assert_eq!(json["components"]["schemas"]["NewUser"]["properties"]["name"]["description"], "The name.");
    assert!(devices["get"]["responses"]["401"].is_object(), "a guarded route says it refuses");
    assert_eq!(json["paths"]["/healthz"]["get"]["security"], json!([]));
    let ids: Vec<&str> = doc.operations().iter().map(|o| o.path.as_str()).collect();
    assert_eq!(ids, ["/v1/users/{user}/devices", "/v1/users/{user}/devices", "/healthz", DOCUMENT_PATH]);

    // The document is served, and equals what the code built.
    let request = axum::http::Request::get(DOCUMENT_PATH).body(HttpBody::empty()).expect("request");
    let response = router.call(request).await.expect("answer");
    assert_eq!(response.status(), 200);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    assert_eq!(serde_json::from_slice::<Value>(&bytes).expect("json"), json);
}

#[test]
fn concrete_paths_and_ids() {
    assert_eq!(concrete("/v1/users/{user}/kv/{key}", "x"), "/v1/users/x/kv/x");
    assert_eq!(path_parameters("/v1/users/{user}/kv/{key}"), ["user", "key"]);
    assert_eq!(operation_id(&Method::GET, "/v1/users/{user}/kv/{key}"), "get_v1_users_user_kv_key");
    assert_eq!(tag("/v1/users/{user}"), "users");
    assert_eq!(tag("/healthz"), "healthz");
}
