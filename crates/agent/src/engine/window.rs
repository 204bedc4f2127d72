//! The engine's send window per stream, sized from the round trip to the
//! controller.
//!
//! remoting lets a stream have at most `hudson.remoting.Channel.pipeWindowSize`
//! unacknowledged bytes in flight, read once by the *sending* JVM (1 MiB by
//! default), so a stream moves at most a window per round trip. A larger
//! window pays on a long link (at 20 ms, 1 MiB caps a stream at about
//! 52 MB/s, 4 MiB at 210 MB/s) and costs on a short one: an answer the
//! engine sends waits behind the stream that fills it, a window deep
//! (docs/performance.md, "The engine's window, sized from the round trip").
//! So the window is the smallest that lets a stream reach [`STREAM_RATE`]
//! over the measured round trip, between [`SMALLEST`] and [`LARGEST`];
//! unmeasured, [`LARGEST`].
//!
//! The measured round trip is the network's; the loop a window has to
//! cover also runs through both JVMs (the controller reading a chunk and
//! sending its ack, the engine taking the ack in) and, on a busy build
//! machine, waits for a core at every hop. Against a real `remoting.jar`
//! on loopback that loop is long enough for remoting's 1 MiB to cap a
//! stream toward the controller at agent.jar's rate, so no window is
//! smaller than [`SMALLEST`] (docs/performance.md, "The engine's window").

use std::time::Duration;

/// remoting's system property for the window.
pub const PROPERTY: &str = "hudson.remoting.Channel.pipeWindowSize";
/// remoting's default window, agent.jar's.
pub const REMOTING_DEFAULT: u32 = 1 << 20;
/// The smallest window chosen: twice remoting's, what a stream toward the
/// controller needs to outrun agent.jar when the acks come back through
/// busy JVMs, without the 4 MiB queue's cost to an answer's latency on a
/// short link.
pub const SMALLEST: u32 = 2 << 20;
/// The largest window chosen: what the receiving controller may have to
/// hold per stream, and enough for 210 MB/s at 20 ms.
pub const LARGEST: u32 = 4 << 20;
/// The rate, bytes per second, a stream should be able to reach: about
/// what the agent moves toward the controller on this project's test rig.
const STREAM_RATE: f64 = 250e6;

/// The window for a round trip of `rtt` (`None`: not measured): the
/// smallest power of two from [`SMALLEST`] up to [`LARGEST`] that covers
/// `rtt` × [`STREAM_RATE`].
pub fn for_round_trip(rtt: Option<Duration>) -> u32 {
    let Some(rtt) = rtt else {
        return LARGEST;
    };
    let needed = rtt.as_secs_f64() * STREAM_RATE;
    let mut window = SMALLEST;
    while f64::from(window) < needed && window < LARGEST {
        window *= 2;
    }
    window
}

/// The JVM option that sets `window`, or none for remoting's default (the
/// engine then starts as agent.jar would).
pub fn java_option(window: u32) -> Option<String> {
    (window != REMOTING_DEFAULT).then(|| format!("-D{PROPERTY}={window}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: f64) -> Option<Duration> {
        Some(Duration::from_secs_f64(ms / 1000.0))
    }

    #[test]
    fn short_links_get_twice_remoting_s_window() {
        for rtt in [0.0, 0.05, 1.0, 4.0, 8.0] {
            assert_eq!(for_round_trip(ms(rtt)), 2 << 20, "{rtt} ms");
        }
        assert_eq!(
            java_option(for_round_trip(ms(0.1))).as_deref(),
            Some("-Dhudson.remoting.Channel.pipeWindowSize=2097152")
        );
    }

    #[test]
    fn longer_links_get_the_window_their_round_trip_needs() {
        assert_eq!(for_round_trip(ms(9.0)), 4 << 20);
        assert_eq!(for_round_trip(ms(20.0)), 4 << 20);
        assert_eq!(for_round_trip(ms(300.0)), LARGEST);
        assert_eq!(
            java_option(for_round_trip(ms(20.0))).as_deref(),
            Some("-Dhudson.remoting.Channel.pipeWindowSize=4194304")
        );
    }

    #[test]
    fn remoting_s_own_window_needs_no_option() {
        assert_eq!(java_option(REMOTING_DEFAULT), None);
    }

    #[test]
    fn unmeasured_is_the_largest() {
        assert_eq!(for_round_trip(None), LARGEST);
    }
}
