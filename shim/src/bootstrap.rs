//! The `start` action's conversation with containerd, in both of its dialects.
//!
//! - containerd 1.6 and 1.7 write the runtime options to `start`'s stdin as a bare `google.protobuf.Any`,
//!   and read the socket address back as plain text (task API v2).
//! - containerd 2.x with the bootstrap protocol (`containerd.runtime.bootstrap.v1`, in 2.3) writes
//!   `BootstrapParams` instead — the runtime options are one of its `extensions` — and reads a
//!   `BootstrapResult` back, whose `version` 3 selects the task API v3 (which the server also serves).
//!
//! The messages are read and written field by field here: the two are small, and the crates this shim
//! builds on do not carry them.

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::empty::Empty;
use containerd_shim::protos::protobuf::{CodedOutputStream, Message, UnknownValueRef};

/// `BootstrapParams` fields this shim reads.
const PARAMS_TTRPC_ADDRESS: u32 = 5;
const PARAMS_GRPC_ADDRESS: u32 = 6;
const PARAMS_EXTENSIONS: u32 = 8;
/// `Extension.value`.
const EXTENSION_VALUE: u32 = 1;

/// The task API version a `BootstrapResult` asks for.
const TASK_API_V3: i32 = 3;

/// What containerd wrote to `start`'s stdin.
#[derive(Debug, Default, PartialEq)]
pub struct StartInput {
    /// The runtime options (the node configuration's path, among others), if any.
    pub options: Option<Any>,
    /// Whether containerd spoke the bootstrap protocol, and so reads a `BootstrapResult` back.
    pub bootstrap: bool,
}

impl StartInput {
    /// Reads `bytes` as `BootstrapParams` when they are one (they name containerd's addresses, which an
    /// `Any` has no field for), else as the bare `Any` of older versions. Unreadable input gives no
    /// options: Create then reports the configuration's problem with its own error.
    pub fn parse(bytes: &[u8]) -> StartInput {
        let Ok(message) = Empty::parse_from_bytes(bytes) else {
            return StartInput::default();
        };
        let fields = message.special_fields.unknown_fields();
        let is_bootstrap = [PARAMS_TTRPC_ADDRESS, PARAMS_GRPC_ADDRESS]
            .into_iter()
            .any(|number| {
                matches!(
                    fields.get(number),
                    Some(UnknownValueRef::LengthDelimited(_))
                )
            });
        if !is_bootstrap {
            return StartInput {
                options: Any::parse_from_bytes(bytes)
                    .ok()
                    .filter(|any| !any.type_url.is_empty()),
                bootstrap: false,
            };
        }
        let options = fields
            .iter()
            .filter(|(number, _)| *number == PARAMS_EXTENSIONS)
            .filter_map(|(_, value)| match value {
                UnknownValueRef::LengthDelimited(extension) => extension_value(extension),
                _ => None,
            })
            .find(crate::node_config::is_runtime_options);
        StartInput {
            options,
            bootstrap: true,
        }
    }
}

fn extension_value(extension: &[u8]) -> Option<Any> {
    let extension = Empty::parse_from_bytes(extension).ok()?;
    match extension
        .special_fields
        .unknown_fields()
        .get(EXTENSION_VALUE)?
    {
        UnknownValueRef::LengthDelimited(any) => Any::parse_from_bytes(any).ok(),
        _ => None,
    }
}

/// What `start` answers with: a `BootstrapResult` (task API v3 over ttrpc) to a containerd that spoke the
/// bootstrap protocol, else the bare address.
pub fn start_reply(input: &StartInput, address: &str) -> Vec<u8> {
    if !input.bootstrap {
        return address.as_bytes().to_vec();
    }
    let mut bytes = Vec::new();
    let mut out = CodedOutputStream::vec(&mut bytes);
    out.write_int32(1, TASK_API_V3)
        .and_then(|()| out.write_string(2, address))
        .and_then(|()| out.write_string(3, "ttrpc"))
        .and_then(|()| out.flush())
        .expect("writing to a Vec cannot fail");
    drop(out);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(path: &str) -> Any {
        Any {
            type_url: "runtimeoptions.v1.Options".into(),
            // `Options.config_path` (field 2), as containerd's runtimeoptions writes it.
            value: [&[0x12, path.len() as u8][..], path.as_bytes()].concat(),
            ..Default::default()
        }
    }

    /// `BootstrapParams` as containerd 2.3 wrote it to this shim's stdin (captured, then re-encoded).
    fn bootstrap_params(extension: Option<&Any>) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut out = CodedOutputStream::vec(&mut bytes);
        out.write_string(1, "svc").unwrap();
        out.write_string(2, "default").unwrap();
        out.write_string(4, "v2.3.4").unwrap();
        out.write_string(5, "/run/containerd/containerd.sock.ttrpc")
            .unwrap();
        out.write_string(6, "/run/containerd/containerd.sock")
            .unwrap();
        out.write_string(7, "/usr/bin/containerd").unwrap();
        if let Some(any) = extension {
            let mut extension = Vec::new();
            let mut ext = CodedOutputStream::vec(&mut extension);
            ext.write_bytes(1, &any.write_to_bytes().unwrap()).unwrap();
            ext.flush().unwrap();
            drop(ext);
            out.write_bytes(8, &extension).unwrap();
        }
        out.write_string(9, "/run/containerd/s").unwrap();
        out.flush().unwrap();
        drop(out);
        bytes
    }

    #[test]
    fn both_dialects_give_the_runtime_options() {
        let any = options("/etc/wasmhttp/node.toml");
        let old = StartInput::parse(&any.write_to_bytes().unwrap());
        assert_eq!(
            old,
            StartInput {
                options: Some(any.clone()),
                bootstrap: false
            }
        );
        let new = StartInput::parse(&bootstrap_params(Some(&any)));
        assert_eq!(
            new,
            StartInput {
                options: Some(any),
                bootstrap: true
            }
        );
        let bare = StartInput::parse(&bootstrap_params(None));
        assert!(bare.bootstrap && bare.options.is_none());
        assert_eq!(StartInput::parse(b""), StartInput::default());
        assert_eq!(StartInput::parse(b"\xff\xff\xff"), StartInput::default());
    }

    #[test]
    fn the_reply_is_an_address_or_a_bootstrap_result_for_task_api_v3() {
        let address = "unix:///run/containerd/s/abc";
        let old = StartInput::default();
        assert_eq!(start_reply(&old, address), address.as_bytes());
        let new = StartInput {
            options: None,
            bootstrap: true,
        };
        let reply = Empty::parse_from_bytes(&start_reply(&new, address)).unwrap();
        let fields = reply.special_fields.unknown_fields();
        assert!(matches!(fields.get(1), Some(UnknownValueRef::Varint(3))));
        assert!(
            matches!(fields.get(2), Some(UnknownValueRef::LengthDelimited(a)) if a == address.as_bytes())
        );
        assert!(
            matches!(fields.get(3), Some(UnknownValueRef::LengthDelimited(p)) if p == b"ttrpc")
        );
    }
}
