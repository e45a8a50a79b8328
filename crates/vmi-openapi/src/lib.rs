//! The services' HTTP APIs described as OpenAPI 3.1 by the code that serves them.
//!
//! A service adds each route through [`ApiRouter::route`], with the handler and an [`Op`] per method it serves
//! (what it does, who may call it, its body and answers): the axum router and the document are built by the same
//! call, so a route cannot be served without being described. (A workspace lint, `clippy.toml`'s
//! `disallowed-methods`, refuses `axum::Router::route` anywhere else in the services.) [`ApiRouter::finish`] adds
//! `GET /openapi.json`, which serves the document, and returns both.
//!
//! What the document cannot check by itself, that each described method is really served at its path, a test of
//! each service checks by calling every operation ([`ApiDoc::operations`]) on the router: none may answer 405
//! or fall through to the not-found fallback.
//!
//! Schemas come from the types' `schemars::JsonSchema` derives, so a field added to a type shows in the document.

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, header};
use axum::response::IntoResponse;
use axum::routing::MethodRouter;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

pub use schemars;

/// Where every service serves its document.
pub const DOCUMENT_PATH: &str = "/openapi.json";

/// Who may call an operation, as the document says it (`x-vmi-access`) and as [`Op::access`] takes it.
pub const ANYONE: &str = "anyone";

/// A body, as an operation takes or answers it.
#[derive(Clone)]
enum Body {
    /// JSON of a type's schema.
    Json(Schema),
    /// Another media type, described in words.
    Other { media: &'static str },
}

/// One answer an operation may give.
#[derive(Clone)]
struct Answer {
    status: u16,
    what: &'static str,
    body: Option<Body>,
}

/// How a type's schema is made, once the generator is at hand.
type SchemaOf = fn(&mut SchemaGenerator) -> Schema;

/// One method of one route: what it does, who may call it, what it takes and answers. Made with [`Op::get`],
/// [`Op::post`], [`Op::put`] or [`Op::delete`], then described further.
#[derive(Clone)]
pub struct Op {
    method: Method,
    summary: &'static str,
    description: Option<&'static str>,
    access: &'static str,
    request: Option<Body>,
    answers: Vec<Answer>,
    websocket: bool,
    query: Vec<(&'static str, &'static str)>,
    pending_request: Option<SchemaOf>,
    pending_answers: Vec<(u16, &'static str, SchemaOf)>,
}

impl Op {
    fn new(method: Method, summary: &'static str) -> Op {
        Op {
            method,
            summary,
            description: None,
            access: ANYONE,
            request: None,
            answers: Vec::new(),
            websocket: false,
            query: Vec::new(),
            pending_request: None,
            pending_answers: Vec::new(),
        }
    }

    /// A `GET` that does `summary` (one line, a verb first).
    pub fn get(summary: &'static str) -> Op {
        Op::new(Method::GET, summary)
    }

    /// A `POST`.
    pub fn post(summary: &'static str) -> Op {
        Op::new(Method::POST, summary)
    }

    /// A `PUT`.
    pub fn put(summary: &'static str) -> Op {
        Op::new(Method::PUT, summary)
    }

    /// A `DELETE`.
    pub fn delete(summary: &'static str) -> Op {
        Op::new(Method::DELETE, summary)
    }

    /// More words on what it does and when.
    pub fn describe(mut self, description: &'static str) -> Op {
        self.description = Some(description);
        self
    }

    /// Who may call it (the rule of docs/SECURITY.md, in words): [`ANYONE`] by default.
    pub fn access(mut self, who: &'static str) -> Op {
        self.access = who;
        self
    }

    /// Its body is JSON of `T`.
    pub fn json<T: JsonSchema>(mut self) -> Op {
        self.pending_request = Some(|g| g.subschema_for::<T>());
        self
    }

    /// Its body is of `media` (bytes, text).
    pub fn body(mut self, media: &'static str) -> Op {
        self.request = Some(Body::Other { media });
        self
    }

    /// A query parameter `name`, described.
    pub fn query(mut self, name: &'static str, what: &'static str) -> Op {
        self.query.push((name, what));
        self
    }

