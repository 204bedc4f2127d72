//! The lender's HTTP API bodies (`lender::api`), as the server and the
//! client read them with serde_json.
//!
//! Checks: no panic on any body; a body that parses serializes to JSON that
//! parses back to the same value (what the client sends is what the server
//! reads); a lease request's requirements, when they parse, print in a
//! canonical form that parses back to the same expression.
#![no_main]

use lender::api::{AgentView, ErrorBody, LeaseBody, LeaseView};
use control::labels::Expr;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T>(data: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let value: T = serde_json::from_slice(data).ok()?;
    let text = match serde_json::to_string(&value) {
        Ok(text) => text,
        Err(err) => panic!("{value:?} does not serialize: {err}"),
    };
    match serde_json::from_str::<T>(&text) {
        Ok(back) => assert_eq!(back, value, "changed through {text}"),
        Err(err) => panic!("{text} does not parse back: {err}"),
    }
    Some(value)
}

fuzz_target!(|data: &[u8]| {
    if let Some(body) = round_trip::<LeaseBody>(data) {
        let _ = format!("{:?}", body.borrower);
        if let Ok(expr) = Expr::parse(&body.requirements) {
            let canonical = expr.to_string();
            assert_eq!(Expr::parse(&canonical).as_ref(), Ok(&expr), "{canonical}");
        }
    }
    round_trip::<LeaseView>(data);
    round_trip::<Vec<LeaseView>>(data);
    round_trip::<AgentView>(data);
    round_trip::<ErrorBody>(data);
});
