//! Load-time checks and instrumentation of a phone image.
//!
//! A snapshot must capture a guest completely, so before compiling an image we read it
//! once with `wasmparser` and refuse what could not be captured faithfully (shared or
//! several memories, unknown imports, table or segment mutation). Then we rewrite only its
//! export section so that every mutable global, the Rust stack pointer included, gets an
//! export `__vmi_global_N` the engine can read and set. All other sections are copied
//! byte for byte, so the code the guest runs is exactly the code it shipped.

use std::ops::Range;

use wasm_encoder::{ExportKind, ExportSection, Module as EncodedModule, RawSection};
use wasmparser::{ExternalKind, FuncType, Operator, Parser, Payload, TypeRef, ValType as WpValType};

use crate::host::HOST_FUNCTIONS;

/// Prefix of the exports the engine adds for captured globals.
pub const GLOBAL_EXPORT_PREFIX: &str = "__vmi_global_";

/// Type of a captured global.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalKind {
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
}

/// An image that passed the checks, ready to compile.
#[derive(Debug)]
pub struct PreparedImage {
    /// The module with the added global exports.
    pub instrumented: Vec<u8>,
    /// Mutable globals in index order, with their export names.
    pub globals: Vec<(String, GlobalKind)>,
    /// Byte ranges of memory that instantiation writes (active data segments): a restore
    /// clears them before laying the snapshot's pages down.
    pub data_ranges: Vec<Range<u64>>,
    /// Initial memory in 64 KiB wasm pages.
    pub memory_min_pages: u64,
    /// Declared maximum memory in wasm pages.
    pub memory_max_pages: Option<u64>,
    /// Functions the module defines.
    pub functions: u32,
    /// Imported host function names.
    pub imports: Vec<String>,
}

/// Why an image is refused. Each names the offending item.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageCheckError {
    /// Not a WebAssembly module at all, or malformed.
    #[error("not a valid WebAssembly module: {0}")]
    Malformed(String),
    /// A shared memory means threads; an event boundary would not be a single instant.
    #[error("memory {0} is shared (threads); a shared memory cannot be snapshotted at an event boundary")]
    SharedMemory(u32),
    /// More than one memory.
    #[error("the module has {0} memories; exactly one is supported")]
    MemoryCount(u32),
    /// 64-bit memories are not supported.
    #[error("memory {0} is 64-bit; only 32-bit memories are supported")]
    Memory64(u32),
    /// An import outside the `vmi` host API.
    #[error("unknown import `{module}.{name}`; images may import only the functions of docs/GUEST_ABI.md")]
    UnknownImport {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
    },
    /// A host function imported with the wrong signature.
    #[error("import `vmi.{name}` has signature {found}, expected {expected}")]
    ImportSignature {
        /// Import name.
        name: String,
        /// What the ABI says.
        expected: String,
        /// What the module says.
        found: String,
    },
    /// Imported memories, tables or globals would put guest state outside the VM.
    #[error("import `{module}.{name}` is a {kind}; only functions may be imported")]
    NonFunctionImport {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
        /// What it is.
        kind: &'static str,
    },
    /// An instruction that changes tables or segments, which a restore rebuilds from the image.
    #[error("function {func} uses `{op}`, which changes state a snapshot cannot capture")]
    ForbiddenInstruction {
        /// Function index.
        func: u32,
        /// The instruction.
        op: &'static str,
    },
    /// Atomic instructions (the threads proposal) are not supported, shared memory or not.
    #[error("atomic instructions (the threads proposal) are not supported: {0}")]
    Atomics(String),
    /// A mutable global of a type a snapshot cannot hold.
    #[error("global {0} is a mutable {1}; only i32, i64, f32 and f64 globals can be captured")]
    UncapturableGlobal(u32, &'static str),
    /// A data segment whose place in memory is not a constant.
    #[error("data segment {0} has a non-constant offset")]
    DataOffset(u32),
    /// A required export is missing.
    #[error("missing export `{0}` (see docs/GUEST_ABI.md)")]
    MissingExport(&'static str),
    /// An export of docs/GUEST_ABI.md is of the wrong kind or signature.
    #[error("export `{name}` is {found}, expected {expected} (see docs/GUEST_ABI.md)")]
    ExportType {
        /// The export.
        name: &'static str,
        /// What the ABI says it is.
        expected: String,
        /// What the module exports under that name.
        found: String,
    },
    /// The guest uses a name the engine reserves.
    #[error("export `{0}` uses the reserved prefix `{GLOBAL_EXPORT_PREFIX}`")]
    ReservedExport(String),
}

fn val_name(t: &WpValType) -> &'static str {
    match t {
        WpValType::I32 => "i32",
        WpValType::I64 => "i64",
        WpValType::F32 => "f32",
        WpValType::F64 => "f64",
        WpValType::V128 => "v128",
        WpValType::Ref(_) => "reference",
    }
}

