//! Where a policy error is in the file, and how it reads: the line and column, the source line
//! with a caret (rendered by `annotate-snippets`), the span of a key path found with
//! `toml_edit`, and serde's type names in a person's words. Knows nothing of the policy's keys.

/// Serde's type names in the words of a person editing the file ("a number", not "f64").
pub(super) fn plain_words(message: &str) -> String {
    let mut m = message.trim().to_string();
    for (from, to) in [
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected a sequence", "expected a list (`[...]`)"),
        ("expected a map", "expected a table"),
        ("floating point", "decimal number"),
    ] {
        m = m.replace(from, to);
    }
    m
}

/// `:LINE:COLUMN` (1-based, columns in characters) and the source line with a caret under
/// `span`, rendered by `annotate-snippets` without colour; two empty strings without a span.
pub(super) fn place(text: &str, span: Option<std::ops::Range<usize>>) -> (String, String) {
    let Some(span) = span.filter(|s| text.is_char_boundary(s.start)) else {
        return (String::new(), String::new());
    };
    let start = span.start;
    let end = span.end.clamp(start, text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..start].chars().count() + 1;
    // Underline at most the rest of the first line: a table's span can cover many lines.
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let end = end.min(line_end).max(start);
    let end = if end == start {
        (start + text[start..].chars().next().map_or(0, char::len_utf8)).min(text.len())
    } else {
        end
    };
    use annotate_snippets::{Level, Renderer, Snippet};
    let message = Level::Error.title("").snippet(
        Snippet::source(text)
            .line_start(1)
            .fold(true)
            .annotation(Level::Error.span(start..end)),
    );
    let rendered = Renderer::plain().render(message).to_string();
    // The first line is annotate-snippets' title; ours is the error's own first line.
    let body: Vec<&str> = rendered.lines().skip(1).collect();
    (
        format!(":{line}:{column}"),
        format!("\n{}", body.join("\n")),
    )
}

/// The span of the value at a key path such as `marginals[2].budget_share`, found with
/// `toml_edit`'s spans; the nearest enclosing item's span if the key itself is absent.
pub(super) fn locate(text: &str, path: &str) -> Option<std::ops::Range<usize>> {
    use toml_edit::{ImDocument, Item, Table, Value};
    #[derive(Clone, Copy)]
    enum Node<'a> {
        Item(&'a Item),
        Table(&'a Table),
        Value(&'a Value),
    }
    impl<'a> Node<'a> {
        fn span(self) -> Option<std::ops::Range<usize>> {
            match self {
                Node::Item(Item::ArrayOfTables(a)) => {
                    a.span().or_else(|| a.get(0).and_then(Table::span))
                }
                Node::Item(i) => i.span(),
                Node::Table(t) => t.span(),
                Node::Value(v) => v.span(),
            }
        }
        fn child(self, key: &str) -> Option<Node<'a>> {
            match self {
                Node::Item(i) => i.as_table_like()?.get(key).map(Node::Item),
                Node::Table(t) => t.get(key).map(Node::Item),
                Node::Value(v) => v.as_inline_table()?.get(key).map(Node::Value),
            }
        }
        fn index(self, n: usize) -> Option<Node<'a>> {
            match self {
                Node::Item(Item::ArrayOfTables(a)) => a.get(n).map(Node::Table),
                Node::Item(i) => i.as_array()?.get(n).map(Node::Value),
                Node::Table(_) => None,
                Node::Value(v) => v.as_array()?.get(n).map(Node::Value),
            }
        }
    }
    let doc = ImDocument::parse(text).ok()?;
    let mut node = Node::Table(doc.as_table());
    let mut best = None;
    for segment in path.split('.') {
        let (name, indices) = segment.split_once('[').unwrap_or((segment, ""));
        let mut next = node.child(name);
        for n in indices.split('[').filter(|s| !s.is_empty()) {
            let n: usize = n.trim_end_matches(']').parse().ok()?;
            next = next.and_then(|x| x.index(n));
        }
        match next {
            Some(x) => {
                node = x;
                best = x.span().or(best);
            }
            None => break,
        }
    }
    best
}
