//! Where a node of a YAML document is: `file:line:column` for problems found after the text
//! parsed (an unknown principal, an unknown policy id, a test without an expectation).
//!
//! serde_yaml keeps no positions in parsed values, but every error it reports carries the
//! position of the node being read when it arose. So the document is read once more by a
//! deserializer that walks down the path and fails at the node itself: the error's position
//! is the node's.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a path into a YAML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// A mapping's key.
    Key(String),
    /// A sequence's 0-based index.
    Index(usize),
}

/// A path such as `tests[3].principal`, written the way serde_path_to_error writes it.
pub(super) fn display(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(key) if out.is_empty() => out.push_str(key),
            Step::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Step::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

/// The 1-based line and column of the node at `path` in `text`, if there is one.
pub(super) fn locate(text: &str, path: &[Step]) -> Option<(usize, usize)> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    match (Seek { path }).deserialize(deserializer) {
        Ok(()) => None,
        Err(error) => {
            let found = error.to_string().contains(FOUND);
            error.location().filter(|_| found).map(|location| (location.line(), location.column()))
        }
    }
}

/// The message of the error that marks the node.
const FOUND: &str = "cedargate: node found";

struct Seek<'a> {
    path: &'a [Step],
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Step::Key(wanted), rest)) = self.path.split_first() else {
            return self.found();
        };
        while let Some(key) = map.next_key::<serde_yaml::Value>()? {
            if key_text(&key).as_deref() == Some(wanted.as_str()) {
                return map.next_value_seed(Seek { path: rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Step::Index(wanted), rest)) = self.path.split_first() else {
            return self.found();
        };
        for _ in 0..*wanted {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Seek { path: rest }).map(|_| ())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.found()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.found()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.found()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.found()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.found()
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.found()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.found()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.found()
    }
}

impl Seek<'_> {
    /// At the end of the path: fail, so the error carries this node's position. A scalar
    /// with path left over is not the node either.
    fn found<E: de::Error>(self) -> Result<(), E> {
        if self.path.is_empty() {
            Err(E::custom(FOUND))
        } else {
            Ok(())
        }
    }
}

fn key_text(key: &serde_yaml::Value) -> Option<String> {
    match key {
        serde_yaml::Value::String(text) => Some(text.clone()),
        serde_yaml::Value::Number(number) => Some(number.to_string()),
        serde_yaml::Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
principals:
  user: { authorization: Bearer x }
tests:
  - name: first
    expect: allowed
  - name: second
    principal: nobody
    expect:
      outcome: forbidden
      policies: [a, b]
";

    fn key(name: &str) -> Step {
        Step::Key(name.to_owned())
    }

    #[test]
    fn nodes_are_found_where_they_are_written() {
        type Row<'a> = (&'a [Step], Option<(usize, usize)>);
        let table: [Row<'_>; 7] = [
            (&[key("tests"), Step::Index(1), key("principal")], Some((7, 16))),
            (&[key("tests"), Step::Index(1)], Some((6, 5))),
            (&[key("tests"), Step::Index(1), key("expect"), key("policies"), Step::Index(1)], Some((10, 21))),
            (&[key("principals"), key("user")], Some((2, 9))),
            (&[key("tests"), Step::Index(5)], None),
            (&[key("nothing")], None),
            (&[key("tests"), Step::Index(0), key("name"), key("deeper")], None),
        ];
        for (path, expected) in table {
            assert_eq!(locate(TEXT, path), expected, "{}", display(path));
        }
    }

    #[test]
    fn paths_read_like_serde_path_to_error() {
        assert_eq!(display(&[key("tests"), Step::Index(2), key("expect")]), "tests[2].expect");
    }
}
