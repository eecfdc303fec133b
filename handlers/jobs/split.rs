//! Splitting a long text into parts that each fit a token budget, and the token estimate the
//! budget is measured in. Pure functions: no I/O, no allocation of the text (parts are slices).
//!
//! Parts end on the coarsest boundary that works: a paragraph (a blank line), else a line or a
//! sentence (`.`, `!`, `?` and their CJK forms, followed by white space), else a word, else a
//! character. Parts are balanced (about the same size), so the parallel calls finish together.
//!
//! The estimate (`openai::context::estimated_tokens`) is deliberately conservative instead of exact: a real tokenizer for the gpt-4o /
//! gpt-5 family (`tiktoken-rs` with `o200k_base`) embeds its 3.6 MB vocabulary but costs about
//! 50 MB of resident memory and 0.2-0.3 s to load (measured; see docs/long-documents.md), which
//! the handler's memory budget cannot carry. English averages about 4 characters a token in
//! those tokenizers; counting 3 ASCII characters a token and one token for every other
//! character over-estimates nearly every text, and where it does not, the service's
//! `context_length_exceeded` answer states the real count and the client learns the ratio.

use crate::openai::context::estimated_thirds as thirds;
#[cfg(test)]
use crate::openai::context::estimated_tokens;

/// Splits `text` into contiguous parts of at most `max_tokens` estimated tokens each (at least
/// 1), as few as that allows and about equally large. Concatenated, the parts are `text`.
pub fn split(text: &str, max_tokens: usize) -> Vec<&str> {
    let max = max_tokens.max(1) * 3;
    let total = thirds(text);
    if total <= max {
        return vec![text];
    }
    let mut packer = Packer { max, remaining: total, parts: Vec::new() };
    packer.pack(text, Level::Paragraph);
    packer.parts
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Paragraph,
    Sentence,
    Word,
    Character,
}

impl Level {
    fn finer(self) -> Self {
        match self {
            Self::Paragraph => Self::Sentence,
            Self::Sentence => Self::Word,
            Self::Word | Self::Character => Self::Character,
        }
    }
}

struct Packer<'a> {
    /// Largest part, in thirds of a token.
    max: usize,
    /// Thirds not yet in a part.
    remaining: usize,
    parts: Vec<&'a str>,
}

impl<'a> Packer<'a> {
    /// The size to aim for: what is left, shared equally among the fewest parts that hold it.
    /// Recomputed for every part, so the last parts are not left small.
    fn target(&self) -> usize {
        self.remaining.div_ceil(self.remaining.div_ceil(self.max).max(1))
    }

    fn push(&mut self, part: &'a str, size: usize) {
        self.parts.push(part);
        self.remaining = self.remaining.saturating_sub(size);
    }

    /// Greedy packing of `text`'s pieces at `level` into parts of about the target (never
    /// over the maximum); a piece larger than the maximum is packed again at a finer level.
    fn pack(&mut self, text: &'a str, level: Level) {
        if level == Level::Character {
            return self.pack_characters(text);
        }
        let (mut start, mut size, mut end) = (0, 0, 0);
        let mut target = self.target();
        for piece in pieces(text, level) {
            let piece_size = thirds(piece);
            let piece_start = end;
            end += piece.len();
            if piece_size > self.max {
                if size > 0 {
                    self.push(&text[start..piece_start], size);
                }
                self.pack(piece, level.finer());
                (start, size, target) = (end, 0, self.target());
                continue;
            }
            if size > 0 && (size + piece_size > self.max || size >= target) {
                self.push(&text[start..piece_start], size);
                (start, size, target) = (piece_start, 0, self.target());
            }
            size += piece_size;
        }
        if start < text.len() {
            self.push(&text[start..], size);
        }
    }

    /// One word longer than a part: cut between characters (without listing them one by one).
    fn pack_characters(&mut self, text: &'a str) {
        let (mut start, mut size) = (0, 0);
        let mut target = self.target();
        for (i, c) in text.char_indices() {
            let cost = if c.is_ascii() { 1 } else { 3 };
            if size > 0 && (size + cost > self.max || size >= target) {
                self.push(&text[start..i], size);
                (start, size, target) = (i, 0, self.target());
            }
            size += cost;
        }
        if start < text.len() {
            self.push(&text[start..], size);
        }
    }
}

