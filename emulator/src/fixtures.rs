//! Inputs that the tests and the benchmarks share, so a figure in BENCHMARKS.md and the test
//! that checks the same path use the same text.

/// `chars` characters of numbered chapters about billing, so a summary shows which chapters it
/// covers and a classifier has one clear label. ASCII only: `chars` is also its length in bytes.
pub fn chaptered_document(chars: usize) -> String {
    let mut text = String::with_capacity(chars + 300);
    let mut chapter = 0;
    while text.len() < chars {
        chapter += 1;
        text.push_str(&format!(
            "Chapter {chapter} reports that invoice {chapter} was charged twice to the customer. The billing team \
             refunded the payment within a week. Auditors reviewed the receipts and card statements of that month.\n\n"
        ));
    }
    text.truncate(chars);
    text
}
