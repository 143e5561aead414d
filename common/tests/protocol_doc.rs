//! Keeps docs/PROTOCOL.md and the code from drifting apart.
//!
//! Every fenced block tagged ```` ```hex example=NAME ```` in the document
//! must be exactly what [`examples`] (in `protocol_examples/`) produces for NAME: the same bytes (the
//! frame the code encodes, which must also decode back to the same value)
//! and the same annotations. The annotations come from [`Annotator`], a
//! second, independent encoder written from the rules in the document's
//! "Encoding" section; its bytes must equal postcard's, so the rules a Go
//! client would follow are checked too.
//!
//! After changing a message, regenerate the blocks with
//! `cargo test -p weave-common --test protocol_doc -- --ignored --nocapture print_examples`
//! and paste them into the document.

#![allow(clippy::unwrap_used)]

mod protocol_examples;

use std::collections::BTreeSet;
use std::fmt;

use protocol_examples::{every_error_code, examples};
use serde::ser::{self, Serialize};
use weave_common::proto::{
    decode_request, decode_response, encode_request, encode_response, Request, Response,
    DEFAULT_MAX_RESPONSE_FRAME, FRAME_PREFIX_LEN, PROTOCOL_VERSION,
};

const PROTOCOL_MD: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md"));
const BLOCK_MARKER: &str = "```hex example=";

enum Example {
    Request(Request),
    Response(Response),
}

impl Example {
    fn encode(&self) -> Vec<u8> {
        match self {
            Example::Request(request) => encode_request(request).unwrap(),
            Example::Response(response) => encode_response(response).unwrap(),
        }
    }

    fn annotate(&self) -> Vec<Annotation> {
        let mut annotator = Annotator::default();
        match self {
            Example::Request(request) => request.serialize(&mut annotator).unwrap(),
            Example::Response(response) => response.serialize(&mut annotator).unwrap(),
        }
        annotator.finish()
    }

    /// Decodes `frame` as this example's message type and checks equality.
    fn assert_decodes_to_self(&self, name: &str, frame: &[u8]) {
        match self {
            Example::Request(request) => {
                assert_eq!(&decode_request(frame).unwrap(), request, "{name}")
            }
            Example::Response(response) => assert_eq!(
                &decode_response(frame, DEFAULT_MAX_RESPONSE_FRAME).unwrap(),
                response,
                "{name}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing the document.

struct DocBlock {
    name: String,
    /// Lines of the block, trimmed at the end.
    lines: Vec<String>,
}

fn doc_blocks() -> Vec<DocBlock> {
    let mut blocks = Vec::new();
    let mut lines = PROTOCOL_MD.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim().strip_prefix(BLOCK_MARKER) else {
            continue;
        };
        let mut body = Vec::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            body.push(line.trim_end().to_owned());
        }
        blocks.push(DocBlock {
            name: name.trim().to_owned(),
            lines: body,
        });
    }
    blocks
}

/// Hex pairs of a block; `#` starts a comment that runs to the end of line.
fn parse_hex(name: &str, lines: &[String]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in lines {
        let data = line.split('#').next().unwrap_or_default();
        for pair in data.split_whitespace() {
            let byte = u8::from_str_radix(pair, 16)
                .unwrap_or_else(|_| panic!("{name}: {pair:?} is not a hex byte"));
            assert_eq!(pair.len(), 2, "{name}: write bytes as two hex digits");
            bytes.push(byte);
        }
    }
    bytes
}

// ---------------------------------------------------------------------------
// The independent encoder that also explains every byte.

/// One run of bytes and what they encode.
struct Annotation {
    bytes: Vec<u8>,
    note: String,
    /// Consecutive `u8` elements of one sequence are shown as one run.
    raw_seq_byte: bool,
}

#[derive(Default)]
struct Annotator {
    annotations: Vec<Annotation>,
    /// Field path of the value being written, e.g. `.defaults.width`.
    path: Vec<String>,
}

#[derive(Debug)]
struct AnnotateError(String);

impl fmt::Display for AnnotateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AnnotateError {}

impl ser::Error for AnnotateError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        AnnotateError(msg.to_string())
    }
}

