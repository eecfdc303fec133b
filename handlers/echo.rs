//! Echoing untrusted text (a field name, an id, an upstream message, a log field): control
//! characters escaped, so nothing can forge a log line or a header, and length bounded, so
//! nothing can flood a log or overflow a Result's 64 KiB queue message.

use std::fmt::{self, Write};

/// Longest echo of client input in an error message or a Result (characters).
pub const ECHO_CHARS: usize = 100;

/// `text` escaped and cut to [`ECHO_CHARS`] characters.
pub fn echo(text: &str) -> String {
    echo_n(text, ECHO_CHARS)
}

/// `text` escaped and cut to `max_chars` characters (plus a note of what was cut).
pub fn echo_n(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars + 32));
    let mut writer = Escaper::new(&mut out, max_chars);
    let _ = writer.write_str(text);
    let _ = writer.finish();
    out
}

/// A `fmt::Write` adapter: escapes control characters (`\n`, `\r`, `\t`, `\u{..}`, and the
/// Unicode line and paragraph separators) and stops after `max_chars`, counting the rest.
pub struct Escaper<'a, W: Write> {
    out: &'a mut W,
    remaining: usize,
    cut: usize,
}

impl<'a, W: Write> Escaper<'a, W> {
    pub fn new(out: &'a mut W, max_chars: usize) -> Self {
        Self { out, remaining: max_chars, cut: 0 }
    }

    /// Notes how many characters were cut, if any.
    pub fn finish(self) -> fmt::Result {
        if self.cut > 0 { write!(self.out, "…(+{} characters)", self.cut) } else { Ok(()) }
    }
}

impl<W: Write> Write for Escaper<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for c in text.chars() {
            if self.remaining == 0 {
                self.cut += 1;
                continue;
            }
            self.remaining -= 1;
            match c {
                '\n' => self.out.write_str("\\n")?,
                '\r' => self.out.write_str("\\r")?,
                '\t' => self.out.write_str("\\t")?,
                c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                    write!(self.out, "\\u{{{:x}}}", u32::from(c))?
                }
                c => self.out.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_length_bounded() {
        assert_eq!(echo("a\nERROR forged\r\t\u{1b}[31m\u{2028}"), "a\\nERROR forged\\r\\t\\u{1b}[31m\\u{2028}");
        assert_eq!(echo_n("ééééé", 3), "ééé…(+2 characters)");
        let long = "x".repeat(1_000_000);
        assert!(echo(&long).chars().count() <= ECHO_CHARS + 30);
        assert_eq!(echo("plain"), "plain");
    }
}
