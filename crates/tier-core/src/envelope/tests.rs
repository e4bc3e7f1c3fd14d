//! Tests of the envelope: round trips, old envelopes, truncation, unknown ids and items.

use super::*;

fn meta() -> Meta {
    Meta {
        created_at: 1,
        fresh_until: 1000,
        stale_until: 2000,
        load_cost_us: 7,
        negative: false,
        insert: false,
        tombstone: false,
        tags: Some(Arc::from(vec![TagStamp { tag: Arc::from("user:1"), generation: 3 }])),
        validator: None,
        sealing: None,
    }
}

#[test]
fn insert_and_tombstone_flags_roundtrip() {
    for (insert, tombstone) in [(true, false), (false, true), (true, true)] {
        let m = Meta { insert, tombstone, ..meta() };
        let bytes = Codec::default().encode(&m, Some(&"v".to_string())).expect("encode");
        let (back, _) = decode_meta(&bytes).expect("meta");
        assert_eq!((back.insert, back.tombstone), (insert, tombstone));
    }
}

#[test]
fn roundtrip_small_and_compressed() {
    let codec = Codec::default();
    for value in ["x".to_string(), "abc".repeat(2000)] {
        let bytes = codec.encode(&meta(), Some(&value)).expect("encode");
        let (m, at) = decode_meta(&bytes).expect("meta");
        assert_eq!(m, meta());
        let back: Option<String> = decode_value(&bytes, &m, at).expect("value");
        assert_eq!(back.as_deref(), Some(value.as_str()));
        if value.len() > 1024 {
            assert!(bytes.len() < value.len() / 10, "compressed to {}", bytes.len());
            assert_ne!(bytes[4] & FLAG_COMPRESSED, 0);
        }
    }
}

