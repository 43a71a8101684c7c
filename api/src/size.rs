/// Parses a memory or disk size the way the cf CLI does (`256M`, `1G`, `512MB`, `1024`), in MiB.
/// A bare number means megabytes.
pub fn parse_size_mb(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.strip_suffix('B').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('M') => (&t[..t.len() - 1], 1),
        Some('G') => (&t[..t.len() - 1], 1024),
        Some('T') => (&t[..t.len() - 1], 1024 * 1024),
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid size {s:?}: use a number with M or G, like 256M or 1G"))?;
    let mb = n
        .checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))?;
    if mb == 0 {
        return Err(format!("size {s:?} must be more than zero"));
    }
    Ok(mb)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sizes() {
        assert_eq!(parse_size_mb("256M"), Ok(256));
        assert_eq!(parse_size_mb("256m"), Ok(256));
        assert_eq!(parse_size_mb("1G"), Ok(1024));
        assert_eq!(parse_size_mb("2GB"), Ok(2048));
        assert_eq!(parse_size_mb("100"), Ok(100));
        assert!(parse_size_mb("lots").is_err());
        assert!(parse_size_mb("0M").is_err());
        assert!(parse_size_mb("-1M").is_err());
    }
}
