//! What the service's operator does to a room, past the room's own owner checks: the
//! `xmppd room` commands, and the goodbye when the server stops.

use std::fmt::Write;

use xmppd_core::{BareJid, Element};

use super::{Affiliation, Change, Limits, Outcome, Room, NS_CLIENT, NS_OWNER, NS_USER};
use crate::muc::config::RoomConfig;

impl Room {
    /// A room made by `xmppd room create`: persistent, configured (not locked: nobody has
    /// to submit a form first), owned by `owners`. What to store is in the outcome.
    pub fn create_configured(
        jid: BareJid,
        owners: &[BareJid],
        mut config: RoomConfig,
        limits: Limits,
    ) -> (Room, Outcome) {
        config.persistent = true;
        let mut room = Room::restore(jid, config, None, Vec::new(), Vec::new(), limits);
        for owner in owners {
            room.set_affiliation(owner.as_str(), Affiliation::Owner, None);
        }
        let outcome = Outcome {
            changes: vec![Change::Room],
            ..Outcome::default()
        };
        (room, outcome)
    }

    /// Destroys the room as its owner would (§10.9): occupants learn why and where to go.
    pub fn destroy_by_operator(&mut self, reason: Option<&str>, venue: Option<&str>) -> Outcome {
        let mut o = Outcome::default();
        let mut request = Element::new("destroy", NS_OWNER);
        if let Some(venue) = venue {
            request.set_attr("jid", venue);
        }
        if let Some(reason) = reason {
            request.push_child(Element::new("reason", NS_OWNER).with_text(reason));
        }
        self.destroy(&mut o, &request);
        o
    }

    /// Status 332 (§15.6.2): every occupant is removed because the service shuts down.
    /// The room itself is left as it is; a persistent one is there after the restart.
    pub fn shut_down(&mut self) -> Outcome {
        let mut o = Outcome::default();
        for occupant in self.occupants.values() {
            for session in &occupant.sessions {
                let mut x = Element::new("x", NS_USER).with_child(
                    Element::new("item", NS_USER)
                        .with_attr("affiliation", self.affiliation(&occupant.bare).as_str())
                        .with_attr("role", "none"),
                );
                for code in ["110", "332"] {
                    x.push_child(Element::new("status", NS_USER).with_attr("code", code));
                }
                o.out.push(
                    Element::new("presence", NS_CLIENT)
                        .with_attr("type", "unavailable")
                        .with_attr("from", self.occupant_jid(&occupant.nick))
                        .with_attr("to", session.as_str())
                        .with_child(x),
                );
            }
        }
        self.occupants.clear();
        self.sessions.clear();
        o
    }

    /// What `xmppd room info` prints: one `key: value` line each.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let yes = |b: bool| if b { "yes" } else { "no" };
        let mut out = String::new();
        let _ = writeln!(out, "room: {}", self.jid);
        let _ = writeln!(out, "name: {}", c.name);
        let _ = writeln!(out, "description: {}", c.description);
        let subject = self
            .subject
            .as_ref()
            .and_then(|s| s.get_child("subject", NS_CLIENT))
            .map(Element::text)
            .unwrap_or_default();
        let _ = writeln!(out, "subject: {subject}");
        for (key, value) in [
            ("persistent", c.persistent),
            ("public", c.public),
            ("members-only", c.members_only),
            ("moderated", c.moderated),
            ("password-protected", c.password.is_some()),
            ("locked", self.locked),
        ] {
            let _ = writeln!(out, "{key}: {}", yes(value));
        }
        let mut nicks: Vec<&str> = self.occupants.values().map(|o| o.nick.as_str()).collect();
        nicks.sort_unstable();
        let _ = writeln!(out, "occupants: {} {}", nicks.len(), nicks.join(", "));
        for (key, affiliation) in [
            ("owners", Affiliation::Owner),
            ("admins", Affiliation::Admin),
            ("members", Affiliation::Member),
            ("outcasts", Affiliation::Outcast),
        ] {
            let mut jids: Vec<&str> = self
                .affiliations
                .iter()
                .filter(|(_, e)| e.affiliation == affiliation)
                .map(|(j, _)| j.as_str())
                .collect();
            jids.sort_unstable();
            let _ = writeln!(out, "{key}: {}", jids.join(", "));
        }
        let _ = write!(out, "history: {} messages", self.history.len());
        out
    }
}
