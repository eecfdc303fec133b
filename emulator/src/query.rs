//! Query-string decoding (`a=b&c=d`, percent-encoded, `+` as space).

/// The decoded value of query parameter `name`.
pub(crate) fn param(query: &str, name: &str) -> Option<String> {
    pairs(query).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// Decoded `name=value` pairs in order.
pub(crate) fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes() {
        let q = "resource=https%3A%2F%2Fcognitiveservices.azure.com&api-version=2019-08-01&x=a+b&bad=%zz%4";
        let p = super::pairs(q);
        assert_eq!(p[0].1, "https://cognitiveservices.azure.com");
        assert_eq!(p[2].1, "a b");
        assert_eq!(p[3].1, "%zz%4");
        assert_eq!(super::decode("a%20b%2F%C3%A9"), "a b/é");
    }
}