    /// It answers `status` with JSON of `T`: `what` says what that is.
    pub fn returns<T: JsonSchema>(mut self, status: u16, what: &'static str) -> Op {
        self.pending_answers.push((status, what, |g| g.subschema_for::<T>()));
        self
    }

    /// It answers `status` with a body of `media`, or none (`None`).
    pub fn answers(mut self, status: u16, media: Option<&'static str>, what: &'static str) -> Op {
        self.answers.push(Answer { status, what, body: media.map(|media| Body::Other { media }) });
        self
    }

    /// It is a WebSocket: the `GET` upgrades, and the protocol is docs/PROTOCOL.md's (or docs/MIGRATION.md's).
    pub fn websocket(mut self) -> Op {
        self.websocket = true;
        self
    }

    /// Resolves the schemas into `generator`'s components.
    fn resolve(mut self, generator: &mut SchemaGenerator) -> Op {
        if let Some(schema) = self.pending_request.take() {
            self.request = Some(Body::Json(schema(generator)));
        }
        for (status, what, schema) in std::mem::take(&mut self.pending_answers) {
            self.answers.push(Answer { status, what, body: Some(Body::Json(schema(generator))) });
        }
        self.answers.sort_by_key(|a| a.status);
        self
    }
}

/// A described operation: where it is served and how.
#[derive(Clone)]
pub struct Operation {
    /// The route as the router has it (`/v1/users/{user}/devices`).
    pub path: String,
    /// The method.
    pub method: Method,
    /// Who may call it.
    pub access: &'static str,
    op: Op,
}

/// The document being built: every operation, and the schemas they name.
pub struct ApiDoc {
    title: &'static str,
    description: &'static str,
    operations: Vec<Operation>,
    generator: SchemaGenerator,
}

impl ApiDoc {
    /// Every operation described, in the order the routes were added.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// The OpenAPI 3.1 document.
    pub fn to_json(&self) -> Value {
        let mut paths = Map::new();
        for operation in &self.operations {
            let item = paths.entry(operation.path.clone()).or_insert_with(|| json!({}));
            let op = &operation.op;
            let mut parameters: Vec<Value> = path_parameters(&operation.path)
                .into_iter()
                .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
                .collect();
            parameters.extend(op.query.iter().map(|(name, what)| {
                json!({ "name": name, "in": "query", "required": false, "description": what,
                        "schema": { "type": "string" } })
            }));
            let mut responses = Map::new();
            for answer in &op.answers {
                let mut response = json!({ "description": answer.what });
                if let Some(body) = &answer.body {
                    response["content"] = content(body);
                }
                responses.insert(answer.status.to_string(), response);
            }
            if op.websocket {
                responses.insert(
                    "101".into(),
                    json!({ "description": "Switching Protocols: the WebSocket is open (binary messages)" }),
                );
            }
            if op.access != ANYONE {
                responses.entry("401").or_insert_with(|| json!({ "description": "no credentials, or unknown ones" }));
                responses
                    .entry("403")
                    .or_insert_with(|| json!({ "description": "the caller is not one this route allows" }));
            }
            if responses.is_empty() {
                responses.insert("200".into(), json!({ "description": "done" }));
            }
            let mut value = json!({
                "summary": op.summary,
                "operationId": operation_id(&operation.method, &operation.path),
                "tags": [tag(&operation.path)],
                "x-vmi-access": op.access,
                "responses": responses,
            });
            if let Some(description) = op.description {
                value["description"] = json!(description);
            }
            if !parameters.is_empty() {
                value["parameters"] = json!(parameters);
            }
            if let Some(body) = &op.request {
                value["requestBody"] = json!({ "required": true, "content": content(body) });
            }
            value["security"] =
                if op.access == ANYONE { json!([]) } else { json!([{ "bearer": [] }, { "mutualTLS": [] }]) };
            item[operation.method.as_str().to_ascii_lowercase()] = value;
        }
        json!({
            "openapi": "3.1.0",
            "info": { "title": self.title, "version": env!("CARGO_PKG_VERSION"), "description": self.description },
            "paths": paths,
            "components": {
                "schemas": self.generator.definitions(),
                "securitySchemes": {
                    "bearer": { "type": "http", "scheme": "bearer",
                                "description": "An operator's, a tenant admin's or a device's token" },
                    "mutualTLS": { "type": "mutualTLS",
                                   "description": "A site's or the control service's certificate from the provider CA" },
                },
            },
        })
    }
}

/// The JSON of a body's content map.
fn content(body: &Body) -> Value {
    match body {
        Body::Json(schema) => json!({ "application/json": { "schema": schema } }),
        Body::Other { media } => json!({ *media: {} }),
    }
}

/// The `{name}` parameters of `path`, in order.
pub fn path_parameters(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|part| part.strip_prefix('{')?.strip_suffix('}')).collect()
}

/// The first segment after the version (`/v1/users/...` → `users`), or the path itself.
fn tag(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next(), parts.next()) {
        (Some("v1"), Some(next)) => next.to_owned(),
        (Some(first), _) if !first.is_empty() => first.to_owned(),
        _ => "root".to_owned(),
    }
}