/// LEB128: 7 bits per byte, least significant group first, high bit set on
/// every byte but the last.
fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(low);
            return out;
        }
        out.push(low | 0x80);
    }
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

impl Annotator {
    fn here(&self) -> String {
        if self.path.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.path.concat())
        }
    }

    fn push(&mut self, bytes: Vec<u8>, what: String) {
        let note = format!("{}{what}", self.here());
        self.annotations.push(Annotation {
            bytes,
            note,
            raw_seq_byte: false,
        });
    }

    fn variant(&mut self, name: &str, index: u32, variant: &str) {
        self.push(
            varint(u64::from(index)),
            format!("{name}::{variant} (variant {index})"),
        );
    }

    /// Merges runs of sequence bytes, prepends the frame prefix.
    fn finish(self) -> Vec<Annotation> {
        let mut merged: Vec<Annotation> = Vec::new();
        for annotation in self.annotations {
            if let Some(last) = merged.last_mut() {
                if annotation.raw_seq_byte && last.raw_seq_byte {
                    last.bytes.extend(annotation.bytes);
                    continue;
                }
            }
            merged.push(annotation);
        }
        for annotation in &mut merged {
            if annotation.raw_seq_byte {
                annotation.note = format!("{} raw bytes", annotation.bytes.len());
            }
        }
        let body_len: usize = merged.iter().map(|a| a.bytes.len()).sum();
        let prefix = u32::try_from(body_len).unwrap().to_le_bytes().to_vec();
        merged.insert(
            0,
            Annotation {
                bytes: prefix,
                note: format!("frame prefix: body length {body_len} (u32 little-endian)"),
                raw_seq_byte: false,
            },
        );
        merged
    }
}

/// Renders annotations as the document shows them: up to 16 bytes per line,
/// the note on the first line of each run.
fn render(annotations: &[Annotation]) -> Vec<String> {
    const BYTES_PER_LINE: usize = 16;
    let width = BYTES_PER_LINE * 3;
    let mut lines = Vec::new();
    for annotation in annotations {
        for (row, chunk) in annotation.bytes.chunks(BYTES_PER_LINE).enumerate() {
            let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            let hex = hex.join(" ");
            if row == 0 {
                lines.push(format!("{hex:<width$}# {}", annotation.note));
            } else {
                lines.push(hex);
            }
        }
    }
    lines
}

