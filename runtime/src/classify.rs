//! What kind of guest a binary is, decided from what it exports.

use wasmtime::component::Component;
use wasmtime::{Engine, ExternType, Module};

/// The WASI version a guest was built for, read from the versions of what it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasiVersion {
    /// WASI preview 1: a core module.
    Preview1,
    /// WASI 0.2 (`wasi:http/incoming-handler@0.2.x`, `wasi:cli/run@0.2.x`).
    P2,
    /// WASI 0.3 (`wasi:http/handler@0.3.x`, `wasi:cli/run@0.3.x`): the component-model async ABI.
    P3,
}

impl std::fmt::Display for WasiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WasiVersion::Preview1 => "WASI preview 1",
            WasiVersion::P2 => "WASI 0.2",
            WasiVersion::P3 => "WASI 0.3",
        })
    }
}

/// What wasmhttp runs, for messages about what it cannot.
pub const SUPPORTED: &str = "wasi:http/incoming-handler@0.2.x, wasi:http/handler@0.3.x (HTTP services), \
wasi:cli/run@0.2.x, wasi:cli/run@0.3.x (commands) and WASI preview 1 modules exporting _start";

/// The three kinds of guest wasmhttp runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    /// A component exporting `wasi:http/incoming-handler` (whether or not it also exports `wasi:cli/run`,
    /// as `wstd` services built as binaries do).
    HttpService,
    /// A component exporting `wasi:cli/run` only.
    Command,
    /// A WASI preview 1 core module with a `_start` function.
    PreviewOneCommand,
}

impl WasmKind {
    /// Whether this kind serves HTTP (otherwise it runs to completion).
    pub fn is_http(self) -> bool {
        self == WasmKind::HttpService
    }
}

impl std::fmt::Display for WasmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WasmKind::HttpService => "wasi:http service",
            WasmKind::Command => "wasi:cli command",
            WasmKind::PreviewOneCommand => "WASI preview 1 command",
        })
    }
}

/// How the binary is encoded, from its 8-byte preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    CoreModule,
    Component,
}

/// Reads the preamble: `\0asm` then a version (1 for core modules, 0x0d/layer 1 for components).
pub(crate) fn encoding(name: &str, bytes: &[u8]) -> Result<Encoding, crate::Error> {
    let not_wasm = |detail: String| crate::Error::NotWasm {
        name: name.to_string(),
        detail,
    };
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        let shown: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(not_wasm(format!(
            "it does not start with the wasm magic bytes 00 61 73 6d (found {}, {} bytes long)",
            if shown.is_empty() {
                "nothing".to_string()
            } else {
                shown.join(" ")
            },
            bytes.len()
        )));
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Ok(Encoding::CoreModule),
        [_, _, 1, 0] => Ok(Encoding::Component),
        ref other => Err(not_wasm(format!("unknown wasm version/layer {other:02x?}"))),
    }
}

/// Whether a component's own imports or exports name a WASI 0.3 interface (`…@0.3.x`), read from its
/// top-level sections without validating or compiling it (nested modules are skipped). Such a component
/// needs the component-model async ABI. A binary that does not parse answers `false`: the engine's own
/// validation then reports what is wrong with it.
pub(crate) fn names_wasi_p3(bytes: &[u8]) -> bool {
    use wasmparser::{Chunk, Parser, Payload};
    let is_p3 = |name: &str| {
        name.starts_with("wasi:")
            && name
                .split_once('@')
                .is_some_and(|(_, version)| version.starts_with("0.3."))
    };
    // A name may carry its version's tail separately (`version_suffix`), or name the interface it
    // implements: both count.
    let names_p3 = |name: wasmparser::ComponentExternName<'_>| {
        is_p3(&name.full_name()) || name.full_implements().is_some_and(|i| is_p3(&i))
    };
    let mut parser = Parser::new(0);
    let mut data = bytes;
    loop {
        let Ok(Chunk::Parsed { consumed, payload }) = parser.parse(data, true) else {
            return false;
        };
        data = &data[consumed..];
        let named = match payload {
            Payload::ComponentImportSection(imports) => imports
                .into_iter()
                .any(|i| i.is_ok_and(|i| names_p3(i.name))),
            Payload::ComponentExportSection(exports) => exports
                .into_iter()
                .any(|e| e.is_ok_and(|e| names_p3(e.name))),
            Payload::End(_) => return false,
            _ => false,
        };
        if named {
            return true;
        }
    }
}

