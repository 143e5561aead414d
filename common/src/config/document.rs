//! The TOML side of the config: syntax, where each key is (line and
//! column), and deserialization that reports every bad key instead of only
//! the first.
//!
//! serde stops at the first error. To report them all, the parser is run
//! again on a copy of the document with the offending key (or `[[model]]`
//! entry) removed, until it succeeds. Each error is mapped back to the
//! original file by its key path, so line and column always refer to what
//! the user wrote.
#![forbid(unsafe_code)]

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, ImDocument, Item, TableLike, Value};

use super::{ConfigFile, ConfigProblem, Location, Place};

/// More bad keys than this in one file and the rest is not worth reporting.
const MAX_REPORTED_TYPE_ERRORS: usize = 50;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    Key(String),
    Index(usize),
}

/// Where a value lives in the document: `limits.queue_depth`,
/// `model[1].defaults.steps`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct KeyPath(pub(super) Vec<Segment>);

impl KeyPath {
    pub(super) fn key(&self, key: &str) -> KeyPath {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.to_owned()));
        path
    }

    pub(super) fn index(&self, index: usize) -> KeyPath {
        let mut path = self.clone();
        path.0.push(Segment::Index(index));
        path
    }

    pub(super) fn of(keys: &[&str]) -> KeyPath {
        KeyPath(
            keys.iter()
                .map(|key| Segment::Key((*key).to_owned()))
                .collect(),
        )
    }

    pub(super) fn model(index: usize) -> KeyPath {
        KeyPath::of(&["model"]).index(index)
    }

    fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Segment::Key(key)) => Some(key),
            _ => None,
        }
    }

    fn parent(&self) -> KeyPath {
        let mut path = self.clone();
        path.0.pop();
        path
    }

    /// How to name the table this path is in, for a fix: `[limits]`,
    /// `the [[model]] at model[1]`, `the top level`.
    fn table_name(&self) -> String {
        match self.0.as_slice() {
            [] => "the top level of the file".to_owned(),
            [Segment::Key(model), Segment::Index(_)] if model == "model" => {
                format!("the [[model]] table `{self}`")
            }
            _ => format!("[{self}]"),
        }
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if position == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// The original text of the file with the spans of its keys.
pub(super) struct SourceMap {
    file: PathBuf,
    text: String,
    document: Option<ImDocument<String>>,
}

impl SourceMap {
    /// The file and the line and column of the deepest part of `path` that
    /// the file contains: the key itself, or the table it would go in.
    pub(super) fn place(&self, path: &KeyPath) -> Place {
        let span = self
            .document
            .as_ref()
            .and_then(|document| span_of(document.as_table(), path));
        Place {
            file: self.file.clone(),
            location: span.map(|span| line_column(&self.text, span.start)),
        }
    }
}

/// What [`parse`] made of the text.
pub(super) struct Parsed {
    /// `None` when the text is not TOML or the errors could not be stepped
    /// over.
    pub(super) file: Option<ConfigFile>,
    /// For each entry of `file.models`, its index among the `[[model]]`
    /// tables of the original file (entries that failed to parse are gone).
    pub(super) model_origin: Vec<usize>,
    /// How many `[[model]]` tables the original file has.
    pub(super) models_in_file: usize,
    pub(super) source_map: SourceMap,
    pub(super) problems: Vec<ConfigProblem>,
}

pub(super) fn parse(text: &str, file: &Path) -> Parsed {
    let mut source_map = SourceMap {
        file: file.to_path_buf(),
        text: text.to_owned(),
        document: None,
    };
    let document = match ImDocument::parse(text.to_owned()) {
        Ok(document) => document,
        Err(error) => {
            let place = Place {
                file: file.to_path_buf(),
                location: error.span().map(|span| line_column(text, span.start)),
            };
            return Parsed {
                file: None,
                model_origin: Vec::new(),
                models_in_file: 0,
                source_map,
                problems: vec![ConfigProblem::Syntax {
                    place,
                    message: error.message().trim().to_owned(),
                }],
            };
        }
    };
    let models_in_file = model_count(&document);
    let mut working: DocumentMut = document.clone().into_mut();
    source_map.document = Some(document);

    let mut model_origin: Vec<usize> = (0..models_in_file).collect();
    let mut problems = Vec::new();
    let mut removed: Vec<KeyPath> = Vec::new();
    let mut stopped_early = false;
    let mut current = text.to_owned();
    for _ in 0..MAX_REPORTED_TYPE_ERRORS {
        let error = match toml::from_str::<ConfigFile>(&current) {
            Ok(file) => {
                return Parsed {
                    file: Some(file),
                    model_origin,
                    models_in_file,
                    source_map,
                    problems,
                }
            }
            Err(error) => error,
        };
        let here = ImDocument::parse(current.clone()).ok();
        let path = match (error.span(), &here) {
            (Some(span), Some(here)) => key_path_at(here.as_table(), span.start),
            _ => None,
        };
        let Some(path) = path.filter(|path| !path.0.is_empty()) else {
            // Nothing to step over; report it where the parser said and stop.
            let location = match error.span() {
                Some(span) if current == text => Some(line_column(text, span.start)),
                _ => None,
            };
            problems.push(problem_from_message(
                error.message(),
                &KeyPath::default(),
                Place {
                    file: file.to_path_buf(),
                    location,
                },
            ));
            stopped_early = true;
            break;
        };
        let original = to_original(&path, &model_origin);
        // A required key removed here for being bad is then also missing;
        // that was reported already.
        let follow_up = error.message().starts_with("missing field `")
            && backticked(error.message())
                .first()
                .is_some_and(|missing| removed.contains(&original.key(missing)));
        if !follow_up {
            problems.push(problem_from_message(
                error.message(),
                &original,
                source_map.place(&original),
            ));
        }
        removed.push(original);
        if !remove_path(working.as_table_mut(), &path.0) {
            stopped_early = true;
            break;
        }
        if let [Segment::Key(model), Segment::Index(index)] = path.0.as_slice() {
            if model == "model" && *index < model_origin.len() {
                model_origin.remove(*index);
            }
        }
        current = working.to_string();
    }
    if !stopped_early {
        problems.push(ConfigProblem::InvalidFile {
            path: file.to_path_buf(),
            problem: format!("has more than {MAX_REPORTED_TYPE_ERRORS} errors; checking stopped"),
            fix: "correct the errors above, then check again".into(),
        });
    }
    Parsed {
        file: None,
        model_origin,
        models_in_file,
        source_map,
        problems,
    }
}

fn model_count(document: &ImDocument<String>) -> usize {
    match document.as_table().get("model") {
        Some(Item::ArrayOfTables(tables)) => tables.len(),
        Some(Item::Value(Value::Array(array))) => array.len(),
        _ => 0,
    }
}

/// Maps a path in the working copy (where failed models are gone) to the
/// same place in the original file.
fn to_original(path: &KeyPath, model_origin: &[usize]) -> KeyPath {
    let mut original = path.clone();
    if let [Segment::Key(model), Segment::Index(index), ..] = original.0.as_mut_slice() {
        if model == "model" {
            if let Some(origin) = model_origin.get(*index) {
                *index = *origin;
            }
        }
    }
    original
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> Location {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    Location {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

fn contains(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|span| span.start <= offset && offset < span.end.max(span.start + 1))
}

/// The path of the deepest key or value whose span holds `offset`.
fn key_path_at(root: &dyn TableLike, offset: usize) -> Option<KeyPath> {
    let mut path = Vec::new();
    find_in_table(root, offset, &mut path).then_some(KeyPath(path))
}

fn find_in_table(table: &dyn TableLike, offset: usize, path: &mut Vec<Segment>) -> bool {
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        path.push(Segment::Key(name.to_owned()));
        if contains(key.span(), offset) || find_in_item(item, offset, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_item(item: &Item, offset: usize, path: &mut Vec<Segment>) -> bool {
    match item {
        Item::None => false,
        Item::Value(value) => find_in_value(value, offset, path),
        Item::Table(table) => find_in_table(table, offset, path) || contains(table.span(), offset),
        Item::ArrayOfTables(tables) => {
            for (index, table) in tables.iter().enumerate() {
                path.push(Segment::Index(index));
                if find_in_table(table, offset, path) || contains(table.span(), offset) {
                    return true;
                }
                path.pop();
            }
            false
        }
    }
}

fn find_in_value(value: &Value, offset: usize, path: &mut Vec<Segment>) -> bool {
    match value {
        Value::InlineTable(table) => {
            find_in_table(table, offset, path) || contains(value.span(), offset)
        }
        Value::Array(array) => {
            for (index, element) in array.iter().enumerate() {
                path.push(Segment::Index(index));
                if find_in_value(element, offset, path) {
                    return true;
                }
                path.pop();
            }
            contains(value.span(), offset)
        }
        _ => contains(value.span(), offset),
    }
}

/// A node of the parsed document, as far as a key path reaches.
enum Node<'a> {
    Table(&'a dyn TableLike),
    Item(&'a Item),
    Value(&'a Value),
}

fn step<'a>(node: Node<'a>, segment: &Segment) -> Option<(Node<'a>, Option<Range<usize>>)> {
    let table: &dyn TableLike = match (node, segment) {
        (Node::Table(table), Segment::Key(_)) => table,
        (Node::Item(item), Segment::Key(_)) => item.as_table_like()?,
        (Node::Value(value), Segment::Key(_)) => value.as_inline_table()?,
        (Node::Item(Item::ArrayOfTables(tables)), Segment::Index(index)) => {
            let table = tables.get(*index)?;
            return Some((Node::Table(table), table.span()));
        }
        (Node::Item(Item::Value(Value::Array(array))), Segment::Index(index))
        | (Node::Value(Value::Array(array)), Segment::Index(index)) => {
            let value = array.get(*index)?;
            return Some((Node::Value(value), value.span()));
        }
        _ => return None,
    };
    let Segment::Key(name) = segment else {
        return None;
    };
    let (key, item) = table.get_key_value(name)?;
    // A [table] is found at its header, everything else at its key.
    let span = match item {
        Item::Table(table) => table.span().or_else(|| key.span()),
        _ => key.span().or_else(|| item.span()),
    };
    Some((Node::Item(item), span))
}

/// The deepest span along `path`.
fn span_of(root: &dyn TableLike, path: &KeyPath) -> Option<Range<usize>> {
    let mut node = Node::Table(root);
    let mut span = None;
    for segment in &path.0 {
        match step(node, segment) {
            Some((next, next_span)) => {
                node = next;
                span = next_span.or(span);
            }
            None => break,
        }
    }
    span
}

fn remove_path(table: &mut dyn TableLike, path: &[Segment]) -> bool {
    match path {
        [Segment::Key(key)] => table.remove(key).is_some(),
        [Segment::Key(key), rest @ ..] => table
            .get_mut(key)
            .is_some_and(|item| remove_in_item(item, rest)),
        _ => false,
    }
}

fn remove_in_item(item: &mut Item, path: &[Segment]) -> bool {
    match (item, path) {
        (Item::ArrayOfTables(tables), [Segment::Index(index), rest @ ..]) => {
            if rest.is_empty() {
                if *index >= tables.len() {
                    return false;
                }
                tables.remove(*index);
                true
            } else {
                tables
                    .get_mut(*index)
                    .is_some_and(|table| remove_path(table, rest))
            }
        }
        (Item::Value(value), path) => remove_in_value(value, path),
        (item, path) => item
            .as_table_like_mut()
            .is_some_and(|table| remove_path(table, path)),
    }
}

fn remove_in_value(value: &mut Value, path: &[Segment]) -> bool {
    match (value, path) {
        (Value::Array(array), [Segment::Index(index), rest @ ..]) => {
            if rest.is_empty() {
                if *index >= array.len() {
                    return false;
                }
                array.remove(*index);
                true
            } else {
                array
                    .get_mut(*index)
                    .is_some_and(|element| remove_in_value(element, rest))
            }
        }
        (Value::InlineTable(table), path) => remove_path(table, path),
        _ => false,
    }
}

/// The names between backticks in a serde message, in order.
fn backticked(message: &str) -> Vec<String> {
    message
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Turns serde's wording into a problem that says what to write instead.
fn problem_from_message(message: &str, path: &KeyPath, place: Place) -> ConfigProblem {
    if message.starts_with("unknown field `") {
        let mut names = backticked(message);
        let unknown = if names.is_empty() {
            String::new()
        } else {
            names.remove(0)
        };
        // The span is on the key, so the path normally ends in it already.
        let (key, table) = if path.last_key() == Some(unknown.as_str()) {
            (path.clone(), path.parent())
        } else {
            (path.key(&unknown), path.clone())
        };
        let fix = match closest(&unknown, &names) {
            Some(suggestion) => format!(
                "did you mean `{suggestion}`? Correct the spelling, or remove `{unknown}` from {}",
                table.table_name()
            ),
            None => format!(
                "remove `{unknown}` from {} (see docs/CONFIG.md for every key)",
                table.table_name()
            ),
        };
        return ConfigProblem::UnknownKey {
            place,
            key: key.to_string(),
            valid: names,
            fix,
        };
    }
    if message.starts_with("missing field `") {
        let missing = backticked(message).into_iter().next().unwrap_or_default();
        return ConfigProblem::InvalidValue {
            place,
            key: path.key(&missing).to_string(),
            problem: "is required but missing".into(),
            fix: format!("add `{missing} = ...` to {}", path.table_name()),
        };
    }
    if message.starts_with("unknown variant `") {
        let mut names = backticked(message);
        let given = if names.is_empty() {
            String::new()
        } else {
            names.remove(0)
        };
        let choices = names
            .iter()
            .map(|name| format!("\"{name}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let fix = match closest(&given, &names) {
            Some(suggestion) => format!("did you mean \"{suggestion}\"? Use one of: {choices}"),
            None => format!("use one of: {choices}"),
        };
        return ConfigProblem::InvalidValue {
            place,
            key: path.to_string(),
            problem: format!("is \"{given}\", which is not one of the allowed values"),
            fix,
        };
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
            return ConfigProblem::InvalidValue {
                place,
                key: path.to_string(),
                problem: format!("has the wrong type or value: found {found}, expected {expected}"),
                fix: format!("write {}", describe_expected(expected)),
            };
        }
    }
    // Our own messages (e.g. Device) carry their fix after "; fix: ".
    let (problem, fix) = message
        .split_once("; fix: ")
        .unwrap_or((message, "correct this value (see docs/CONFIG.md)"));
    ConfigProblem::InvalidValue {
        place,
        key: path.to_string(),
        problem: problem.to_owned(),
        fix: fix.to_owned(),
    }
}

fn describe_expected(expected: &str) -> String {
    match expected {
        "u32" => "a whole number from 0 to 4294967295, without quotes".into(),
        "u64" => "a whole number of 0 or more, without quotes".into(),
        "f32" | "f64" => "a number like 7.5, without quotes".into(),
        "a boolean" => "true or false, without quotes".into(),
        "a string" => "a string in double quotes, like \"text\"".into(),
        "a sequence" => "an array, or [[tables]]".into(),
        other if other.starts_with("struct ") || other == "a map" => {
            "a table: a [section] of key = value lines".into()
        }
        other => other.into(),
    }
}

/// The candidate closest to `given`, if it is close enough to be a typo.
pub(super) fn closest<'a>(given: &str, candidates: &'a [String]) -> Option<&'a str> {
    let limit = 1 + given.chars().count() / 4;
    candidates
        .iter()
        .map(|candidate| (edit_distance(given, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate.as_str())
}

/// Levenshtein distance, with a swap of two neighbours counting as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut table = vec![0usize; (a.len() + 1) * width];
    for (i, row) in table.chunks_mut(width).enumerate() {
        row[0] = i;
    }
    for (j, cell) in table.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (table[(i - 1) * width + j] + 1)
                .min(table[i * width + j - 1] + 1)
                .min(table[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(table[(i - 2) * width + j - 2] + 1);
            }
            table[i * width + j] = best;
        }
    }
    table[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn line_and_column_count_from_one_in_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), Location { line: 1, column: 1 });
        let offset = text.find('=').unwrap();
        assert_eq!(line_column(text, offset), Location { line: 1, column: 3 });
        let second = text.rfind('=').unwrap();
        assert_eq!(line_column(text, second), Location { line: 2, column: 4 });
    }

    #[test]
    fn key_paths_reach_into_tables_arrays_and_inline_tables() {
        let text = "[limits]\nqueue_depth = 3\n\n[[model]]\nid = \"a\"\n\n[[model]]\nid = \"b\"\ndefaults = { steps = 9 }\n";
        let document = ImDocument::parse(text.to_owned()).unwrap();
        let at = |needle: &str| {
            key_path_at(document.as_table(), text.find(needle).unwrap())
                .unwrap()
                .to_string()
        };
        assert_eq!(at("queue_depth"), "limits.queue_depth");
        assert_eq!(at("3"), "limits.queue_depth");
        assert_eq!(at("\"b\""), "model[1].id");
        assert_eq!(at("9"), "model[1].defaults.steps");

        let path = KeyPath::model(1).key("defaults").key("steps");
        let span = span_of(document.as_table(), &path).unwrap();
        assert_eq!(
            line_column(text, span.start),
            Location {
                line: 9,
                column: 14
            }
        );
    }

    #[test]
    fn typos_find_their_key_and_strangers_do_not() {
        let keys = ["queue_depth".to_owned(), "rate_burst".to_owned()];
        assert_eq!(closest("queue_dpeth", &keys), Some("queue_depth"));
        assert_eq!(closest("rate_brust", &keys), Some("rate_burst"));
        assert_eq!(closest("colour", &keys), None);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", "abc"), 0);
    }
}
