use super::*;

#[tokio::test]
async fn frames_round_trip_and_a_frame_over_the_limit_is_refused() {
    let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
    write_frame(&mut a, 7, b"payload").await.unwrap();
    write_frame(&mut a, 1, &[0; 100]).await.unwrap();
    assert_eq!(
        read_frame(&mut b, 10).await.unwrap(),
        Some((7, b"payload".to_vec()))
    );
    let err = read_frame(&mut b, 10).await.unwrap_err();
    assert!(err.to_string().contains("100 bytes, more than 10"), "{err}");
    let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
    drop(a);
    assert_eq!(read_frame(&mut b, 10).await.unwrap(), None, "closed");
}

#[test]
fn requests_and_replies_round_trip() {
    for annotation in [None, Some("registry.example/app:1")] {
        let request = encode_request("ctr-1", annotation);
        assert_eq!(
            decode_request(&request).unwrap(),
            ("ctr-1".to_string(), annotation.map(str::to_string))
        );
    }
    let layer = WasmLayer {
        image: "img".into(),
        digest: "sha256:ab".into(),
        bytes: b"\0asm\0\x01".to_vec(),
    };
    let (kind, payload) = encode_reply(Ok(Some(layer)));
    let back = decode_reply(kind, payload).unwrap().unwrap();
    assert_eq!(
        (back.image.as_str(), back.digest.as_str(), &back.bytes[..]),
        ("img", "sha256:ab", &b"\0asm\0\x01"[..])
    );
    let (kind, payload) = encode_reply(Ok(None));
    assert!(decode_reply(kind, payload).unwrap().is_none());
    let (kind, payload) = encode_reply(Err(ShimError::InvalidArgument("bad image".into())));
    assert!(
        matches!(decode_reply(kind, payload), Err(ShimError::InvalidArgument(m)) if m == "bad image")
    );
    let (kind, payload) = encode_reply(Err(ShimError::NotFound("gone".into())));
    assert!(matches!(decode_reply(kind, payload), Err(ShimError::Internal(m)) if m == "gone"));
}

#[test]
fn the_image_policy_round_trips_and_bad_text_says_what_is_wrong() {
    let policy = ImagePolicy {
        any: true,
        max_bytes: 1234,
    };
    assert_eq!(policy.to_string().parse::<ImagePolicy>().unwrap(), policy);
    assert!("own 5".parse::<ImagePolicy>().is_ok_and(|p| !p.any));
    assert!(
        "some 5"
            .parse::<ImagePolicy>()
            .unwrap_err()
            .contains("\"some\"")
    );
    assert!(
        "own"
            .parse::<ImagePolicy>()
            .unwrap_err()
            .contains("own|any")
    );
}

#[tokio::test]
async fn with_no_broker_a_request_fails_naming_the_broker() {
    let Err(err) = Content::none().wasm_layer("c", None).await else {
        panic!("a layer with no broker");
    };
    assert!(err.to_string().contains("broker"), "{err}");
}