#[test]
fn incompressible_payload_is_stored_raw() {
    let codec = Codec { compress_threshold: 16, ..Codec::default() };
    let value: Vec<u64> = (0..300u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
    let bytes = codec.encode(&meta(), Some(&value)).expect("encode");
    assert_eq!(bytes[4] & FLAG_COMPRESSED, 0);
    let (m, at) = decode_meta(&bytes).expect("meta");
    assert_eq!(decode_value::<Vec<u64>>(&bytes, &m, at).expect("value"), Some(value));
}

#[test]
fn negative_entry_has_no_payload() {
    let m = Meta { negative: true, ..meta() };
    let bytes = Codec::default().encode::<String>(&m, None).expect("encode");
    let (back, at) = decode_meta(&bytes).expect("meta");
    assert!(back.negative);
    assert_eq!(decode_value::<String>(&bytes, &back, at).expect("value"), None);
}

#[test]
fn foreign_and_truncated_bytes_are_decode_errors() {
    let bytes = Codec::default().encode(&meta(), Some(&"hello".to_string())).expect("encode");
    for cut in 0..bytes.len() {
        let err = decode_meta(&bytes[..cut]).expect_err("truncated must fail");
        assert!(err.is_decode());
    }
    for foreign in
        [&b"{\"name\":\"json\"}"[..], b"", b"TIE9 and more bytes than a header needs......"]
    {
        assert!(decode_meta(foreign).expect_err("foreign").is_decode());
    }
    // A wrong payload type is a decode error too, not a panic.
    let (m, at) = decode_meta(&bytes).expect("meta");
    assert!(decode_value::<Vec<u64>>(&bytes, &m, at).expect_err("type").is_decode());
}

#[test]
fn with_times_rewrites_only_times() {
    let bytes = Codec::default().encode(&meta(), Some(&"v".to_string())).expect("encode");
    let moved = with_times(&bytes, 10, 20).expect("rewrite");
    let (m, at) = decode_meta(&moved).expect("meta");
    assert_eq!((m.fresh_until, m.stale_until), (10, 20));
    assert_eq!(decode_value::<String>(&moved, &m, at).expect("v").as_deref(), Some("v"));
    assert_eq!(&bytes[HEADER_LEN..], &moved[HEADER_LEN..]);
}

/// The meta of the envelopes below, written by the encoder before the format byte and the
/// extension block existed.
fn old_meta() -> Meta {
    Meta {
        created_at: 1_700_000_000_000,
        fresh_until: 1_700_000_060_000,
        stale_until: 1_700_000_600_000,
        load_cost_us: 1234,
        insert: true,
        tags: Some(Arc::from(vec![TagStamp { tag: Arc::from("team:7"), generation: 42 }])),
        ..Meta::default()
    }
}

/// Bytes of the encoder before the format byte (byte 5 reserved, 0): `("Ada", 36u32)` plain,
/// `"abc" × 20` lz4-compressed (threshold 16) and an untagged negative entry.
const OLD_PLAIN: &[u8] = &[
    84, 73, 69, 49, 4, 0, 1, 0, 0, 104, 229, 207, 139, 1, 0, 0, 96, 82, 230, 207, 139, 1, 0, 0,
    192, 143, 238, 207, 139, 1, 0, 0, 210, 4, 0, 0, 6, 0, 0, 0, 6, 0, 116, 101, 97, 109, 58, 55,
    42, 0, 0, 0, 0, 0, 0, 0, 146, 163, 65, 100, 97, 36,
];
const OLD_LZ4: &[u8] = &[
    84, 73, 69, 49, 5, 0, 1, 0, 0, 104, 229, 207, 139, 1, 0, 0, 96, 82, 230, 207, 139, 1, 0, 0,
    192, 143, 238, 207, 139, 1, 0, 0, 210, 4, 0, 0, 20, 0, 0, 0, 6, 0, 116, 101, 97, 109, 58, 55,
    42, 0, 0, 0, 0, 0, 0, 0, 62, 0, 0, 0, 95, 217, 60, 97, 98, 99, 3, 0, 32, 96, 97, 98, 99, 97,
    98, 99,
];
const OLD_NEGATIVE: &[u8] = &[
    84, 73, 69, 49, 6, 0, 0, 0, 0, 104, 229, 207, 139, 1, 0, 0, 96, 82, 230, 207, 139, 1, 0, 0,
    192, 143, 238, 207, 139, 1, 0, 0, 210, 4, 0, 0, 0, 0, 0, 0,
];

#[test]
fn envelopes_of_the_old_encoder_decode_unchanged_and_are_written_alike() {
    let (m, at) = decode_meta(OLD_PLAIN).expect("old plain");
    assert_eq!(m, old_meta());
    let v: Option<(String, u32)> = decode_value(OLD_PLAIN, &m, at).expect("old plain value");
    assert_eq!(v, Some(("Ada".to_string(), 36)));
    let p = payload_of(OLD_PLAIN, at).expect("payload");
    assert_eq!((p.serializer, p.compression), (Serializer::MessagePack, None));

    let (m, at) = decode_meta(OLD_LZ4).expect("old lz4");
    assert_eq!(m, old_meta());
    assert_eq!(payload_of(OLD_LZ4, at).expect("payload").compression, Some(Compression::Lz4));
    let v: Option<String> = decode_value(OLD_LZ4, &m, at).expect("old lz4 value");
    assert_eq!(v.as_deref(), Some("abc".repeat(20).as_str()));

    let negative = Meta { negative: true, tags: None, ..old_meta() };
    let (m, at) = decode_meta(OLD_NEGATIVE).expect("old negative");
    assert_eq!(m, negative);
    assert_eq!(decode_value::<String>(OLD_NEGATIVE, &m, at).expect("negative"), None);

    // Today's default encoder writes the same bytes for the same entries.
    let small = Codec::default();
    let lz4 = Codec { compress_threshold: 16, ..Codec::default() };
    assert_eq!(&small.encode(&old_meta(), Some(&("Ada", 36u32))).expect("plain")[..], OLD_PLAIN);
    assert_eq!(&lz4.encode(&old_meta(), Some(&"abc".repeat(20))).expect("lz4")[..], OLD_LZ4);
    assert_eq!(&small.encode::<()>(&negative, None).expect("negative")[..], OLD_NEGATIVE);
}

fn validated() -> Meta {
    Meta { validator: Some(Bytes::from_static(b"\"etag-17\"")), ..meta() }
}

#[test]
fn validator_roundtrips_in_the_extension_block() {
    for value in ["x".to_string(), "abc".repeat(2000)] {
        let bytes = Codec::default().encode(&validated(), Some(&value)).expect("encode");
        assert_ne!(bytes[4] & FLAG_EXTENDED, 0);
        let (m, at) = decode_meta(&bytes).expect("meta");
        assert_eq!(m, validated());
        // The header's payload length counts the payload only.
        assert_eq!(read_u32(&bytes, 36) as usize, bytes.len() - at);
        let back: Option<String> = decode_value(&bytes, &m, at).expect("value");
        assert_eq!(back, Some(value));
        // Backfill's time rewrite keeps the block.
        let moved = with_times(&bytes, 10, 20).expect("rewrite");
        assert_eq!(decode_meta(&moved).expect("moved").0.validator, validated().validator);
    }
    let longest = Meta { validator: Some(Bytes::from(vec![7u8; MAX_VALIDATOR_LEN])), ..meta() };
    let bytes = Codec::default().encode(&longest, Some(&1u8)).expect("longest validator");
    assert_eq!(decode_meta(&bytes).expect("meta").0, longest);
    let too_long =
        Meta { validator: Some(Bytes::from(vec![7u8; MAX_VALIDATOR_LEN + 1])), ..meta() };
    let err = Codec::default().encode(&too_long, Some(&1u8)).expect_err("too long");
    assert!(err.contains("validator of 1025 bytes"), "{err}");
}

/// `bytes` (an envelope without extension block) with `block` inserted after the tags.
fn with_block(bytes: &[u8], block: &[u8]) -> Vec<u8> {
    let (_, at) = decode_meta(bytes).expect("base");
    let mut out = bytes[..at].to_vec();
    out[4] |= FLAG_EXTENDED;
    out.extend_from_slice(block);
    out.extend_from_slice(&bytes[at..]);
    out
}

fn block(items: &[(u8, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (kind, bytes) in items {
        body.push(*kind);
        body.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        body.extend_from_slice(bytes);
    }
    let mut out = (body.len() as u16).to_le_bytes().to_vec();
    out.extend(body);
    out
}

#[test]
fn unknown_optional_items_are_skipped_and_unknown_critical_ones_refused() {
    let base = Codec::default().encode(&meta(), Some(&"v".to_string())).expect("encode");
    let optional = with_block(&base, &block(&[(0xC3, b"later"), (ITEM_VALIDATOR, b"v1")]));
    let (m, at) = decode_meta(&optional).expect("optional item skipped");
    assert_eq!(m.validator.as_deref(), Some(&b"v1"[..]));
    assert_eq!(decode_value::<String>(&optional, &m, at).expect("value").as_deref(), Some("v"));

    for (what, bad) in [
        ("critical", block(&[(0x02, b"?")])),
        ("critical 0x7f", block(&[(0x7F, b"")])),
        ("repeated", block(&[(ITEM_VALIDATOR, b"a"), (ITEM_VALIDATOR, b"b")])),
        ("empty block", block(&[])),
        ("validator too long", block(&[(ITEM_VALIDATOR, &[0u8; MAX_VALIDATOR_LEN + 1])])),
        ("item past the block", {
            let mut b = block(&[(0xC3, b"abcd")]);
            b[0] -= 2;
            b
        }),
        ("sealing without the flag", block(&[(ITEM_SEALING, b"key")])),
    ] {
        let err = decode_meta(&with_block(&base, &bad)).expect_err(what);
        assert!(err.is_decode(), "{what}: {err}");
    }
}

#[test]
fn extended_envelopes_truncated_anywhere_are_decode_errors() {
    let m = Meta { sealing: None, ..validated() };
    let bytes = Codec::default().encode(&m, Some(&"hello".to_string())).expect("encode");
    for cut in 0..bytes.len() {
        assert!(decode_meta(&bytes[..cut]).expect_err("truncated").is_decode(), "cut {cut}");
    }
}

#[test]
fn unknown_serializer_or_compression_ids_are_decode_errors_when_read() {
    let plain = Codec::default().encode(&meta(), Some(&"v".to_string())).expect("plain");
    let lz4 = Codec::default().encode(&meta(), Some(&"abc".repeat(2000))).expect("lz4");
    for (what, mut bytes, format) in [
        ("serializer 9", plain.to_vec(), 0x09),
        ("serializer 15", plain.to_vec(), 0x0F),
        ("compression 7", lz4.to_vec(), 0x70),
        ("compression id without the flag", plain.to_vec(), 0x10),
    ] {
        bytes[5] = format;
        // The meta is still readable (tiers keep, classify and replace the entry) …
        let (m, at) = decode_meta(&bytes).expect("meta");
        // … but its value is not: a decode error, never a panic or a wrong value.
        let err = decode_value::<String>(&bytes, &m, at).expect_err(what);
        assert!(err.is_decode(), "{what}: {err}");
    }
}

#[test]
fn json_payloads_roundtrip_plain_and_compressed() {
    let codec = Codec { serializer: Serializer::Json, ..Codec::default() };
    for value in ["x".to_string(), "abc".repeat(2000)] {
        let bytes = codec.encode(&meta(), Some(&value)).expect("encode");
        assert_eq!(bytes[5] & 0x0F, Serializer::Json.id());
        let (m, at) = decode_meta(&bytes).expect("meta");
        assert_eq!(decode_value::<String>(&bytes, &m, at).expect("value"), Some(value.clone()));
    }
    let raw = Codec { compress_threshold: usize::MAX, ..codec };
    let bytes = raw.encode(&meta(), Some(&"x".to_string())).expect("encode");
    assert_eq!(&bytes[bytes.len() - 3..], b"\"x\"");
}

#[test]
fn compression_off_stores_payloads_raw() {
    let codec = Codec { compression: None, ..Codec::default() };
    let bytes = codec.encode(&meta(), Some(&"abc".repeat(2000))).expect("encode");
    assert_eq!(bytes[4] & FLAG_COMPRESSED, 0);
    assert_eq!(bytes[5], 0);
}

#[test]
fn encrypted_envelopes_carry_their_sealing_and_need_the_crypt_layer() {
    let sealed = Meta { sealing: Some(Bytes::from_static(b"key-1|nonce")), ..validated() };
    let err = Codec::default().encode(&sealed, Some(&"v".to_string())).expect_err("refused");
    assert!(err.contains("encryption layer"), "{err}");
    // What the encryption layer does: serialize, replace the bytes by ciphertext, assemble.
    let mut payload = Codec::default().serialize(Some(&"v".to_string())).expect("payload");
    payload.bytes.iter_mut().for_each(|b| *b ^= 0x5A);
    let bytes = assemble(&sealed, &payload).expect("assemble");
    assert_eq!(bytes[4] & (FLAG_ENCRYPTED | FLAG_EXTENDED), FLAG_ENCRYPTED | FLAG_EXTENDED);
    let (m, at) = decode_meta(&bytes).expect("meta");
    assert_eq!(m, sealed);
    let err = decode_value::<String>(&bytes, &m, at).expect_err("no keyring");
    assert!(err.is_decode() && err.to_string().contains("encrypted entry, no keyring"), "{err}");
    // Opening: the ciphertext with what wrote it, decrypted, then decoded.
    let mut opened = payload_of(&bytes, at).expect("payload");
    let plain: Vec<u8> = opened.bytes.iter().map(|b| b ^ 0x5A).collect();
    opened.bytes = &plain;
    assert_eq!(decode_payload::<String>(&opened).expect("opened"), "v");
    // The flag without the item is refused.
    let mut flag_only =
        Codec::default().encode(&meta(), Some(&"v".to_string())).expect("plain").to_vec();
    flag_only[4] |= FLAG_ENCRYPTED;
    assert!(decode_meta(&flag_only).expect_err("flag without item").is_decode());
}

#[cfg(not(feature = "cbor"))]
#[test]
fn a_serializer_not_built_in_is_a_clear_error() {
    let codec = Codec { serializer: Serializer::Cbor, ..Codec::default() };
    let err = codec.encode(&meta(), Some(&1u8)).expect_err("not built");
    assert!(err.contains("feature `cbor`"), "{err}");
    let mut bytes = Codec::default().encode(&meta(), Some(&1u8)).expect("encode").to_vec();
    bytes[5] = Serializer::Cbor.id();
    let (m, at) = decode_meta(&bytes).expect("meta");
    let err = decode_value::<u8>(&bytes, &m, at).expect_err("not built");
    assert!(err.is_decode() && err.to_string().contains("feature `cbor`"), "{err}");
}

#[test]
fn a_postcard_entry_of_an_earlier_version_is_a_decode_error_that_names_it() {
    // Serializer id 2 was postcard: no longer read (positional, so no tool could show it).
    let mut bytes = Codec::default().encode(&meta(), Some(&1u8)).expect("encode").to_vec();
    bytes[5] = 2;
    let err = decode_meta(&bytes)
        .and_then(|(m, at)| decode_value::<u8>(&bytes, &m, at))
        .expect_err("retired serializer");
    assert!(err.is_decode() && err.to_string().contains("postcard"), "{err}");
}

mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any bytes after a valid header prefix: decoding never panics.
        #[test]
        fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..200), flags in any::<u8>(), format in any::<u8>()) {
            let mut bytes = Codec::default().encode(&validated(), Some(&"v".to_string())).expect("encode")[..HEADER_LEN].to_vec();
            bytes[4] = flags;
            bytes[5] = format;
            bytes.extend(tail);
            if let Ok((m, at)) = decode_meta(&bytes) {
                let _ = decode_value::<String>(&bytes, &m, at);
            }
        }

        /// Every combination of validator, tags, serializer and compression round-trips.
        #[test]
        fn roundtrip(validator in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..=MAX_VALIDATOR_LEN)),
                     tagged in any::<bool>(), json in any::<bool>(), compress in any::<bool>(),
                     value in ".{0,300}") {
            let m = Meta {
                validator: validator.map(Bytes::from),
                tags: if tagged { meta().tags } else { None },
                ..meta()
            };
            let codec = Codec {
                serializer: if json { Serializer::Json } else { Serializer::MessagePack },
                compress_threshold: if compress { 0 } else { usize::MAX },
                ..Codec::default()
            };
            let bytes = codec.encode(&m, Some(&value)).expect("encode");
            let (back, at) = decode_meta(&bytes).expect("meta");
            prop_assert_eq!(&back, &m);
            prop_assert_eq!(decode_value::<String>(&bytes, &back, at).expect("value"), Some(value));
        }
    }
}

