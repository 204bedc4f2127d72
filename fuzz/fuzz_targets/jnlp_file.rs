//! JNLP files (`remoting_protocol::jnlp`), plain and encrypted.
//!
//! Checks: no panic on any file; the options of a parsed file can always be
//! interpreted or refused; decrypting what was encrypted gives it back; no
//! error from the encrypted form ever quotes the secret.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remoting_protocol::jnlp::{
    decrypt_jnlp, encrypt_jnlp, parse_encrypted_jnlp, parse_jnlp, IV_LEN,
};

/// A node secret as Jenkins makes them: 64 hex digits.
const SECRET: &str = "5c7f21e0a9d84b3e86f1c2d4b7a90e13f6a2c8d4e0b1f3a5c7e9d1b3f5a7c9e1";

fuzz_target!(|data: &[u8]| {
    if let Ok(arguments) = parse_jnlp(data) {
        if let Ok(options) = arguments.agent_options() {
            // Every option lands somewhere: no argument is silently lost.
            let known = usize::from(options.web_socket)
                + usize::from(options.fail_if_work_dir_is_missing)
                + 2 * usize::from(options.tunnel.is_some())
                + 2 * options.urls.len()
                + options.unknown.len();
            assert!(known <= arguments.options.len());
        }
    }

    // The same bytes as an encrypted body: noise must be refused cleanly, and
    // the secret (the key) must never reach a message.
    if let Err(err) = parse_encrypted_jnlp(SECRET, data) {
        let message = format!("{err} {err:?}");
        assert!(!message.contains(SECRET), "the secret leaked: {message}");
        assert!(
            !message.contains(&SECRET[..32]),
            "the key leaked: {message}"
        );
    }

    // decrypt(encrypt(x)) == x for any plain text and IV.
    let iv: [u8; IV_LEN] = std::array::from_fn(|i| data.get(i).copied().unwrap_or(0));
    let Ok(sealed) = encrypt_jnlp(SECRET, iv, data) else {
        panic!("a 64-hex-digit secret must always encrypt");
    };
    assert_eq!(sealed.len(), IV_LEN + data.len());
    match decrypt_jnlp(SECRET, &sealed) {
        Ok(plain) => assert_eq!(plain, data),
        Err(err) => panic!("decrypting what was encrypted failed: {err}"),
    }
});
