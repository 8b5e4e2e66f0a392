//! Stop strings over streamed text: the text before the first stop string
//! goes out, the stop string and everything after it never does, and a tail
//! that may be the start of a stop string is held back until the next piece
//! decides it.

/// One request's stop strings and the text held back so far.
#[derive(Debug, Default)]
pub struct StopScan {
    stops: Vec<String>,
    held: String,
}

impl StopScan {
    /// Empty strings are dropped (they would stop before any text).
    pub fn new(stops: Vec<String>) -> Self {
        StopScan {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Adds the next piece of text. Returns the text that may go out now
    /// and whether a stop string ended the output (nothing follows it).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            self.held.truncate(at);
            return (std::mem::take(&mut self.held), true);
        }
        let keep = self
            .stops
            .iter()
            .map(|s| partial_stop(&self.held, s))
            .max()
            .unwrap_or(0);
        let out = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        (out, false)
    }

    /// The held-back tail, at the end of the output (no stop string came).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Bytes of the longest proper prefix of `stop` that `text` ends with (a
/// suffix that starts on a character boundary, since it equals a prefix of
/// a string).
fn partial_stop(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .find(|&k| stop.is_char_boundary(k) && text.ends_with(&stop[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` and returns (all text out, stopped).
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut s = StopScan::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (o, stop) = s.push(p);
            out.push_str(&o);
            if stop {
                return (out, true);
            }
        }
        out.push_str(&s.finish());
        (out, false)
    }

    #[test]
    fn stops_across_pieces_and_drops_the_rest() {
        assert_eq!(
            run(&["\n\n"], &["Paris", ".\n", "\nThe", " end"]),
            ("Paris.".into(), true)
        );
        assert_eq!(
            run(&["END", "xyz"], &["abc E", "N", "D more"]),
            ("abc ".into(), true)
        );
    }

    #[test]
    fn holds_back_only_a_possible_start() {
        let mut s = StopScan::new(vec!["</s>".into()]);
        assert_eq!(s.push("a <"), ("a ".into(), false));
        assert_eq!(s.push("b"), ("<b".into(), false));
        assert_eq!(s.push("</"), (String::new(), false));
        assert_eq!(s.finish(), "</");
    }

    #[test]
    fn without_stops_everything_passes() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&[""], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn multibyte_stop_strings() {
        assert_eq!(run(&["é!"], &["caf", "é", "!", "x"]), ("caf".into(), true));
        assert_eq!(run(&["éa"], &["xé", "b"]), ("xéb".into(), false));
    }
}
