//! The two controllers of the lending tests: home (the lender) with node
//! `mac-01`, and a borrower with node `guest-mac`, serving engine jars of
//! different versions.

use std::time::Duration;

use testkit::{Peer, TestController};

/// `mac-01`'s secret at home.
pub const HOME_SECRET: &str = "1e1d1e1d1e1d1e1d1e1d1e1d1e1d1e1d";
/// `guest-mac`'s secret at the borrower.
pub const BORROWER_SECRET: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";

/// Home, with `mac-01`.
pub async fn home(peer: Peer) -> TestController {
    TestController::builder()
        .node("mac-01", HOME_SECRET)
        .remoting_jar(testkit::fake_remoting_jar("3301.v4363ddcca_4e7"))
        .peer(peer)
        .start()
        .await
}

/// A borrower, with `guest-mac`.
pub async fn borrower(peer: Peer) -> TestController {
    TestController::builder()
        .node("guest-mac", BORROWER_SECRET)
        .remoting_jar(testkit::fake_remoting_jar("3355.v388858a_47b_33"))
        .peer(peer)
        .start()
        .await
}

/// `borrow` of `url`'s node `name`, its secret given inline, leaving at
/// once; `wait`: answer once moved.
pub fn borrow_now(
    url: String,
    name: &str,
    secret: &str,
    wait: Option<Duration>,
) -> control::Request {
    control::Request::Borrow(control::BorrowRequest {
        target: control::Target::Url { url },
        name: name.into(),
        secret: Some(secret.into()),
        secret_file: None,
        lease: None,
        idle_return: None,
        when: control::When::Now,
        wait,
        transport: None,
    })
}