fn signature(f: &FuncType) -> String {
    let list = |ts: &[WpValType]| ts.iter().map(val_name).collect::<Vec<_>>().join(", ");
    format!("({}) -> ({})", list(f.params()), list(f.results()))
}

fn malformed(e: impl std::fmt::Display) -> ImageCheckError {
    ImageCheckError::Malformed(e.to_string())
}

/// Checks an image against docs/GUEST_ABI.md and instruments it.
pub fn prepare(bytes: &[u8]) -> Result<PreparedImage, ImageCheckError> {
    // Full validation first, so the structural walk below reads a well-formed module.
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::default());
    validator.validate_all(bytes).map_err(malformed)?;

    let mut out = EncodedModule::new();
    let mut types: Vec<FuncType> = Vec::new();
    let mut imported_funcs = 0u32;
    let mut imports = Vec::new();
    let mut memories = 0u32;
    let mut memory_min_pages = 0;
    let mut memory_max_pages = None;
    let mut globals = Vec::new();
    let mut exports_done = false;
    let mut existing_exports: Vec<(String, ExportKind, u32)> = Vec::new();
    let mut data_ranges = Vec::new();
    let mut functions = 0u32;
    let mut func_index = 0u32;
    // Type index of every function, imported ones first (the function index space).
    let mut func_types: Vec<u32> = Vec::new();
    // Type of every global, by index (none are imported).
    let mut global_types: Vec<wasmparser::GlobalType> = Vec::new();

    let emit_exports =
        |out: &mut EncodedModule, existing: &[(String, ExportKind, u32)], globals: &[(String, GlobalKind, u32)]| {
            let mut section = ExportSection::new();
            for (name, kind, index) in existing {
                section.export(name, *kind, *index);
            }
            for (name, _, index) in globals {
                section.export(name, ExportKind::Global, *index);
            }
            out.section(&section);
        };
    let mut captured: Vec<(String, GlobalKind, u32)> = Vec::new();

    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(malformed)?;
        // Sections that must come after the export section: emit ours first if the
        // module had none.
        if let Some((id, _)) = payload.as_section()
            && !exports_done
            && (8..=12).contains(&id)
        {
            emit_exports(&mut out, &existing_exports, &captured);
            exports_done = true;
        }
        match &payload {
            Payload::TypeSection(reader) => {
                for group in reader.clone() {
                    for sub in group.map_err(malformed)?.into_types() {
                        match sub.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(f) => types.push(f),
                            _ => types.push(FuncType::new([], [])),
                        }
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.clone() {
                    let import = import.map_err(malformed)?;
                    let kind = match import.ty {
                        TypeRef::Func(t) => {
                            let found = types.get(t as usize).ok_or_else(|| malformed("import type out of range"))?;
                            check_host_import(import.module, import.name, found)?;
                            func_types.push(t);
                            imported_funcs += 1;
                            imports.push(import.name.to_string());
                            continue;
                        }
                        TypeRef::Memory(_) => "memory",
                        TypeRef::Table(_) => "table",
                        TypeRef::Global(_) => "global",
                        TypeRef::Tag(_) => "tag",
                    };
                    return Err(ImageCheckError::NonFunctionImport {
                        module: import.module.to_string(),
                        name: import.name.to_string(),
                        kind,
                    });
                }
                func_index = imported_funcs;
            }
            Payload::FunctionSection(reader) => {
                for t in reader.clone() {
                    func_types.push(t.map_err(malformed)?);
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader.clone() {
                    let memory = memory.map_err(malformed)?;
                    if memory.shared {
                        return Err(ImageCheckError::SharedMemory(memories));
                    }
                    if memory.memory64 {
                        return Err(ImageCheckError::Memory64(memories));
                    }
                    memory_min_pages = memory.initial;
                    memory_max_pages = memory.maximum;
                    memories += 1;
                }
                if memories > 1 {
                    return Err(ImageCheckError::MemoryCount(memories));
                }
            }
            Payload::GlobalSection(reader) => {
                for (index, global) in reader.clone().into_iter().enumerate() {
                    let global = global.map_err(malformed)?;
                    let index = index as u32;
                    global_types.push(global.ty);
                    if !global.ty.mutable {
                        continue;
                    }
                    let kind = match global.ty.content_type {
                        WpValType::I32 => GlobalKind::I32,
                        WpValType::I64 => GlobalKind::I64,
                        WpValType::F32 => GlobalKind::F32,
                        WpValType::F64 => GlobalKind::F64,
                        other => return Err(ImageCheckError::UncapturableGlobal(index, val_name(&other))),
                    };
                    let name = format!("{GLOBAL_EXPORT_PREFIX}{index}");
                    captured.push((name.clone(), kind, index));
                    globals.push((name, kind));
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader.clone() {
                    let export = export.map_err(malformed)?;
                    if export.name.starts_with(GLOBAL_EXPORT_PREFIX) {
                        return Err(ImageCheckError::ReservedExport(export.name.to_string()));
                    }
                    let kind = match export.kind {
                        ExternalKind::Func => ExportKind::Func,
                        ExternalKind::Table => ExportKind::Table,
                        ExternalKind::Memory => ExportKind::Memory,
                        ExternalKind::Global => ExportKind::Global,
                        ExternalKind::Tag => ExportKind::Tag,
                    };
                    existing_exports.push((export.name.to_string(), kind, export.index));
                }
                emit_exports(&mut out, &existing_exports, &captured);
                exports_done = true;
                continue;
            }
            Payload::DataSection(reader) => {
                for (index, data) in reader.clone().into_iter().enumerate() {
                    let data = data.map_err(malformed)?;
                    if let wasmparser::DataKind::Active { offset_expr, .. } = data.kind {
                        let mut ops = offset_expr.get_operators_reader();
                        let offset = match ops.read().map_err(malformed)? {
                            Operator::I32Const { value } => value as u32 as u64,
                            _ => return Err(ImageCheckError::DataOffset(index as u32)),
                        };
                        if !data.data.is_empty() {
                            data_ranges.push(offset..offset + data.data.len() as u64);
                        }
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader().map_err(malformed)?;
                while !ops.eof() {
                    if let Some(op) = forbidden(&ops.read().map_err(malformed)?) {
                        return Err(ImageCheckError::ForbiddenInstruction { func: func_index, op });
                    }
                }
                func_index += 1;
                functions += 1;
            }
            _ => {}
        }
        if let Some((id, range)) = payload.as_section() {
            out.section(&RawSection { id, data: &bytes[range] });
        }
    }
    if !exports_done {
        emit_exports(&mut out, &existing_exports, &captured);
    }
    if memories == 0 {
        return Err(ImageCheckError::MemoryCount(0));
    }
    // The module is valid and shared memory is refused above, so a validator without the
    // threads proposal fails only on an atomic instruction, and names where it is.
    let no_threads = wasmparser::WasmFeatures::default()
        - wasmparser::WasmFeatures::THREADS
        - wasmparser::WasmFeatures::SHARED_EVERYTHING_THREADS;
    wasmparser::Validator::new_with_features(no_threads)
        .validate_all(bytes)
        .map_err(|e| ImageCheckError::Atomics(e.to_string()))?;
    let module = ModuleTypes { types: &types, func_types: &func_types, global_types: &global_types };
    check_exports(&existing_exports, &module)?;
    Ok(PreparedImage {
        instrumented: out.finish(),
        globals,
        data_ranges,
        memory_min_pages,
        memory_max_pages,
        functions,
        imports,
    })
}

/// What the export check needs to know of a module's index spaces.
struct ModuleTypes<'a> {
    types: &'a [FuncType],
    func_types: &'a [u32],
    global_types: &'a [wasmparser::GlobalType],
}

impl ModuleTypes<'_> {
    fn func(&self, index: u32) -> Option<&FuncType> {
        self.func_types.get(index as usize).and_then(|t| self.types.get(*t as usize))
    }

    /// How an error names what a module exports.
    fn describe(&self, kind: ExportKind, index: u32) -> String {
        match kind {
            ExportKind::Func => match self.func(index) {
                Some(f) => format!("a function {}", signature(f)),
                None => "a function".to_string(),
            },
            ExportKind::Global => match self.global_types.get(index as usize) {
                Some(g) => {
                    format!("a {}global of type {}", if g.mutable { "mutable " } else { "" }, val_name(&g.content_type))
                }
                None => "a global".to_string(),
            },
            ExportKind::Memory => "a memory".to_string(),
            ExportKind::Table => "a table".to_string(),
            ExportKind::Tag => "a tag".to_string(),
        }
    }
}

/// Checks every export docs/GUEST_ABI.md names: present when required, and of the kind
/// and signature it documents, so that a wrong one is refused at load and not at boot.
fn check_exports(exports: &[(String, ExportKind, u32)], module: &ModuleTypes<'_>) -> Result<(), ImageCheckError> {
    const I32: WpValType = WpValType::I32;
    let rules: [(&'static str, Option<FuncType>, bool); 4] = [
        ("memory", None, true),
        ("vmi_abi_version", Some(FuncType::new([], [I32])), false),
        ("vmi_init", Some(FuncType::new([I32, I32], [])), true),
        ("vmi_event", Some(FuncType::new([I32, I32, I32, I32], [])), true),
    ];
    for (name, function, required) in rules {
        let Some((_, kind, index)) = exports.iter().find(|(n, _, _)| n == name) else {
            if required {
                return Err(ImageCheckError::MissingExport(name));
            }
            continue;
        };
        let fits = match (&function, kind) {
            (None, ExportKind::Memory) => true,
            (Some(f), ExportKind::Func) => module.func(*index) == Some(f),
            _ => false,
        };
        if !fits {
            let expected = match &function {
                Some(f) => format!("a function {}", signature(f)),
                None => "a memory".to_string(),
            };
            return Err(ImageCheckError::ExportType { name, expected, found: module.describe(*kind, *index) });
        }
    }
    Ok(())
}

fn check_host_import(module: &str, name: &str, found: &FuncType) -> Result<(), ImageCheckError> {
    let unknown = || ImageCheckError::UnknownImport { module: module.to_string(), name: name.to_string() };
    if module != "vmi" {
        return Err(unknown());
    }
    let (_, params, results) = HOST_FUNCTIONS.iter().find(|(n, _, _)| *n == name).ok_or_else(unknown)?;
    let expected = FuncType::new(params.iter().copied(), results.iter().copied());
    if &expected != found {
        return Err(ImageCheckError::ImportSignature {
            name: name.to_string(),
            expected: signature(&expected),
            found: signature(found),
        });
    }
    Ok(())
}

fn forbidden(op: &Operator<'_>) -> Option<&'static str> {
    Some(match op {
        Operator::TableSet { .. } => "table.set",
        Operator::TableGrow { .. } => "table.grow",
        Operator::TableFill { .. } => "table.fill",
        Operator::TableCopy { .. } => "table.copy",
        Operator::TableInit { .. } => "table.init",
        Operator::ElemDrop { .. } => "elem.drop",
        Operator::MemoryInit { .. } => "memory.init",
        Operator::DataDrop { .. } => "data.drop",
        Operator::MemoryAtomicWait32 { .. } | Operator::MemoryAtomicWait64 { .. } => "memory.atomic.wait",
        Operator::MemoryAtomicNotify { .. } => "memory.atomic.notify",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wat(src: &str) -> Vec<u8> {
        wat::parse_str(src).expect("test module parses")
    }

    const MINIMAL: &str = r#"(module
        (memory (export "memory") 1)
        (global $sp (mut i32) (i32.const 1024))
        (global $k i32 (i32.const 7))
        (func (export "vmi_init") (param i32 i32) (global.set $sp (i32.const 2048)))
        (func (export "vmi_event") (param i32 i32 i32 i32))
        (data (i32.const 16) "hello"))"#;

    #[test]
    fn exports_every_mutable_global_and_records_data() {
        let prepared = prepare(&wat(MINIMAL)).expect("minimal image is accepted");
        assert_eq!(prepared.globals, vec![("__vmi_global_0".to_string(), GlobalKind::I32)]);
        assert_eq!(prepared.data_ranges, vec![16..21]);
        assert_eq!(prepared.memory_min_pages, 1);
        // The rewritten module is valid and exports the global.
        let mut exports = Vec::new();
        for payload in Parser::new(0).parse_all(&prepared.instrumented) {
            if let Payload::ExportSection(r) = payload.expect("valid") {
                exports.extend(r.into_iter().map(|e| e.expect("export").name.to_string()));
            }
        }
        assert!(exports.contains(&"__vmi_global_0".to_string()));
        wasmparser::validate(&prepared.instrumented).expect("instrumented module validates");
    }

    #[test]
    fn refuses_shared_memory() {
        let m = wat(r#"(module (memory (export "memory") 1 1 shared)
            (func (export "vmi_init") (param i32 i32)) (func (export "vmi_event") (param i32 i32 i32 i32)))"#);
        assert_eq!(prepare(&m).unwrap_err(), ImageCheckError::SharedMemory(0));
    }

    #[test]
    fn refuses_unknown_imports_and_wrong_signatures() {
        let m =
            wat(r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "vmi_init") (param i32 i32)) (func (export "vmi_event") (param i32 i32 i32 i32)))"#);
        let err = prepare(&m).unwrap_err();
        assert_eq!(
            err,
            ImageCheckError::UnknownImport { module: "wasi_snapshot_preview1".into(), name: "fd_write".into() }
        );
        assert!(err.to_string().contains("wasi_snapshot_preview1.fd_write"));

        let m = wat(r#"(module (import "vmi" "clock_wall_ns" (func (result i32)))
            (memory (export "memory") 1)
            (func (export "vmi_init") (param i32 i32)) (func (export "vmi_event") (param i32 i32 i32 i32)))"#);
        assert!(matches!(prepare(&m).unwrap_err(), ImageCheckError::ImportSignature { .. }));
    }

    #[test]
    fn refuses_several_memories_and_imported_memory() {
        let m = wat(r#"(module (memory (export "memory") 1) (memory 1)
            (func (export "vmi_init") (param i32 i32)) (func (export "vmi_event") (param i32 i32 i32 i32)))"#);
        assert_eq!(prepare(&m).unwrap_err(), ImageCheckError::MemoryCount(2));
        let m = wat(r#"(module (import "vmi" "mem" (memory 1))
            (func (export "vmi_init") (param i32 i32)) (func (export "vmi_event") (param i32 i32 i32 i32)))"#);
        assert!(matches!(prepare(&m).unwrap_err(), ImageCheckError::NonFunctionImport { kind: "memory", .. }));
    }

    #[test]
    fn refuses_atomics_naming_them() {
        let m = wat(r#"(module (memory (export "memory") 1)
            (func (export "vmi_init") (param i32 i32) (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1))))
            (func (export "vmi_event") (param i32 i32 i32 i32)))"#);
        let err = prepare(&m).unwrap_err();
        assert!(matches!(err, ImageCheckError::Atomics(_)), "{err}");
        assert!(err.to_string().contains("threads support is not enabled"), "{err}");
    }

    #[test]
    fn refuses_table_mutation() {
        let m = wat(r#"(module (memory (export "memory") 1) (table 1 funcref)
            (func (export "vmi_init") (param i32 i32) (drop (table.grow 0 (ref.null func) (i32.const 1))))
            (func (export "vmi_event") (param i32 i32 i32 i32)))"#);
        assert_eq!(prepare(&m).unwrap_err(), ImageCheckError::ForbiddenInstruction { func: 0, op: "table.grow" });
    }

    /// A module with the given exports' definitions, the rest minimal and right.
    fn with_exports(memory: &str, init: &str, event: &str, extra: &str) -> Vec<u8> {
        wat(&format!(
            r#"(module (import "vmi" "timer_cancel" (func $cancel (param i32)))
            (memory $m 1) (global $g i32 (i32.const 1)) {memory} {init} {event} {extra})"#
        ))
    }
    const MEMORY: &str = r#"(export "memory" (memory $m))"#;
    const INIT: &str = r#"(func (export "vmi_init") (param i32 i32))"#;
    const EVENT: &str = r#"(func (export "vmi_event") (param i32 i32 i32 i32))"#;

    fn export_error(bytes: &[u8]) -> (ImageCheckError, String) {
        let err = prepare(bytes).expect_err("must be refused");
        let text = err.to_string();
        (err, text)
    }

    #[test]
    fn refuses_documented_exports_of_the_wrong_kind_or_signature() {
        prepare(&with_exports(MEMORY, INIT, EVENT, "")).expect("the right exports are accepted");
        let version = r#"(func (export "vmi_abi_version") (result i32) (i32.const 1))"#;
        prepare(&with_exports(MEMORY, INIT, EVENT, version)).expect("a right vmi_abi_version is accepted");

        let (err, text) =
            export_error(&with_exports(MEMORY, INIT, r#"(func (export "vmi_event") (param i32 i32 i32))"#, ""));
        assert_eq!(
            err,
            ImageCheckError::ExportType {
                name: "vmi_event",
                expected: "a function (i32, i32, i32, i32) -> ()".into(),
                found: "a function (i32, i32, i32) -> ()".into(),
            }
        );
        assert!(text.contains("`vmi_event`") && text.contains("expected a function (i32, i32, i32, i32)"), "{text}");

        let (err, text) = export_error(&with_exports(MEMORY, INIT, EVENT, r#"(export "vmi_abi_version" (global $g))"#));
        assert!(matches!(&err, ImageCheckError::ExportType { name: "vmi_abi_version", .. }), "{err:?}");
        assert!(text.contains("is a global of type i32, expected a function () -> (i32)"), "{text}");

        let wide = r#"(func (export "vmi_abi_version") (result i64) (i64.const 1))"#;
        let (err, text) = export_error(&with_exports(MEMORY, INIT, EVENT, wide));
        assert!(matches!(&err, ImageCheckError::ExportType { name: "vmi_abi_version", .. }), "{err:?}");
        assert!(text.contains("a function () -> (i64)"), "{text}");

        let (err, _) = export_error(&with_exports(MEMORY, r#"(func (export "vmi_init") (param i32))"#, EVENT, ""));
        assert!(matches!(&err, ImageCheckError::ExportType { name: "vmi_init", .. }), "{err:?}");
        // An imported function re-exported under an ABI name is checked like any other.
        let (err, text) = export_error(&with_exports(MEMORY, r#"(export "vmi_init" (func $cancel))"#, EVENT, ""));
        assert!(text.contains("`vmi_init` is a function (i32) -> ()"), "{err:?}");

        let (err, text) = export_error(&with_exports(r#"(func (export "memory"))"#, INIT, EVENT, ""));
        assert!(matches!(&err, ImageCheckError::ExportType { name: "memory", .. }), "{err:?}");
        assert!(text.contains("expected a memory"), "{text}");
        let (err, text) = export_error(&with_exports(MEMORY, INIT, r#"(export "vmi_event" (global $g))"#, ""));
        assert!(matches!(&err, ImageCheckError::ExportType { name: "vmi_event", .. }), "{err:?}");
        assert!(text.contains("is a global of type i32"), "{text}");
    }

    #[test]
    fn refuses_missing_exports_and_garbage() {
        let m = wat(r#"(module (memory (export "memory") 1) (func (export "vmi_init") (param i32 i32)))"#);
        assert_eq!(prepare(&m).unwrap_err(), ImageCheckError::MissingExport("vmi_event"));
        assert!(matches!(prepare(b"\0asm\x01\0\0\0\xff").unwrap_err(), ImageCheckError::Malformed(_)));
        assert!(matches!(prepare(b"hello").unwrap_err(), ImageCheckError::Malformed(_)));
    }
}
