//! Property tests for the two inputs that come straight off the network before
//! any authentication: the discovery headers and the JNLP file. Whatever the
//! bytes, they must yield `Ok` or `Err`, never a panic; and what a controller
//! legitimately encodes must come back out unchanged.

#![allow(clippy::unwrap_used)]

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use proptest::prelude::*;
use remoting_protocol::discovery::{self, endpoint_from_response, DiscoveryError};
use remoting_protocol::jnlp::{self, decrypt_jnlp, encrypt_jnlp, parse_encrypted_jnlp, parse_jnlp};

/// A real RSA SubjectPublicKeyInfo (the same key as the unit tests use).
const IDENTITY: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtLD7SJEA90heSHDuTR2c7kk6p+PfBeBdWIWq5rB4N00ZPcd1Kn5UZCO3LoJy2DWvrd5iFdDBKPzAdC0aHTcXGb3nzNf5ichNmpKpaEonX+lSZlaz/kENQ8BqLnf6NB5KO6HJ23nTyyikl+oaABnrCumtogYFVVdADeSmdnc/6DjU7DQahj23KBMDObN7AVHIY2pvo9+gkIh/qyVbjMw5+JGYsz2vNFsQRSvDLxdPFbYg3Zh5j7YzFX+UZJkIPlVrtENRWauptH4CutQm3dYt+iNtDgUg803lRRHsNyD+KEUvFKe4CDQpH0bxIpgeFa/sYWAdGygrl9nJIgc9j0ykJQIDAQAB";

const DISCOVERY_HEADERS: [&str; 8] = [
    discovery::HEADER_JNLP_PORT,
    discovery::HEADER_LEGACY_JNLP_PORT,
    discovery::HEADER_JNLP_HOST,
    discovery::HEADER_AGENT_PROTOCOLS,
    discovery::HEADER_INSTANCE_IDENTITY,
    discovery::HEADER_MINIMUM_REMOTING_VERSION,
    discovery::HEADER_JENKINS,
    "Content-Type",
];

/// How one character of an argument is written into the XML.
#[derive(Debug, Clone, Copy)]
enum Spelling {
    Plain,
    Decimal,
    Hex,
}

fn spelling() -> impl Strategy<Value = Spelling> {
    prop_oneof![
        6 => Just(Spelling::Plain),
        1 => Just(Spelling::Decimal),
        1 => Just(Spelling::Hex),
    ]
}

/// Any character XML text can carry. NUL cannot be written at all (`&#0;` is
/// refused), so it is left out.
fn xml_char() -> impl Strategy<Value = char> {
    any::<char>().prop_filter("NUL cannot appear in XML", |c| *c != '\0')
}

/// Escapes as a serializer would, and spells some characters as numeric
/// references. `\r` is always a reference: a raw one is a line end, which XML
/// normalises to `\n`.
fn escape(text: &[(char, Spelling)]) -> String {
    let mut out = String::new();
    for &(c, how) in text {
        match (c, how) {
            (_, Spelling::Decimal) => out.push_str(&format!("&#{};", u32::from(c))),
            (_, Spelling::Hex) | ('\r', _) => out.push_str(&format!("&#x{:X};", u32::from(c))),
            ('<', _) => out.push_str("&lt;"),
            ('>', _) => out.push_str("&gt;"),
            ('&', _) => out.push_str("&amp;"),
            (c, _) => out.push(c),
        }
    }
    out
}

fn argument() -> impl Strategy<Value = Vec<(char, Spelling)>> {
    prop::collection::vec((xml_char(), spelling()), 0..24)
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Anything at all (invalid header bytes are skipped when inserting).
        prop::collection::vec(any::<u8>(), 0..48),
        // Plausible values.
        "-?[0-9]{0,7}".prop_map(String::into_bytes),
        "[A-Za-z0-9+/=]{0,64}".prop_map(String::into_bytes),
        "( ?[A-Za-z0-9-]{0,12} ?,?){0,4}".prop_map(String::into_bytes),
        Just(IDENTITY.as_bytes().to_vec()),
    ]
}

