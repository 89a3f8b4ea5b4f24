//! What kind of guest a binary is, decided from what it exports.

use wasmtime::component::Component;
use wasmtime::{Engine, ExternType, Module};

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

/// Classifies a compiled component by its exports.
pub(crate) fn component_kind(
    name: &str,
    engine: &Engine,
    component: &Component,
) -> Result<WasmKind, crate::Error> {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let exports_interface = |prefix: &str| {
        exports.iter().any(|e| {
            e.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('@'))
        })
    };
    if exports_interface("wasi:http/incoming-handler") {
        Ok(WasmKind::HttpService)
    } else if exports_interface("wasi:cli/run") {
        Ok(WasmKind::Command)
    } else {
        Err(crate::Error::Unsupported {
            name: name.to_string(),
            exports,
        })
    }
}

/// Classifies a compiled core module: only WASI commands (`_start`) are runnable.
pub(crate) fn module_kind(name: &str, module: &Module) -> Result<WasmKind, crate::Error> {
    let is_start = |e: &wasmtime::ExportType<'_>| {
        e.name() == "_start" && matches!(e.ty(), ExternType::Func(_))
    };
    if module.exports().any(|e| is_start(&e)) {
        Ok(WasmKind::PreviewOneCommand)
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
}
