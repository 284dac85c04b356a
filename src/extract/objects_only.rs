//! A deserializer wrapper that reads request bodies as JSON means them, at
//! every nesting level (options, map values, sequence elements, enum
//! contents):
//! - a struct must be written as an object. serde's derived structs also
//!   take a sequence of their fields in order (`["orders", true]` would be
//!   a `CreateQueueRequest`), which no client means and no schema documents;
//! - an integer may be written with a zero fraction (`5.0`): JSON has one
//!   number type, and JSON Schema's `integer` (what `/openapi.json` says)
//!   counts `5.0` as one. Other fractions and out-of-range values are still
//!   refused by the integer type itself.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

/// `deserializer`, with sequences refused wherever a struct is expected.
pub struct ObjectsOnly<D>(pub D);

/// What the refusal says was expected.
struct AnObject;

impl de::Expected for AnObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
}

macro_rules! forward_deserialize {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            self.0.$method(wrap(visitor))
        }
    )*};
}

macro_rules! forward_deserialize_integer {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            self.0.$method(Wrap { integer_expected: true, ..wrap(visitor) })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for ObjectsOnly<D> {
    type Error = D::Error;

    forward_deserialize_integer!(
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
    );

    forward_deserialize!(
        deserialize_any,
        deserialize_bool,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_unit_struct(name, wrap(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_newtype_struct(name, wrap(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_tuple(len, wrap(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_tuple_struct(name, len, wrap(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_struct(
            name,
            fields,
            Wrap {
                struct_expected: true,
                ..wrap(visitor)
            },
        )
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, wrap(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

fn wrap<V>(inner: V) -> Wrap<V> {
    Wrap {
        inner,
        struct_expected: false,
        integer_expected: false,
    }
}

/// The caller's visitor; hands nested deserializers on wrapped.
struct Wrap<V> {
    inner: V,
    struct_expected: bool,
    integer_expected: bool,
}

/// 2^53: up to it every integer has its own `f64`. Past it a float cannot
/// say which integer was written: serde_json reads an integer literal
/// beyond 64 bits (`-9223372036854775809`) as the nearest float, which
/// would otherwise pass for `i64::MIN`.
const EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0;

macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        if self.integer_expected && v.fract() == 0.0 && v.abs() <= EXACT_INTEGERS {
            return if v >= 0.0 {
                self.inner.visit_u64(v as u64)
            } else {
                self.inner.visit_i64(v as i64)
            };
        }
        self.inner.visit_f64(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_some(ObjectsOnly(d))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_newtype_struct(ObjectsOnly(d))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        if self.struct_expected {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &AnObject));
        }
        self.inner.visit_seq(Seq(seq))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(Map(map))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(Enum(data))
    }
}

/// A seed whose deserializer is wrapped.
struct Seed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(ObjectsOnly(d))
    }
}

struct Seq<A>(A);

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for Seq<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct Map<A>(A);

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for Map<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Seed(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct Enum<A>(A);

impl<'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for Enum<A> {
    type Error = A::Error;
    type Variant = Variant<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        self.0
            .variant_seed(Seed(seed))
            .map(|(value, variant)| (value, Variant(variant)))
    }
}

struct Variant<A>(A);

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Variant<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(Seed(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, wrap(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(
            fields,
            Wrap {
                struct_expected: true,
                ..wrap(visitor)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::ObjectsOnly;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Inner {
        max_attempts: Option<u32>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Outer {
        name: String,
        retry: Option<Inner>,
        list: Option<Vec<Inner>>,
        any: Option<serde_json::Value>,
    }

    fn parse(json: &str) -> Result<Outer, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(json);
        Outer::deserialize(ObjectsOnly(&mut de))
    }

    #[test]
    fn objects_pass_and_arrays_of_objects_too() {
        let parsed = parse(
            r#"{"name":"q","retry":{"maxAttempts":3},"list":[{"maxAttempts":1}],"any":[1,{"a":[2]}]}"#,
        )
        .expect("valid");
        assert_eq!(
            parsed.retry,
            Some(Inner {
                max_attempts: Some(3)
            })
        );
        assert_eq!(parsed.list.map(|l| l.len()), Some(1));
    }

    #[derive(Debug, Deserialize)]
    struct Counts {
        small: Option<u16>,
        signed: Option<i64>,
        ratio: Option<f64>,
    }

    fn counts(json: &str) -> Result<Counts, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(json);
        Counts::deserialize(ObjectsOnly(&mut de))
    }

    #[test]
    fn integers_may_have_a_zero_fraction_and_nothing_else() {
        let parsed = counts(r#"{"small": 5.0, "signed": -3.0, "ratio": 2.0}"#).expect("valid");
        assert_eq!(
            (parsed.small, parsed.signed, parsed.ratio),
            (Some(5), Some(-3), Some(2.0))
        );
        for json in [
            r#"{"small": 5.5}"#,
            r#"{"small": 70000.0}"#,
            r#"{"small": -1.0}"#,
            r#"{"signed": 1e300}"#,
            r#"{"signed": -9223372036854775809}"#,
            r#"{"signed": 9223372036854775808}"#,
            r#"{"signed": 9007199254740994.0}"#,
        ] {
            assert!(counts(json).is_err(), "{json}");
        }
    }

    #[test]
    fn a_struct_written_as_an_array_is_refused_at_any_depth() {
        for json in [
            r#"["q", null]"#,
            r#"{"name":"q","retry":[3]}"#,
            r#"{"name":"q","list":[[1]]}"#,
        ] {
            let err = parse(json).expect_err(json);
            assert!(err.to_string().contains("a JSON object"), "{json}: {err}");
        }
    }
}
