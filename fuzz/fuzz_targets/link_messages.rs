//! The agent link's messages (`control::link`): what the lender reads from
//! an agent and what the agent reads from the lender, one JSON object per
//! WebSocket text message.
//!
//! Checks: no panic on any message; a message that parses serializes to
//! JSON that parses back to the same message.
#![no_main]

use control::link::{AgentMessage, LenderMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = serde_json::from_slice::<AgentMessage>(data) {
        let text = control::to_json(&message);
        match serde_json::from_str::<AgentMessage>(&text) {
            Ok(back) => assert_eq!(back, message, "changed through {text}"),
            Err(err) => panic!("{text} does not parse back: {err}"),
        }
    }
    if let Ok(message) = serde_json::from_slice::<LenderMessage>(data) {
        let text = control::to_json(&message);
        match serde_json::from_str::<LenderMessage>(&text) {
            Ok(back) => assert_eq!(back, message, "changed through {text}"),
            Err(err) => panic!("{text} does not parse back: {err}"),
        }
    }
});
