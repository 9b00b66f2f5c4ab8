//! Where a TOML config file says something, for errors that name file, line and field.
//!
//! Every config loader in Warden (the unit's `warden.toml`, the fleet's `fleet.toml`,
//! the station's `station.toml`, a BLE bridge's file) reports a bad value as
//! `path:line:column: field: message`. toml gives byte offsets (spans); these two
//! functions turn an offset, or a field path such as `api.tokens[1].sha256`, into the
//! 1-based line and column a person looks for in an editor.

use toml::de::{DeTable, DeValue};

/// The 1-based line and column (in characters) of byte `offset` in `text`.
///
/// An offset past the end, or inside a multi-byte character, counts from the nearest
/// character boundary before it: a position is for a person to look at, never a
/// reason to panic.
pub fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Where `text` sets `field` (a dotted TOML path with array indexes,
/// `bridges.modbus_tcp[0].points[1].name`): the line and column of its value, or of
/// the nearest enclosing table or array element the file has; `None` when the file
/// does not mention even the first key (the value is a default) or does not parse.
pub fn locate(text: &str, field: &str) -> Option<(usize, usize)> {
    let root = DeTable::parse(text).ok()?;
    let mut found: Option<usize> = None;
    let mut table = Some(root.get_ref());
    'path: for part in field.split('.') {
        let (key, indexes) = part.split_once('[').unwrap_or((part, ""));
        let Some(current) = table else { break };
        let Some((_, mut value)) = current.iter().find(|(name, _)| name.get_ref() == key) else {
            break;
        };
        found = Some(value.span().start);
        for index in indexes
            .split('[')
            .filter_map(|index| index.trim_end_matches(']').parse::<usize>().ok())
        {
            let Some(item) = (match value.get_ref() {
                DeValue::Array(items) => items.get(index),
                _ => None,
            }) else {
                break 'path;
            };
            value = item;
            found = Some(value.span().start);
        }
        table = value.get_ref().as_table();
    }
    found.map(|offset| line_and_column(text, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "title = \"unit\"\n\n[api]\ntokens = [\n  { sha256 = \"aa\" },\n  { sha256 = \"bb\" },\n]\n\n[[bridges]]\nname = \"pump\"\n";

    #[test]
    fn an_offset_becomes_line_and_column_from_one() {
        assert_eq!(line_and_column(CONFIG, 0), (1, 1));
        let offset = CONFIG.find("[api]").expect("in the text");
        assert_eq!(line_and_column(CONFIG, offset), (3, 1));
        let offset = CONFIG.find("\"unit\"").expect("in the text");
        assert_eq!(line_and_column(CONFIG, offset), (1, 9));
    }

    #[test]
    fn columns_count_characters_and_bad_offsets_do_not_panic() {
        let text = "name = \"Zürich\"\nx";
        let after_umlaut = text.find("rich").expect("in the text");
        assert_eq!(line_and_column(text, after_umlaut), (1, 11));
        // Inside the two bytes of `ü`: counted from the character's start.
        let inside = text.find('ü').expect("in the text") + 1;
        assert_eq!(line_and_column(text, inside), (1, 10));
        assert_eq!(line_and_column(text, 10_000), (2, 2));
    }

    #[test]
    fn a_field_path_is_found_down_to_its_array_element() {
        assert_eq!(locate(CONFIG, "api.tokens[1].sha256"), Some((6, 14)));
        assert_eq!(locate(CONFIG, "api.tokens[0]"), Some((5, 3)));
        assert_eq!(locate(CONFIG, "bridges[0].name"), Some((10, 8)));
    }

    #[test]
    fn a_missing_field_points_at_its_nearest_enclosing_table() {
        // `api.tokens[7]` does not exist: the array is where to look.
        assert_eq!(locate(CONFIG, "api.tokens[7].sha256"), Some((4, 10)));
        assert_eq!(locate(CONFIG, "api.listen"), locate(CONFIG, "api"));
        assert_eq!(locate(CONFIG, "metrics.listen"), None);
        assert_eq!(locate("not toml [", "api"), None);
    }
}
