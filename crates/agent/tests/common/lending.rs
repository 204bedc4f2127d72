//! The two controllers of the lending tests: home (the lender) with node
//! `mac-01`, and a borrower with node `guest-mac`, serving engine jars of
//! different versions.

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
