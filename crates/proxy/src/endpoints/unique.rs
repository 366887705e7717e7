//! JSON bodies of the gateway's own endpoints, read so that no object names a member
//! twice: serde's `Value` keeps the last of two, while another reader may take the
//! first, so such a body says two things and is refused wherever the gateway reads one.

use serde_json::Value;

/// A JSON document none of whose objects names a member twice (serde's `Value` keeps
/// the last of two, so `{"method":"POST",...,"method":"GET"}` priced a GET), read
/// into a `Value` in the same pass.
pub(crate) struct UniqueMembers(pub Value);

impl<'de> serde::Deserialize<'de> for UniqueMembers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueMembersVisitor)
    }
}

struct UniqueMembersVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueMembersVisitor {
    type Value = UniqueMembers;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, b: bool) -> Result<UniqueMembers, E> {
        Ok(UniqueMembers(Value::Bool(b)))
    }

    fn visit_i64<E>(self, n: i64) -> Result<UniqueMembers, E> {
        Ok(UniqueMembers(Value::from(n)))
    }

    fn visit_u64<E>(self, n: u64) -> Result<UniqueMembers, E> {
        Ok(UniqueMembers(Value::from(n)))
    }

    fn visit_f64<E>(self, n: f64) -> Result<UniqueMembers, E> {
        Ok(UniqueMembers(Value::from(n)))
    }

    fn visit_str<E>(self, s: &str) -> Result<UniqueMembers, E> {
        Ok(UniqueMembers(Value::from(s)))
    }

    fn visit_unit<E>(self) -> Result<UniqueMembers, E> {
        Ok(UniqueMembers(Value::Null))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut items: A,
    ) -> Result<UniqueMembers, A::Error> {
        let mut list = Vec::new();
        while let Some(UniqueMembers(item)) = items.next_element()? {
            list.push(item);
        }
        Ok(UniqueMembers(Value::Array(list)))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut members: A,
    ) -> Result<UniqueMembers, A::Error> {
        let mut map = serde_json::Map::new();
        while let Some(name) = members.next_key::<String>()? {
            if map.contains_key(&name) {
                return Err(serde::de::Error::custom("a member given twice"));
            }
            let UniqueMembers(value) = members.next_value()?;
            map.insert(name, value);
        }
        Ok(UniqueMembers(Value::Object(map)))
    }
}
