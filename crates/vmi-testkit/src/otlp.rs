//! Reading exported traces back: the spans of OTLP JSON export requests (a trace file's lines, or what an OTLP
//! receiver was sent), and the questions tests ask of them.

/// One exported span, as a test reads it.
#[derive(Debug, Clone)]
pub struct SpanSeen {
    /// Its resource's `service.name`.
    pub service: String,
    /// Its resource's `service.instance.id`, if any.
    pub instance: Option<String>,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// The parent's span id; empty for a root.
    pub parent: String,
    /// The span's name.
    pub name: String,
    /// Its attributes, key → OTLP JSON value (`{"stringValue": …}`, `{"intValue": "…"}`).
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

impl SpanSeen {
    /// A string attribute's value.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.attributes.get(key)?.get("stringValue")?.as_str()
    }

    /// An integer attribute's value (OTLP JSON writes 64-bit integers as strings).
    pub fn int(&self, key: &str) -> Option<i64> {
        let value = self.attributes.get(key)?.get("intValue")?;
        value.as_str().and_then(|v| v.parse().ok()).or_else(|| value.as_i64())
    }
}

/// The spans of OTLP JSON `ExportTraceServiceRequest`s.
pub fn spans_of(requests: &[serde_json::Value]) -> Vec<SpanSeen> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let mut seen = Vec::new();
    for request in requests {
        for resource_spans in request["resourceSpans"].as_array().into_iter().flatten() {
            let resource = &resource_spans["resource"]["attributes"];
            let attribute = |key: &str| {
                let found = resource.as_array().into_iter().flatten().find(|a| a["key"] == key);
                found.map(|a| text(&a["value"]["stringValue"]))
            };
            for scope in resource_spans["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    let attributes = span["attributes"].as_array().into_iter().flatten();
                    seen.push(SpanSeen {
                        service: attribute("service.name").unwrap_or_default(),
                        instance: attribute("service.instance.id"),
                        trace_id: text(&span["traceId"]),
                        span_id: text(&span["spanId"]),
                        parent: text(&span["parentSpanId"]),
                        name: text(&span["name"]),
                        attributes: attributes.map(|a| (text(&a["key"]), a["value"].clone())).collect(),
                    });
                }
            }
        }
    }
    seen
}

/// The spans of a trace file (one OTLP JSON request a line); a line cut short by a writer still at work is
/// left for the next read.
pub fn read_file(path: &std::path::Path) -> Vec<SpanSeen> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let requests: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    spans_of(&requests)
}

/// Whether `ancestor` is `span`'s parent, or its parent's, and so on (spans of one trace, from any process).
pub fn descends(spans: &[SpanSeen], span: &SpanSeen, ancestor: &SpanSeen) -> bool {
    let mut at = span;
    for _ in 0..spans.len() {
        if at.parent.is_empty() {
            return false;
        }
        if at.parent == ancestor.span_id && at.trace_id == ancestor.trace_id {
            return true;
        }
        match spans.iter().find(|s| s.span_id == at.parent && s.trace_id == at.trace_id) {
            Some(parent) => at = parent,
            None => return false,
        }
    }
    false
}
