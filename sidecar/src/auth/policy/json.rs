//! A JSON tree for policy documents that keeps duplicate object members.
//!
//! It exists because `serde_json::Value` keeps only the last of two members with the same name, so
//! `{"Effect":"Deny","Effect":"Allow"}` would silently become an Allow; the parser needs to see
//! both and refuse the document.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{At, PolicyError, clip, invalid};

// ---------------------------------------------------------------------------------------------
// A JSON tree that keeps duplicate object members, so `{"Effect":"Deny","Effect":"Allow"}` is an
// error instead of whichever member came last.

pub(super) enum J {
    Null,
    Bool(bool),
    Num,
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn kind(&self) -> &'static str {
        match self {
            J::Null => "null",
            J::Bool(_) => "a boolean",
            J::Num => "a number",
            J::Str(_) => "a string",
            J::Arr(_) => "an array",
            J::Obj(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for J {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JVisitor)
    }
}

struct JVisitor;

impl<'de> Visitor<'de> for JVisitor {
    type Value = J;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<J, E> {
        Ok(J::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<J, E> {
        Ok(J::Num)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<J, E> {
        Ok(J::Num)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<J, E> {
        Ok(J::Num)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<J, E> {
        Ok(J::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<J, E> {
        Ok(J::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<J, E> {
        Ok(J::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<J, E> {
        Ok(J::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<J, D::Error> {
        J::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<J, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(J::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<J, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, J>()? {
            members.push(member);
        }
        Ok(J::Obj(members))
    }
}

/// The members of an object, after refusing duplicate names.
pub(super) fn members<'j>(
    j: &'j J,
    element: &str,
    at: At,
) -> Result<&'j [(String, J)], PolicyError> {
    let J::Obj(members) = j else {
        return Err(invalid(
            element,
            at,
            format!("expected an object, found {}", j.kind()),
        ));
    };
    for (i, (name, _)) in members.iter().enumerate() {
        if members[..i].iter().any(|(n, _)| n == name) {
            return Err(PolicyError::Duplicate {
                element: clip(name),
                at,
            });
        }
    }
    Ok(members)
}

/// A string or a non-empty array of strings.
pub(super) fn strings<'j>(j: &'j J, element: &str, at: At) -> Result<Vec<&'j str>, PolicyError> {
    let bad = || {
        invalid(
            element,
            at,
            "expected a string or a non-empty array of strings",
        )
    };
    match j {
        J::Str(s) => Ok(vec![s.as_str()]),
        J::Arr(items) if !items.is_empty() => items
            .iter()
            .map(|i| match i {
                J::Str(s) => Ok(s.as_str()),
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}