/// `get_v1_users_user_devices`: unique per method and path.
fn operation_id(method: &Method, path: &str) -> String {
    let words: Vec<String> = path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    format!("{}_{}", method.as_str().to_ascii_lowercase(), words.join("_"))
}

/// A router whose routes are described as they are added.
pub struct ApiRouter<S> {
    router: Router<S>,
    doc: ApiDoc,
}

impl<S: Clone + Send + Sync + 'static> ApiRouter<S> {
    /// An empty API called `title`, `description` its first paragraph.
    pub fn new(title: &'static str, description: &'static str) -> ApiRouter<S> {
        let mut settings = SchemaSettings::draft2020_12();
        settings.definitions_path = "/components/schemas".into();
        settings.meta_schema = None;
        ApiRouter {
            router: Router::new(),
            doc: ApiDoc { title, description, operations: Vec::new(), generator: settings.into_generator() },
        }
    }

    /// Serves `service` at `path` and describes it with `ops`, one per method `service` serves.
    #[allow(clippy::disallowed_methods)]
    pub fn route(mut self, path: &str, service: MethodRouter<S>, ops: impl IntoIterator<Item = Op>) -> Self {
        for op in ops {
            let op = op.resolve(&mut self.doc.generator);
            self.doc.operations.push(Operation {
                path: path.to_owned(),
                method: op.method.clone(),
                access: op.access,
                op,
            });
        }
        self.router = self.router.route(path, service);
        self
    }

    /// Changes the router underneath (a layer, a fallback) without adding routes.
    pub fn map(mut self, f: impl FnOnce(Router<S>) -> Router<S>) -> Self {
        self.router = f(self.router);
        self
    }

    /// Adds `GET /openapi.json` (anyone) serving the document, and returns the router and the document.
    pub fn finish(self) -> (Router<S>, ApiDoc) {
        let ApiRouter { router, doc } = self;
        let op = Op::get("Describes this service's HTTP API as OpenAPI 3.1 (this document)").answers(
            200,
            Some("application/json"),
            "the document",
        );
        let mut doc = doc;
        let op = op.resolve(&mut doc.generator);
        doc.operations.push(Operation { path: DOCUMENT_PATH.to_owned(), method: Method::GET, access: ANYONE, op });
        let document: Arc<[u8]> = serde_json::to_vec_pretty(&doc.to_json()).unwrap_or_default().into();
        #[allow(clippy::disallowed_methods)]
        let router = router.route(
            DOCUMENT_PATH,
            axum::routing::get(move || {
                let document = document.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], document.to_vec()).into_response() }
            }),
        );
        (router, doc)
    }
}

/// A concrete path for `template` (each `{name}` replaced by `value`), to call an operation in a test.
pub fn concrete(template: &str, value: &str) -> String {
    template
        .split('/')
        .map(|part| if part.starts_with('{') && part.ends_with('}') { value } else { part })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests;
