//! XEP-0059 Result Set Management: paging through long lists (public MUC rooms, pubsub items).
//!
//! A module keeps its list in a stable order with a unique key per entry (a room JID, an item
//! id); [`Query::page`] picks the slice the request asks for and [`Page::to_element`] writes
//! the `<set/>` that goes back with it.

use std::ops::Range;

use xmppd_core::Element;

pub const NS: &str = "http://jabber.org/protocol/rsm";

/// A request's `<set/>` (XEP-0059 §2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub max: Option<usize>,
    pub after: Option<String>,
    /// `Some("")` is `<before/>`: the last page (§2.5).
    pub before: Option<String>,
    pub index: Option<usize>,
}

/// Why a `<set/>` cannot be used: `bad-request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadSet(pub &'static str);

impl Query {
    /// The `<set/>` among `parent`'s children; `Ok(None)` when there is none.
    pub fn find_in(parent: &Element) -> Result<Option<Query>, BadSet> {
        parent.get_child("set", NS).map(Query::parse).transpose()
    }

    pub fn parse(set: &Element) -> Result<Query, BadSet> {
        let number = |name: &str| -> Result<Option<usize>, BadSet> {
            set.get_child(name, NS)
                .map(|e| e.text().trim().parse().map_err(|_| BadSet("not a number")))
                .transpose()
        };
        Ok(Query {
            max: number("max")?,
            index: number("index")?,
            after: set.get_child("after", NS).map(Element::text),
            before: set.get_child("before", NS).map(Element::text),
        })
    }

    /// The page of `keys` (the entries' keys in list order) this query selects, with at most
    /// `min(max, cap)` entries. An `after`/`before` key that is not in the list is
    /// `item-not-found` (§2.6), reported as `Err(None)`.
    pub fn page<'a, K: AsRef<str> + 'a>(
        &self,
        keys: &'a [K],
        cap: usize,
    ) -> Result<Page<'a>, Option<BadSet>> {
        let count = keys.len();
        let max = self.max.unwrap_or(cap).min(cap);
        let position = |key: &str| keys.iter().position(|k| k.as_ref() == key).ok_or(None);
        let range = if let Some(after) = &self.after {
            let start = position(after)? + 1;
            start..(start + max).min(count)
        } else if let Some(before) = &self.before {
            let end = if before.is_empty() {
                count
            } else {
                position(before)?
            };
            end.saturating_sub(max)..end
        } else {
            let start = self.index.unwrap_or(0).min(count);
            start..(start + max).min(count)
        };
        let slice = &keys[range.clone()];
        Ok(Page {
            first: slice.first().map(AsRef::as_ref),
            last: slice.last().map(AsRef::as_ref),
            range,
            count,
        })
    }
}

/// The entries a query selected: `range` indexes the module's list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<'a> {
    pub range: Range<usize>,
    pub first: Option<&'a str>,
    pub last: Option<&'a str>,
    pub count: usize,
}

impl Page<'_> {
    /// The response `<set/>`: `first` (with its index), `last` and `count` (§2.1).
    pub fn to_element(&self) -> Element {
        let mut set = Element::new("set", NS);
        if let (Some(first), Some(last)) = (self.first, self.last) {
            set.push_child(
                Element::new("first", NS)
                    .with_attr("index", self.range.start.to_string())
                    .with_text(first),
            );
            set.push_child(Element::new("last", NS).with_text(last));
        }
        set.push_child(Element::new("count", NS).with_text(self.count.to_string()));
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(xml: &str) -> Query {
        let e = xmppd_xml::parse_fragment(xml, "jabber:client").expect("valid xml");
        Query::parse(&e).unwrap()
    }

    const KEYS: [&str; 5] = ["a", "b", "c", "d", "e"];

    #[test]
    fn pages_forward_and_backward_through_a_list() {
        let first = query("<set xmlns='http://jabber.org/protocol/rsm'><max>2</max></set>");
        let page = first.page(&KEYS, 100).unwrap();
        assert_eq!(
            (page.range.clone(), page.first, page.last),
            (0..2, Some("a"), Some("b"))
        );
        let next =
            query("<set xmlns='http://jabber.org/protocol/rsm'><max>2</max><after>b</after></set>");
        assert_eq!(next.page(&KEYS, 100).unwrap().range, 2..4);
        let last = query("<set xmlns='http://jabber.org/protocol/rsm'><max>2</max><before/></set>");
        assert_eq!(last.page(&KEYS, 100).unwrap().range, 3..5);
        let prev = query(
            "<set xmlns='http://jabber.org/protocol/rsm'><max>2</max><before>c</before></set>",
        );
        assert_eq!(prev.page(&KEYS, 100).unwrap().range, 0..2);
        let index =
            query("<set xmlns='http://jabber.org/protocol/rsm'><max>3</max><index>4</index></set>");
        assert_eq!(index.page(&KEYS, 100).unwrap().range, 4..5);
    }

    #[test]
    fn the_server_cap_bounds_max_and_count_alone_is_answered() {
        let all = query("<set xmlns='http://jabber.org/protocol/rsm'><max>1000</max></set>");
        assert_eq!(all.page(&KEYS, 3).unwrap().range, 0..3);
        let count = query("<set xmlns='http://jabber.org/protocol/rsm'><max>0</max></set>");
        let page = count.page(&KEYS, 3).unwrap();
        assert_eq!((page.range.len(), page.count), (0, 5));
        let set = page.to_element();
        assert!(set.get_child("first", NS).is_none());
        assert_eq!(set.get_child("count", NS).unwrap().text(), "5");
    }

    #[test]
    fn an_unknown_key_or_bad_number_is_refused() {
        let unknown = query("<set xmlns='http://jabber.org/protocol/rsm'><after>zz</after></set>");
        assert_eq!(unknown.page(&KEYS, 10), Err(None));
        let e = xmppd_xml::parse_fragment(
            "<set xmlns='http://jabber.org/protocol/rsm'><max>x</max></set>",
            "jabber:client",
        )
        .unwrap();
        assert!(Query::parse(&e).is_err());
    }
}
