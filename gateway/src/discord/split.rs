//! Splitting a long answer into Discord messages: each within the limit (counted in UTF-16
//! units, which is never less than Discord's count), cut at a paragraph, line or word break
//! when one is near the end, never inside a character; a code block cut in two is closed at
//! the end of one message and reopened (with its language) at the start of the next.

/// What ends a message whose code block continues in the next.
const CLOSE_FENCE: &str = "\n```";
/// What ends the last message when the answer needed more messages than allowed.
const TRUNCATED: &str = "\n*(answer truncated)*";

fn units(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Splits `text` into at most `max_parts` messages of at most `limit` UTF-16 units.
pub fn split(text: &str, limit: usize, max_parts: usize) -> Vec<String> {
    let text = text.trim_end();
    let mut parts = Vec::new();
    let mut rest = text;
    let mut reopen = String::new();
    while !rest.is_empty() {
        let room = limit.saturating_sub(units(&reopen));
        if units(rest) <= room {
            parts.push(format!("{reopen}{rest}"));
            break;
        }
        let (end, next) = cut(rest, room.saturating_sub(units(CLOSE_FENCE)).max(1));
        let mut part = format!("{reopen}{}", &rest[..end]);
        match open_fence(&part) {
            Some(lang) => {
                part.push_str(CLOSE_FENCE);
                reopen = format!("```{lang}\n");
            }
            None => reopen.clear(),
        }
        parts.push(part);
        rest = &rest[next..];
    }
    if parts.len() > max_parts.max(1) {
        parts.truncate(max_parts.max(1));
        if let Some(last) = parts.last_mut() {
            truncate_with_note(last, limit);
        }
    }
    parts
}

/// Where to cut `text` so that the head fits in `room` units: `(end of head, start of the
/// rest)`, the break character itself dropped.
fn cut(text: &str, room: usize) -> (usize, usize) {
    let mut max = 0;
    let mut used = 0;
    for (i, c) in text.char_indices() {
        used += c.len_utf16();
        if used > room {
            break;
        }
        max = i + c.len_utf8();
    }
    if max == 0 {
        // Not even one character fits (a room of 1 and a surrogate pair): take it anyway.
        let first = text.chars().next().map_or(0, char::len_utf8);
        return (first, first);
    }
    let window = &text[..max];
    let near_end = |p: usize| p > 0 && p >= max / 2;
    if let Some(p) = window.rfind("\n\n").filter(|&p| near_end(p)) {
        return (p, p + 2);
    }
    if let Some(p) = window.rfind('\n').filter(|&p| near_end(p)) {
        return (p, p + 1);
    }
    if let Some(p) = window.rfind([' ', '\t']).filter(|&p| near_end(p)) {
        return (p, p + 1);
    }
    (max, max)
}

/// The language of the code block still open at the end of `text`, if one is.
fn open_fence(text: &str) -> Option<String> {
    let mut open = None;
    for line in text.lines() {
        let Some(after) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        open = match open {
            Some(_) => None,
            None => {
                let lang = after.trim();
                let plain = lang.len() <= 20
                    && lang
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-#._".contains(c));
                Some(if plain {
                    lang.to_string()
                } else {
                    String::new()
                })
            }
        };
    }
    open
}

/// Shortens the last allowed message so that it ends with a note saying so.
fn truncate_with_note(part: &mut String, limit: usize) {
    let room = limit.saturating_sub(units(TRUNCATED) + units(CLOSE_FENCE));
    if part.ends_with(CLOSE_FENCE) {
        part.truncate(part.len() - CLOSE_FENCE.len());
    }
    while units(part) > room {
        part.pop();
    }
    if open_fence(part).is_some() {
        part.push_str(CLOSE_FENCE);
    }
    part.push_str(TRUNCATED);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_message() {
        assert_eq!(split("hello", 2000, 10), ["hello"]);
        assert!(split("  \n", 2000, 10).is_empty());
    }

    #[test]
    fn cuts_at_line_breaks_and_loses_nothing() {
        let lines: Vec<String> = (0..300)
            .map(|i| format!("line {i} of the answer"))
            .collect();
        let text = lines.join("\n");
        let parts = split(&text, 2000, 10);
        assert!(parts.len() >= 3, "{}", parts.len());
        assert!(parts.iter().all(|p| units(p) <= 2000));
        assert_eq!(parts.join("\n"), text);
    }

    #[test]
    fn never_splits_a_character() {
        // 3000 four-byte characters (two UTF-16 units each) and no break at all.
        let text = "🐉".repeat(3000);
        let parts = split(&text, 2000, 10);
        assert!(parts.iter().all(|p| units(p) <= 2000));
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn code_blocks_are_closed_and_reopened() {
        let code: Vec<String> = (0..200).map(|i| format!("let x{i} = {i};")).collect();
        let text = format!("Here:\n```rust\n{}\n```\nDone.", code.join("\n"));
        let parts = split(&text, 1000, 10);
        assert!(parts.len() >= 3);
        for (i, p) in parts.iter().enumerate() {
            assert!(units(p) <= 1000, "part {i} is {} long", units(p));
            assert!(open_fence(p).is_none(), "part {i} leaves a block open");
            if i > 0 {
                assert!(p.starts_with("```rust\n"), "part {i}: {p:.20}");
            }
        }
        assert!(parts.last().unwrap().ends_with("Done."));
    }

    #[test]
    fn too_many_parts_end_with_a_note() {
        let text = "word ".repeat(10_000);
        let parts = split(&text, 2000, 3);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| units(p) <= 2000));
        assert!(parts[2].ends_with(TRUNCATED));
    }
}
