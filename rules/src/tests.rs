//! The rules against messages made here: compile-time refusals with their
//! field and position, filters, transforms and run-time failures.

use serde_json::json;

use super::*;

fn message<'a>(payload: &'a [u8], headers: &'a [(String, serde_json::Value)]) -> Message<'a> {
    Message {
        payload,
        headers,
        routing_key: "orders.created",
        exchange: "orders",
        message_id: "m-1",
        content_type: Some("application/json"),
    }
}

fn compile(filter: Option<&str>, transform: Option<&str>) -> Result<ConsumerRules, RuleError> {
    ConsumerRules::compile(filter, transform, false)
}

#[test]
fn a_filter_lets_through_what_it_matches() {
    let rules = compile(Some(r#"body.type == "order.created""#), None).unwrap();
    let yes = message(br#"{"type":"order.created"}"#, &[]);
    let no = message(br#"{"type":"order.paid"}"#, &[]);
    assert_eq!(rules.apply(&yes), Ok(Verdict::Send(None)));
    assert_eq!(rules.apply(&no), Ok(Verdict::Filtered));
}

#[test]
fn a_filter_reads_headers_and_properties() {
    let headers = [("x-tenant".to_owned(), json!("acme"))];
    let rules = compile(
        Some(r#"headers["x-tenant"] == "acme" && routingKey.startsWith("orders.") && exchange == "orders" && messageId == "m-1" && contentType == "application/json""#),
        None,
    )
    .unwrap();
    assert_eq!(
        rules.apply(&message(b"not json", &headers)),
        Ok(Verdict::Send(None))
    );
}

#[test]
fn a_body_that_is_not_json_is_null() {
    let rules = compile(Some("body == null"), None).unwrap();
    assert_eq!(
        rules.apply(&message(b"plain text", &[])),
        Ok(Verdict::Send(None))
    );
}

#[test]
fn a_transform_reshapes_body_and_headers() {
    let headers = [("x-tenant".to_owned(), json!("acme"))];
    let rules = compile(
        None,
        Some(r#"{"body": {"id": body.orderId, "total": body.amount * 2}, "headers": {"x-tenant": headers["x-tenant"]}}"#),
    )
    .unwrap();
    let verdict = rules
        .apply(&message(br#"{"orderId":"o-1","amount":21}"#, &headers))
        .unwrap();
    assert_eq!(
        verdict,
        Verdict::Send(Some(Transformed {
            body: Some(json!({"id": "o-1", "total": 42})),
            headers: vec![("x-tenant".into(), "acme".into())],
        }))
    );
}

#[test]
fn macros_bind_their_own_variables() {
    let rules = compile(Some("body.items.exists(i, i.sku == 'a')"), None).unwrap();
    let m = message(br#"{"items":[{"sku":"b"},{"sku":"a"}]}"#, &[]);
    assert_eq!(rules.apply(&m), Ok(Verdict::Send(None)));
}

#[test]
fn a_rule_that_does_not_parse_is_refused_with_its_position() {
    let err = compile(Some("body.type == "), None).unwrap_err();
    assert_eq!(err.field, RuleField::Filter);
    assert!(err.position.is_some(), "{err:?}");
    assert!(err.describe().starts_with("line 1, column "), "{err}");
}

#[test]
fn an_unknown_variable_is_refused_where_it_is() {
    let err = compile(Some("body.a == 1 &&\n  payload.b == 2"), None).unwrap_err();
    assert_eq!(err.field, RuleField::Filter);
    assert_eq!(err.position, Some(error::Position { line: 2, column: 3 }));
    assert!(err.problem.contains("`payload`"), "{err}");
    let err = compile(None, Some("{'body': x}")).unwrap_err();
    assert_eq!(err.field, RuleField::Transform);
}

#[test]
fn a_rule_over_4_kib_is_refused() {
    let long = format!("body.a == '{}'", "x".repeat(MAX_RULE_BYTES));
    let err = compile(Some(&long), None).unwrap_err();
    assert_eq!(err.field, RuleField::Filter);
    assert!(err.problem.contains("4096"), "{err}");
}

#[test]
fn literal_reserved_headers_are_refused_when_compiled() {
    for name in [
        "webhook-signature",
        "X-WorkerRMQ-Attempt",
        "host",
        "Content-Length",
        "traceparent",
    ] {
        let source = format!(r#"{{"headers": {{"{name}": "x"}}}}"#);
        let err = compile(None, Some(&source)).unwrap_err();
        assert_eq!(err.field, RuleField::Transform, "{name}");
        assert!(err.problem.contains("reserved"), "{name}: {err}");
    }
    let auth = r#"{"headers": {"authorization": "Bearer x"}}"#;
    assert!(compile(None, Some(auth)).is_ok());
    let err = ConsumerRules::compile(None, Some(auth), true).unwrap_err();
    assert!(err.problem.contains("reserved"), "{err}");
}

#[test]
fn reserved_headers_made_at_run_time_fail_then() {
    let rules = compile(None, Some(r#"{"headers": {body.name: "x"}}"#)).unwrap();
    let err = rules
        .apply(&message(br#"{"name":"webhook-id"}"#, &[]))
        .unwrap_err();
    assert_eq!(err.field, RuleField::Transform);
    assert!(err.problem.contains("reserved"), "{err}");
}

#[test]
fn run_time_type_errors_are_errors_not_verdicts() {
    let rules = compile(Some("body.amount > 'ten'"), None).unwrap();
    let err = rules.apply(&message(br#"{"amount":5}"#, &[])).unwrap_err();
    assert_eq!(err.field, RuleField::Filter);
    let missing = compile(Some("body.nothing == 1"), None).unwrap();
    assert!(missing.apply(&message(b"{}", &[])).is_err());
    let not_bool = compile(Some("body"), None).unwrap();
    assert!(not_bool.apply(&message(b"{}", &[])).is_err());
}

#[test]
fn a_transform_yields_only_body_and_headers() {
    let err = compile(None, Some("{'payload': body}")).unwrap_err();
    assert!(err.problem.contains("`payload`"), "{err}");
    assert!(compile(None, Some("42")).is_err());
    let rules = compile(None, Some("body")).unwrap();
    assert!(rules.apply(&message(br#"{"other":1}"#, &[])).is_err());
    let rules = compile(None, Some("{'headers': {'x-n': 1}}")).unwrap();
    assert!(
        rules.apply(&message(b"{}", &[])).is_err(),
        "a number is no header value"
    );
}

#[test]
fn transforms_without_a_body_keep_the_message_body() {
    let rules = compile(None, Some("{'headers': {'x-kind': routingKey}}")).unwrap();
    assert_eq!(
        rules.apply(&message(b"raw", &[])),
        Ok(Verdict::Send(Some(Transformed {
            body: None,
            headers: vec![("x-kind".into(), "orders.created".into())],
        })))
    );
}
