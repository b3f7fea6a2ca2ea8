//! `WWW-Authenticate` parsing: `parse_challenges`, `parse_challenges_from_lines`,
//! `Challenge::parse` and the auth-param layer under them.
//!
//! Invariants: an accepted challenge that formats (no control characters) re-parses equal, and
//! its formatted form holds no control byte.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use turnpike_protocol::limits::CHALLENGES_MAX;
use turnpike_protocol::{
    Challenge, ChargeRequest, auth_params, parse_challenges, parse_challenges_from_lines,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let ring = common::keyring();

    if let Ok(challenges) = parse_challenges(&text) {
        assert!(!challenges.is_empty() && challenges.len() <= CHALLENGES_MAX);
        for challenge in &challenges {
            let _ = ring.verify(&challenge.binding_input(), &challenge.id);
            let _ = challenge.expires_at();
            let _ = ChargeRequest::from_json(challenge.request_json());
            match challenge.to_header_value() {
                Ok(header) => {
                    common::assert_no_control_bytes(&header);
                    let again = Challenge::parse(&header).expect("a formatted challenge parses");
                    assert_eq!(&again, challenge);
                }
                Err(_) => {
                    // Only values the formatter must refuse (control characters) stop it.
                    let c = challenge;
                    assert!(
                        [
                            Some(c.id.as_str()),
                            Some(c.realm.as_str()),
                            Some(c.request.wire())
                        ]
                        .into_iter()
                        .chain(
                            [&c.expires, &c.digest, &c.description, &c.opaque, &c.header]
                                .map(Option::as_deref)
                        )
                        .flatten()
                        .any(common::has_control_byte),
                        "a parsed challenge without control characters failed to format: {c:?}"
                    );
                }
            }
        }
    }
    let _ = Challenge::parse(&text);
    let _ = parse_challenges_from_lines(text.split(['\r', '\n']));

    for scheme in auth_params::group_schemes(&text) {
        assert!(!scheme.scheme.is_empty());
        for element in scheme.elements {
            if let Ok((name, _)) = auth_params::parse_param(element) {
                assert!(!name.is_empty() && name.bytes().all(auth_params::is_tchar));
            }
        }
    }
});
