//! Label choice for structured classification answers: word overlap between the text and each
//! label (exact, shared prefix, or a small synonym table), ties broken by a stable hash.

use crate::tokens::fnv1a;

/// Words that say nothing about a label.
const STOP: [&str; 8] = ["and", "or", "the", "of", "a", "an", "to", "for"];

/// Label word → text words that hint at it.
const SYNONYMS: [(&str, &[&str]); 8] = [
    (
        "billing",
        &["invoice", "charge", "charged", "refund", "payment", "paid", "bill", "receipt", "card", "subscription"],
    ),
    ("technical", &["error", "crash", "bug", "broken", "install", "login", "password", "outage", "fails", "slow"]),
    ("support", &["help", "error", "crash", "broken", "fix", "issue", "problem"]),
    ("sales", &["buy", "purchase", "pricing", "price", "quote", "discount", "license", "plan", "upgrade", "seats"]),
    ("feedback", &["love", "like", "great", "suggest", "suggestion", "improve", "wish", "feature", "awesome"]),
    ("positive", &["good", "great", "love", "excellent", "happy", "thanks", "wonderful"]),
    ("negative", &["bad", "terrible", "awful", "hate", "angry", "disappointed", "worst"]),
    ("complaint", &["bad", "terrible", "awful", "angry", "disappointed", "unacceptable", "worst"]),
];

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

fn word_score(label_word: &str, text: &[String]) -> f64 {
    let synonyms = SYNONYMS.iter().find(|(l, _)| *l == label_word).map(|(_, s)| *s).unwrap_or(&[]);
    text.iter()
        .map(|w| {
            let shorter = w.len().min(label_word.len());
            if w == label_word {
                2.0
            } else if shorter >= 4 && (w.starts_with(label_word) || label_word.starts_with(w.as_str())) {
                1.5
            } else if synonyms.contains(&w.as_str()) {
                1.0
            } else {
                0.0
            }
        })
        .sum()
}

/// How well `label` matches `text` (0 = no overlap).
pub(crate) fn score(text: &str, label: &str) -> f64 {
    let text = words(text);
    let label_words: Vec<String> = words(label).into_iter().filter(|w| !STOP.contains(&w.as_str())).collect();
    if label_words.is_empty() {
        return 0.0;
    }
    label_words.iter().map(|w| word_score(w, &text)).sum::<f64>() / label_words.len() as f64
}

/// Indices of `labels`, best match first, with their scores; ties in a stable text-dependent order.
pub(crate) fn rank(text: &str, labels: &[String]) -> Vec<(usize, f64)> {
    let mut ranked: Vec<(usize, f64, u64)> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i, score(text, l), fnv1a(format!("{text}\u{0}{l}").as_bytes(), 0xcbf2_9ce4_8422_2325)))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
    ranked.into_iter().map(|(i, s, _)| (i, s)).collect()
}

/// One label for a single-label answer, or 1..=3 labels that overlap the text for a multi-label one.
pub(crate) fn choose(text: &str, labels: &[String], multi: bool) -> Vec<usize> {
    let ranked = rank(text, labels);
    let mut chosen: Vec<usize> =
        if multi { ranked.iter().filter(|(_, s)| *s > 0.0).take(3).map(|(i, _)| *i).collect() } else { Vec::new() };
    if chosen.is_empty() {
        chosen.extend(ranked.first().map(|(i, _)| *i));
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn picks_by_overlap_prefix_and_synonym() {
        let set = labels(&["billing", "technical support", "sales", "feedback"]);
        assert_eq!(choose("My invoice shows a billing error: I was charged twice.", &set, false), [0]);
        assert_eq!(choose("the invoice is wrong", &set, false), [0]);
        assert_eq!(choose("a bill", &set, false), [0]);
        assert_eq!(choose("The app crashes at login, please help", &set, false), [1]);
        assert_eq!(choose("We want a quote to buy 40 seats", &set, false), [2]);
        let multi = choose("Billing error and I want to buy more seats", &set, true);
        assert!(multi.contains(&0) && multi.contains(&2) && multi.len() <= 3, "{multi:?}");
    }

    #[test]
    fn ties_are_stable() {
        let set = labels(&["alpha", "beta", "gamma"]);
        let first = choose("nothing in common", &set, false);
        assert_eq!(first.len(), 1);
        assert_eq!(choose("nothing in common", &set, false), first);
        assert_eq!(choose("nothing in common", &set, true), first);
    }
}
