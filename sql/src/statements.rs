//! Splitting input into statements: `;` ends a statement unless it is inside a quoted string,
//! a quoted identifier or a comment. A line starting with `\` is a shell command.

/// One piece of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// A SQL statement, without its `;`.
    Sql(String),
    /// A backslash command line, without the backslash.
    Command(String),
}

/// Splits `text` into complete pieces and the unfinished rest.
pub(crate) fn split(text: &str) -> (Vec<Piece>, String) {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quote.is_none() && current.trim().is_empty() && c == '\\' {
            let mut line = String::new();
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
                line.push(c);
            }
            pieces.push(Piece::Command(line.trim().to_string()));
            current.clear();
            continue;
        }
        match quote {
            Some(q) => {
                current.push(c);
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    current.push(c);
                }
                '-' if chars.peek() == Some(&'-') => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            break;
                        }
                    }
                    current.push('\n');
                }
                ';' => {
                    let s = current.trim().to_string();
                    if !s.is_empty() {
                        pieces.push(Piece::Sql(s));
                    }
                    current.clear();
                }
                c => current.push(c),
            },
        }
    }
    (pieces, current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_semicolons_outside_quotes_and_comments() {
        let (p, rest) = split("SELECT ';'; -- a; comment\nSELECT \"a;b\" FROM t;\nSELECT 3");
        assert_eq!(
            p,
            vec![
                Piece::Sql("SELECT ';'".into()),
                Piece::Sql("SELECT \"a;b\" FROM t".into())
            ]
        );
        assert_eq!(rest.trim(), "SELECT 3");
    }

    #[test]
    fn backslash_lines_are_commands() {
        let (p, rest) = split("\\dt\nSELECT 1; \\timing\n");
        assert_eq!(
            p,
            vec![
                Piece::Command("dt".into()),
                Piece::Sql("SELECT 1".into()),
                Piece::Command("timing".into())
            ]
        );
        assert!(rest.trim().is_empty());
    }
}
