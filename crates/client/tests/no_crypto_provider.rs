//! Without a process-wide rustls crypto provider the client refuses to build instead of panicking.
//! (Its own test binary: installing a provider is process-global and irreversible.)

use turnpike_client::{ClientError, TurnpikeClient};

#[test]
fn client_without_a_crypto_provider_is_a_config_error_not_a_panic() {
    let error = TurnpikeClient::new("http://127.0.0.1:8402", "tp_sk_test").unwrap_err();
    let ClientError::Config(message) = &error else {
        panic!("expected a Config error, got {error:?}");
    };
    assert!(message.contains("install_default"), "{message}");
}