#[test]
fn a_length_prefix_over_the_limit_is_refused_before_allocating() {
    let bytes = Codec::default().encode(&meta(), Some(&"abc".repeat(2000))).expect("encode");
    let (m, at) = decode_meta(&bytes).expect("meta");
    let mut bomb = bytes.to_vec();
    bomb[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = decode_value::<String>(&bomb, &m, at).expect_err("refused");
    assert!(err.to_string().contains("at most"), "{err}");
}

#[cfg(feature = "zstd")]
#[test]
fn zstd_payloads_roundtrip_and_corrupt_ones_are_decode_errors() {
    let codec = Codec { compression: Some(Compression::Zstd), ..Codec::default() };
    let value = "tiered caches ".repeat(500);
    let bytes = codec.encode(&meta(), Some(&value)).expect("encode");
    assert_eq!(bytes[5] >> 4, Compression::Zstd.id());
    let (m, at) = decode_meta(&bytes).expect("meta");
    assert_eq!(decode_value::<String>(&bytes, &m, at).expect("value"), Some(value.clone()));
    let lz4 = Codec::default().encode(&meta(), Some(&value)).expect("lz4");
    assert!(bytes.len() < lz4.len(), "zstd {} vs lz4 {}", bytes.len(), lz4.len());
    // A wrong length prefix, and a damaged frame: errors, not wrong values.
    let mut short = bytes.to_vec();
    short[at] ^= 1;
    assert!(decode_value::<String>(&short, &m, at).expect_err("prefix").is_decode());
    let mut damaged = bytes.to_vec();
    let mid = at + (bytes.len() - at) / 2;
    damaged[mid] ^= 0xFF;
    if let Ok(v) = decode_value::<String>(&damaged, &m, at) {
        assert_ne!(v, Some(value), "a damaged frame never decodes as the value");
    }
}

#[cfg(feature = "cbor")]
#[test]
fn cbor_payloads_roundtrip_and_are_smaller_than_json() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct User {
        id: u64,
        name: String,
        teams: Vec<u32>,
    }
    let user = User { id: 42, name: "Ada".into(), teams: vec![1, 7] };
    let sizes: Vec<usize> = [Serializer::Cbor, Serializer::MessagePack, Serializer::Json]
        .into_iter()
        .map(|serializer| {
            let codec = Codec { serializer, compression: None, ..Codec::default() };
            let bytes = codec.encode(&meta(), Some(&user)).expect("encode");
            let (m, at) = decode_meta(&bytes).expect("meta");
            assert_eq!(decode_value::<User>(&bytes, &m, at).expect("value").as_ref(), Some(&user));
            bytes.len()
        })
        .collect();
    // Both binary formats name the fields; JSON spells them out with quotes and punctuation.
    assert!(sizes[0] < sizes[2] && sizes[1] < sizes[2], "{sizes:?}");
}