proptest! {
    #[test]
    fn parse_jnlp_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_jnlp(&bytes);
    }

    #[test]
    fn parse_jnlp_never_panics_on_wrapped_text(
        prefix in "\\PC{0,16}",
        inner in any::<String>(),
        markup in "[<>&;#!?/=\"'a-z\\[\\] -]{0,32}",
    ) {
        for xml in [
            format!("<jnlp><application-desc><argument>{inner}</argument><argument>n</argument></application-desc></jnlp>"),
            format!("<jnlp><application-desc>{markup}<argument>{inner}</argument>{markup}</application-desc></jnlp>"),
            format!("{prefix}<jnlp {markup}><application-desc><argument>{inner}{markup}</argument></application-desc></jnlp>"),
            format!("<?xml version=\"1.0\"?>{markup}<jnlp>{inner}</jnlp>"),
        ] {
            let _ = parse_jnlp(xml.as_bytes());
        }
    }

    #[test]
    fn argument_texts_survive_escape_then_parse(
        arguments in prop::collection::vec(argument(), 2..8),
    ) {
        let body: String = arguments
            .iter()
            .map(|a| format!("<argument>{}</argument>", escape(a)))
            .collect();
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<jnlp spec=\"1.0+\"><application-desc>{body}</application-desc></jnlp>"
        );
        let want: Vec<String> = arguments
            .iter()
            .map(|a| a.iter().map(|&(c, _)| c).collect())
            .collect();
        let parsed = parse_jnlp(xml.as_bytes()).unwrap();
        prop_assert_eq!(&parsed.secret, &want[0]);
        prop_assert_eq!(&parsed.name, &want[1]);
        prop_assert_eq!(&parsed.options[..], &want[2..]);
    }

    #[test]
    fn decrypt_inverts_encrypt(
        key in "[0-9a-fA-F]{32}",
        rest in "[0-9a-f]{0,32}",
        iv in any::<[u8; 16]>(),
        plain in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        let secret = format!("{key}{rest}");
        let body = encrypt_jnlp(&secret, iv, &plain).unwrap();
        prop_assert_eq!(body.len(), jnlp::IV_LEN + plain.len());
        prop_assert_eq!(decrypt_jnlp(&secret, &body).unwrap(), plain);
    }

    #[test]
    fn decryption_never_panics(
        secret in any::<String>(),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let _ = decrypt_jnlp(&secret, &body);
        let _ = parse_encrypted_jnlp(&secret, &body);
    }

    #[test]
    fn endpoint_from_response_never_panics(
        status in 100u16..1000,
        headers in prop::collection::vec(
            (prop::sample::select(&DISCOVERY_HEADERS[..]), header_value()),
            0..8,
        ),
        url in prop_oneof![
            Just("http://ci.example:8080/".to_owned()),
            Just("https://[::1]/jenkins".to_owned()),
            any::<String>(),
        ],
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
            }
        }
        let status = StatusCode::from_u16(status).unwrap();
        let _ = endpoint_from_response(&url, status, &map);
    }

    #[test]
    fn port_is_accepted_exactly_when_in_range(port in -100_000i64..100_000) {
        let mut map = HeaderMap::new();
        map.insert(discovery::HEADER_JNLP_PORT, HeaderValue::from_str(&port.to_string()).unwrap());
        map.insert(discovery::HEADER_INSTANCE_IDENTITY, HeaderValue::from_static(IDENTITY));
        let result = endpoint_from_response("http://ci/", StatusCode::OK, &map);
        if (1..=65535).contains(&port) {
            prop_assert_eq!(i64::from(result.unwrap().port), port);
        } else {
            let is_invalid_port = matches!(result, Err(DiscoveryError::InvalidPort { .. }));
            prop_assert!(is_invalid_port);
        }
    }
}
