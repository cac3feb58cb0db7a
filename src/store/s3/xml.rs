//! The few XML documents S3 exchanges, read into a small tree with quick-xml (listings,
//! upload ids, errors) and written by hand (the part list of a completion).

use quick_xml::events::Event;
use quick_xml::Reader;

/// An element: its local name, its text, its child elements in order.
#[derive(Debug, Default)]
pub struct Node {
    pub name: String,
    pub text: String,
    pub children: Vec<Node>,
}

impl Node {
    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child named `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of the first child named `name`.
    pub fn text_of(&self, name: &str) -> Option<String> {
        self.child(name).map(|c| c.text.clone())
    }
}

/// Parses a document into its root element.
pub fn parse(body: &[u8]) -> Result<Node, String> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Node> = vec![Node::default()];
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Err(e) => return Err(format!("at byte {}: {e}", reader.buffer_position())),
            Ok(Event::Start(e)) => stack.push(Node {
                name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                ..Node::default()
            }),
            Ok(Event::Empty(e)) => {
                let node = Node {
                    name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                    ..Node::default()
                };
                if let Some(top) = stack.last_mut() {
                    top.children.push(node);
                }
            }
            Ok(Event::Text(t)) => {
                let text = t.unescape().map_err(|e| e.to_string())?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&text);
                }
            }
            Ok(Event::CData(t)) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Ok(Event::End(_)) => {
                if stack.len() < 2 {
                    return Err("unbalanced end tag".into());
                }
                if let Some(node) = stack.pop() {
                    if let Some(parent) = stack.last_mut() {
                        parent.children.push(node);
                    }
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
        }
        buf.clear();
    }
    if stack.len() != 1 {
        return Err("unclosed element".into());
    }
    stack
        .pop()
        .and_then(|doc| doc.children.into_iter().next())
        .ok_or_else(|| "no root element".to_string())
}

/// Escapes text for an element's content.
pub fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_listing_with_entities() {
        let doc = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <IsTruncated>true</IsTruncated>
  <Contents><Key>a/b&amp;c</Key><Size>12</Size><ETag>&quot;abc&quot;</ETag></Contents>
  <Contents><Key>d</Key><Size>0</Size></Contents>
  <NextContinuationToken>tok</NextContinuationToken>
  <Empty/>
</ListBucketResult>"#;
        let n = parse(doc).unwrap();
        assert_eq!(n.name, "ListBucketResult");
        assert_eq!(n.text_of("IsTruncated").as_deref(), Some("true"));
        let keys: Vec<String> = n.all("Contents").filter_map(|c| c.text_of("Key")).collect();
        assert_eq!(keys, ["a/b&c", "d"]);
        assert_eq!(
            n.child("Contents").unwrap().text_of("ETag").as_deref(),
            Some("\"abc\"")
        );
        assert!(n.child("Empty").is_some());
        assert!(parse(b"<a><b></a>").is_err());
        assert_eq!(escape("a<&>\""), "a&lt;&amp;&gt;&quot;");
    }
}