impl ser::Serializer for &mut Annotator {
    type Ok = ();
    type Error = AnnotateError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, v: bool) -> Result<(), AnnotateError> {
        self.push(vec![u8::from(v)], format!("bool {v}"));
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), AnnotateError> {
        self.push(v.to_le_bytes().to_vec(), format!("i8 {v}"));
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result<(), AnnotateError> {
        self.push(varint(zigzag(v.into())), format!("i16 {v} (zigzag varint)"));
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), AnnotateError> {
        self.push(varint(zigzag(v.into())), format!("i32 {v} (zigzag varint)"));
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), AnnotateError> {
        self.push(varint(zigzag(v)), format!("i64 {v} (zigzag varint)"));
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), AnnotateError> {
        // Inside a sequence (the PNG) these are merged into one run.
        let in_seq = self.path.last().is_some_and(|p| p.starts_with('['));
        self.annotations.push(Annotation {
            bytes: vec![v],
            note: format!("u8 {v}"),
            raw_seq_byte: in_seq,
        });
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), AnnotateError> {
        self.push(varint(v.into()), format!("u16 {v} (varint)"));
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), AnnotateError> {
        self.push(varint(v.into()), format!("u32 {v} (varint)"));
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), AnnotateError> {
        self.push(varint(v), format!("u64 {v} (varint)"));
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), AnnotateError> {
        self.push(
            v.to_le_bytes().to_vec(),
            format!("f32 {v:?} (IEEE 754, little-endian)"),
        );
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), AnnotateError> {
        self.push(
            v.to_le_bytes().to_vec(),
            format!("f64 {v:?} (IEEE 754, little-endian)"),
        );
        Ok(())
    }
    fn serialize_char(self, _v: char) -> Result<(), AnnotateError> {
        Err(ser::Error::custom("char is not used by the protocol"))
    }
    fn serialize_str(self, v: &str) -> Result<(), AnnotateError> {
        let mut bytes = varint(v.len() as u64);
        bytes.extend_from_slice(v.as_bytes());
        self.push(
            bytes,
            format!("string {v:?}: length {} (varint), UTF-8 bytes", v.len()),
        );
        Ok(())
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<(), AnnotateError> {
        Err(ser::Error::custom(
            "byte arrays are sent as Vec<u8> sequences",
        ))
    }
    fn serialize_none(self) -> Result<(), AnnotateError> {
        self.push(vec![0], "Option: None".into());
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), AnnotateError> {
        self.push(vec![1], "Option: Some".into());
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), AnnotateError> {
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), AnnotateError> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<(), AnnotateError> {
        self.variant(name, index, variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), AnnotateError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), AnnotateError> {
        // The variant's single value follows the index; its fields are shown
        // as if they were the variant's own.
        self.variant(name, index, variant);
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, AnnotateError> {
        let len = len.ok_or_else(|| ser::Error::custom("sequence without a length"))?;
        self.push(
            varint(len as u64),
            format!("sequence of {len} elements (varint)"),
        );
        self.path.push("[".into());
        Ok(self)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self, AnnotateError> {
        Err(ser::Error::custom("tuples are not used by the protocol"))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self, AnnotateError> {
        Err(ser::Error::custom(
            "tuple structs are not used by the protocol",
        ))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, AnnotateError> {
        Err(ser::Error::custom(
            "tuple variants are not used by the protocol",
        ))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self, AnnotateError> {
        Err(ser::Error::custom("maps are not used by the protocol"))
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, AnnotateError> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self, AnnotateError> {
        self.variant(name, index, variant);
        Ok(self)
    }
}

/// Sequence elements are numbered in the path: `[0]`, `[1]`, ...
impl ser::SerializeSeq for &mut Annotator {
    type Ok = ();
    type Error = AnnotateError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), AnnotateError> {
        let counter = self.path.pop().unwrap_or_default();
        let index = counter
            .trim_start_matches('[')
            .parse::<usize>()
            .unwrap_or(0);
        self.path.push(format!("[{index}]"));
        value.serialize(&mut **self)?;
        self.path.pop();
        self.path.push(format!("[{}", index + 1));
        Ok(())
    }
    fn end(self) -> Result<(), AnnotateError> {
        self.path.pop();
        Ok(())
    }
}

fn field<T: ?Sized + Serialize>(
    annotator: &mut Annotator,
    key: &'static str,
    value: &T,
) -> Result<(), AnnotateError> {
    annotator.path.push(format!(".{key}"));
    value.serialize(&mut *annotator)?;
    annotator.path.pop();
    Ok(())
}

impl ser::SerializeStruct for &mut Annotator {
    type Ok = ();
    type Error = AnnotateError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), AnnotateError> {
        field(self, key, value)
    }
    fn end(self) -> Result<(), AnnotateError> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut Annotator {
    type Ok = ();
    type Error = AnnotateError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), AnnotateError> {
        field(self, key, value)
    }
    fn end(self) -> Result<(), AnnotateError> {
        Ok(())
    }
}

macro_rules! unsupported_compound {
    ($trait:ident, $method:ident) => {
        impl ser::$trait for &mut Annotator {
            type Ok = ();
            type Error = AnnotateError;
            fn $method<T: ?Sized + Serialize>(&mut self, _value: &T) -> Result<(), AnnotateError> {
                Err(ser::Error::custom("not used by the protocol"))
            }
            fn end(self) -> Result<(), AnnotateError> {
                Ok(())
            }
        }
    };
}
unsupported_compound!(SerializeTuple, serialize_element);
unsupported_compound!(SerializeTupleStruct, serialize_field);
unsupported_compound!(SerializeTupleVariant, serialize_field);

impl ser::SerializeMap for &mut Annotator {
    type Ok = ();
    type Error = AnnotateError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, _key: &T) -> Result<(), AnnotateError> {
        Err(ser::Error::custom("maps are not used by the protocol"))
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, _value: &T) -> Result<(), AnnotateError> {
        Err(ser::Error::custom("maps are not used by the protocol"))
    }
    fn end(self) -> Result<(), AnnotateError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn documented_rules_produce_postcards_bytes() {
    for (name, example) in examples() {
        let frame = example.encode();
        let annotated: Vec<u8> = example
            .annotate()
            .into_iter()
            .flat_map(|a| a.bytes)
            .collect();
        assert_eq!(
            annotated, frame,
            "{name}: documented encoding differs from postcard"
        );
    }
}

#[test]
fn document_examples_match_the_code_byte_for_byte() {
    let examples = examples();
    let blocks = doc_blocks();
    assert!(
        !blocks.is_empty(),
        "no `{BLOCK_MARKER}` blocks in PROTOCOL.md"
    );
    let mut seen = BTreeSet::new();
    for block in &blocks {
        let name = block.name.as_str();
        assert!(seen.insert(name), "{name}: shown twice in PROTOCOL.md");
        let example = examples.get(name).unwrap_or_else(|| {
            panic!("{name}: PROTOCOL.md shows an example the test does not know")
        });
        let documented = parse_hex(name, &block.lines);
        let encoded = example.encode();
        assert_eq!(
            hex(&documented),
            hex(&encoded),
            "{name}: PROTOCOL.md bytes differ from the code; regenerate the block"
        );
        example.assert_decodes_to_self(name, &documented);
        assert_eq!(
            block.lines,
            render(&example.annotate()),
            "{name}: annotations differ; regenerate the block"
        );
    }
    let missing: Vec<_> = examples
        .keys()
        .filter(|name| !seen.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "PROTOCOL.md lacks examples: {missing:?}"
    );
}

#[test]
fn examples_cover_every_variant() {
    let mut request_indices = BTreeSet::new();
    let mut response_indices = BTreeSet::new();
    for example in examples().values() {
        let index = example.encode()[FRAME_PREFIX_LEN];
        match example {
            Example::Request(_) => request_indices.insert(index),
            Example::Response(_) => response_indices.insert(index),
        };
    }
    assert_eq!(
        request_indices,
        (0..16).collect(),
        "one example per Request variant"
    );
    assert_eq!(
        response_indices,
        (0..14).collect(),
        "one example per Response variant"
    );
}

#[test]
fn document_states_the_constants_the_code_uses() {
    for needle in [
        format!("`PROTOCOL_VERSION` = {PROTOCOL_VERSION}"),
        format!(
            "`MAX_REQUEST_FRAME` = {}",
            weave_common::proto::MAX_REQUEST_FRAME
        ),
        format!("`DEFAULT_MAX_RESPONSE_FRAME` = {DEFAULT_MAX_RESPONSE_FRAME}"),
        format!(
            "`DEFAULT_MAX_IMAGE_REQUEST_FRAME` = {}",
            weave_common::proto::DEFAULT_MAX_IMAGE_REQUEST_FRAME
        ),
        format!(
            "`MAX_IMAGE_REQUEST_FRAME` = {}",
            weave_common::proto::MAX_IMAGE_REQUEST_FRAME
        ),
        format!("default strength {}", weave_common::image::DEFAULT_STRENGTH),
    ] {
        assert!(
            PROTOCOL_MD.contains(&needle),
            "PROTOCOL.md must state {needle}"
        );
    }
    for code in every_error_code() {
        let row = format!("| {} | `{}` |", code.code(), code.name());
        assert!(
            PROTOCOL_MD.contains(&row),
            "PROTOCOL.md error table lacks {row}"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x} ")).collect()
}

/// Prints every example block, ready to paste into PROTOCOL.md.
#[test]
#[ignore = "generator for docs/PROTOCOL.md, run by hand"]
fn print_examples() {
    for (name, example) in examples() {
        println!("{BLOCK_MARKER}{name}");
        for line in render(&example.annotate()) {
            println!("{line}");
        }
        println!("```\n");
    }
}