/// Contiguous pieces of `text` at `level`, each with its trailing separator; concatenated
/// they are `text`.
fn pieces(text: &str, level: Level) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        let boundary = match level {
            // The end of a run of white space that holds two line breaks.
            Level::Paragraph => {
                c == '\n' && !next.is_some_and(char::is_whitespace) && {
                    let seg = &text[start..=i];
                    seg[seg.trim_end().len()..].matches('\n').count() >= 2
                }
            }
            Level::Sentence => {
                (c == '\n' || (matches!(c, '.' | '!' | '?') && next.is_some_and(char::is_whitespace)))
                    || matches!(c, '。' | '！' | '？')
            }
            Level::Word | Level::Character => c.is_whitespace() && !next.is_some_and(char::is_whitespace),
        };
        if boundary {
            let end = i + c.len_utf8();
            // Sentence ends keep the white space that follows them.
            let end = if level == Level::Sentence && c != '\n' {
                end + text[end..].len() - text[end..].trim_start_matches([' ', '\t']).len()
            } else {
                end
            };
            if end > start {
                out.push(&text[start..end]);
                start = end;
                while chars.peek().is_some_and(|&(j, _)| j < start) {
                    chars.next();
                }
            }
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, max_tokens: usize) -> Vec<&str> {
        let parts = split(text, max_tokens);
        assert_eq!(parts.concat(), text, "parts must cover the text exactly");
        for part in &parts {
            assert!(estimated_tokens(part) <= max_tokens, "{} > {max_tokens}: {part:?}", estimated_tokens(part));
            assert!(!part.is_empty());
        }
        parts
    }

    #[test]
    fn the_estimate_is_conservative() {
        assert_eq!(estimated_tokens(""), 0);
        assert_eq!(estimated_tokens("abc"), 1);
        assert_eq!(estimated_tokens("abcd"), 2);
        assert_eq!(estimated_tokens("日本語"), 3);
        assert_eq!(estimated_tokens("héllo"), 3);
    }

    #[test]
    fn a_short_text_is_one_part() {
        assert_eq!(check("Hello world.", 100), vec!["Hello world."]);
    }

    #[test]
    fn paragraphs_are_kept_whole_and_parts_balanced() {
        let paragraph = "Word ".repeat(59) + "end.";
        let text = [paragraph.as_str(); 10].join("\n\n");
        // Each paragraph is 300 characters = 100 tokens; 10 paragraphs into parts of <= 450.
        let parts = check(&text, 450);
        assert_eq!(parts.len(), 3, "{parts:?}");
        for part in &parts {
            assert!(part.trim_end().ends_with("end."), "cut inside a paragraph: {part:?}");
        }
        let sizes: Vec<usize> = parts.iter().map(|p| estimated_tokens(p)).collect();
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 110, "{sizes:?}");
    }

    #[test]
    fn a_long_paragraph_is_cut_between_sentences() {
        let text = "This is one sentence of the paragraph. ".repeat(40);
        let parts = check(&text, 100);
        assert!(parts.len() >= 6, "{}", parts.len());
        for part in &parts[..parts.len() - 1] {
            assert!(part.ends_with("paragraph. "), "{part:?}");
        }
    }

    #[test]
    fn words_then_characters_when_nothing_else_fits() {
        let text = "word ".repeat(100);
        let parts = check(&text, 10);
        assert!(parts.iter().all(|p| p.starts_with("word")), "{parts:?}");
        let text = "x".repeat(100);
        assert_eq!(check(&text, 10).len(), 4);
        let cjk = "文".repeat(25) + "。" + &"字".repeat(25);
        let parts = check(&cjk, 30);
        assert!(parts[0].ends_with('。'), "{parts:?}");
    }

    #[test]
    fn blank_lines_with_spaces_and_crlf_separate_paragraphs() {
        let text = "First paragraph.\r\n \r\nSecond paragraph.\n\n\nThird paragraph.";
        let parts = check(text, 7);
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert!(parts[1].starts_with("Second"), "{parts:?}");
    }

    #[test]
    fn a_million_characters_split_quickly_into_slices() {
        let text = "A sentence of a long report. ".repeat(34_483);
        let parts = check(&text, 12_000);
        assert!(parts.len() >= 28 && parts.len() <= 30, "{}", parts.len());
    }
}