/// Classifies a compiled component by its exports: the interface says the kind, its version the WASI
/// version. A component exporting both an HTTP handler and `wasi:cli/run` (as `wstd` services built as
/// binaries do) is a service.
pub(crate) fn component_kind(
    name: &str,
    engine: &Engine,
    component: &Component,
) -> Result<(WasmKind, WasiVersion), crate::Error> {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let exports_interface = |interface: &str, version: &str| {
        exports.iter().any(|e| {
            e.strip_prefix(interface)
                .and_then(|rest| rest.strip_prefix('@'))
                .is_some_and(|v| {
                    v.strip_prefix(version)
                        .is_some_and(|patch| patch.starts_with('.'))
                })
        })
    };
    if exports_interface("wasi:http/handler", "0.3") {
        Ok((WasmKind::HttpService, WasiVersion::P3))
    } else if exports_interface("wasi:http/incoming-handler", "0.2") {
        Ok((WasmKind::HttpService, WasiVersion::P2))
    } else if exports_interface("wasi:cli/run", "0.3") {
        Ok((WasmKind::Command, WasiVersion::P3))
    } else if exports_interface("wasi:cli/run", "0.2") {
        Ok((WasmKind::Command, WasiVersion::P2))
    } else {
        Err(crate::Error::Unsupported {
            name: name.to_string(),
            exports,
        })
    }
}

/// Classifies a compiled core module: only WASI commands (`_start`) are runnable.
pub(crate) fn module_kind(
    name: &str,
    module: &Module,
) -> Result<(WasmKind, WasiVersion), crate::Error> {
    let is_start = |e: &wasmtime::ExportType<'_>| {
        e.name() == "_start" && matches!(e.ty(), ExternType::Func(_))
    };
    if module.exports().any(|e| is_start(&e)) {
        Ok((WasmKind::PreviewOneCommand, WasiVersion::Preview1))
    } else {
        Err(crate::Error::Unsupported {
            name: name.to_string(),
            exports: module.exports().map(|e| e.name().to_string()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble() {
        assert_eq!(
            encoding("m", b"\0asm\x01\0\0\0").unwrap(),
            Encoding::CoreModule
        );
        assert_eq!(
            encoding("c", b"\0asm\x0d\0\x01\0").unwrap(),
            Encoding::Component
        );
        let err = encoding("app.wasm", b"#!/bin/sh\necho hi")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("app.wasm is not a WebAssembly binary"),
            "{err}"
        );
        assert!(err.contains("23 21 2f 62"), "{err}");
        assert!(
            encoding("empty", b"")
                .unwrap_err()
                .to_string()
                .contains("found nothing")
        );
    }

    #[test]
    fn a_component_naming_wasi_03_is_told_apart_without_compiling() {
        let component = |wat: &str| wat::parse_str(wat).unwrap();
        let p3_import =
            component(r#"(component (import "wasi:cli/environment@0.3.0" (instance)))"#);
        assert!(names_wasi_p3(&p3_import));
        let p3_export = component(
            r#"(component (instance $i) (export "wasi:http/handler@0.3.0-rc-2026-03-15" (instance $i)))"#,
        );
        assert!(names_wasi_p3(&p3_export));
        let p2 = component(r#"(component (import "wasi:cli/environment@0.2.6" (instance)))"#);
        assert!(!names_wasi_p3(&p2));
        let not_wasi = component(r#"(component (import "acme:kv/store@0.3.0" (instance)))"#);
        assert!(!names_wasi_p3(&not_wasi));
        // A nested core module is skipped, whatever it names.
        let nested = component(
            r#"(component (core module (import "wasi:cli/environment@0.3.0" "f" (func))))"#,
        );
        assert!(!names_wasi_p3(&nested));
        assert!(!names_wasi_p3(b"\0asm\x0d\0\x01\0garbage"));
    }
}
