//! Messages to a room and its occupants: groupchat (§7.4), private messages (§7.5),
//! voice requests (§8.6), invitations (§7.8).

use super::*;

impl Room {
    // ---- messages (§7.4 groupchat, §7.5 private, §7.8 invitations, §8.1 subject) ----

    pub(super) fn message(
        &mut self,
        o: &mut Outcome,
        stanza: &Stanza,
        from: &FullJid,
        now_ms: i64,
    ) -> Result<(), StanzaError> {
        let f = from.as_str();
        let kind = stanza.stanza_type();
        if kind == "error" {
            if stanza
                .element()
                .get_child("error", NS_CLIENT)
                .is_some_and(means_gone)
            {
                self.leave(o, f, &[333], false);
            }
            return Ok(());
        }
        let to_nick = stanza
            .to
            .as_ref()
            .and_then(|t| t.resource())
            .map(|r| r.as_str().to_string());
        if to_nick.is_none() && kind != "groupchat" {
            if let Some(x) = stanza.element().get_child("x", NS_USER) {
                return self.invitation(o, x, from);
            }
        }
        let Some(key) = self.sessions.get(f).cloned() else {
            return Err(err(Cond::NotAcceptable).with_text("you are not in the room"));
        };
        self.take_token(&key, now_ms)?;
        if to_nick.is_none() && kind != "groupchat" {
            if let Some(form) = Form::find_in(stanza.element()) {
                let form = form.map_err(|e| err(Cond::BadRequest).with_text(e.0))?;
                if form.form_type() == Some(NS_REQUEST) {
                    return self.voice_request(o, &form, &key);
                }
            }
        }
        let sender = &self.occupants[&key];
        let sender_jid = self.occupant_jid(&sender.nick);
        if let Some(nick) = to_nick {
            return self.private_message(o, stanza, &key, &nick);
        }
        if kind != "groupchat" {
            return Err(
                err(Cond::BadRequest).with_text("messages to the room are of type groupchat")
            );
        }
        let el = stanza.element();
        let is_subject = el.has_child("subject", NS_CLIENT) && !el.has_child("body", NS_CLIENT);
        if is_subject {
            // §8.1: moderators, and participants when the room lets them.
            let may = sender.role == Role::Moderator
                || (self.config.change_subject && sender.role == Role::Participant);
            if !may {
                return Err(err(Cond::Forbidden));
            }
        } else if sender.role < Role::Participant {
            return Err(err(Cond::Forbidden)); // §7.4: visitors have no voice
        }
        if self.config.logging {
            // §4.1 "Logging": what occupants said, for public retrieval outside the room.
            let text = el
                .get_child(if is_subject { "subject" } else { "body" }, NS_CLIENT)
                .map(Element::text);
            if let Some(text) = text {
                o.changes.push(Change::Logged(xmppd_storage::LogLine {
                    stamp: now_ms / 1000,
                    nick: sender.nick.clone(),
                    subject: is_subject,
                    text,
                }));
            }
        }
        let mut reflected = el.clone();
        reflected.remove_attr("to");
        reflected.set_attr("from", sender_jid);
        self.stamp_occupant_id(&mut reflected, &sender.id);
        self.fan_out(o, &reflected);
        if is_subject {
            self.subject = Some(reflected);
            o.changes.push(Change::Room);
        } else if el.has_child("body", NS_CLIENT) && self.config.history_length > 0 {
            let stamp = now_ms / 1000;
            self.history.push_back((stamp, reflected.clone()));
            while self.history.len() > self.config.history_length {
                self.history.pop_front();
            }
            o.changes.push(Change::History(stamp, reflected));
        }
        Ok(())
    }

    /// `el` to every session in the room.
    pub(super) fn fan_out(&self, o: &mut Outcome, el: &Element) {
        let mut message = el.clone();
        message.remove_attr("to");
        o.fanned.push(Fanned {
            before: o.out.len(),
            stanza: message,
            to: self.sessions.everyone(),
        });
    }

    /// The per-occupant message rate: a bucket of twice the rate per second.
    pub(super) fn take_token(&mut self, key: &str, now_ms: i64) -> Result<(), StanzaError> {
        let rate = self.limits.messages_per_second;
        let occ = self.occupants.get_mut(key).expect("indexed");
        let elapsed = (now_ms - occ.tokens_at).max(0) as f64 / 1000.0;
        occ.tokens = (occ.tokens + elapsed * rate).min(2.0 * rate);
        occ.tokens_at = now_ms;
        if occ.tokens < 1.0 {
            return Err(err(Cond::ResourceConstraint).with_text("too many messages; slow down"));
        }
        occ.tokens -= 1.0;
        Ok(())
    }

    pub(super) fn private_message(
        &self,
        o: &mut Outcome,
        stanza: &Stanza,
        sender_key: &str,
        nick: &str,
    ) -> Result<(), StanzaError> {
        if stanza.stanza_type() == "groupchat" {
            return Err(err(Cond::BadRequest)); // §7.5
        }
        let sender = &self.occupants[sender_key];
        let allowed = match self.config.allow_pm {
            AllowPm::Anyone => true,
            AllowPm::Participants => sender.role >= Role::Participant,
            AllowPm::Moderators => sender.role == Role::Moderator,
            AllowPm::Nobody => false,
        };
        if !allowed {
            return Err(err(Cond::Forbidden).with_text("private messages are not allowed here"));
        }
        let target = self
            .occupants
            .get(&nick::key(nick))
            .ok_or_else(|| err(Cond::ItemNotFound))?;
        let mut copy = stanza.element().clone();
        copy.set_attr("from", self.occupant_jid(&sender.nick));
        if !copy.has_child("x", NS_USER) {
            copy.push_child(Element::new("x", NS_USER));
        }
        self.stamp_occupant_id(&mut copy, &sender.id);
        for s in &target.sessions {
            let mut c = copy.clone();
            c.set_attr("to", s);
            o.out.push(c);
        }
        Ok(())
    }

    /// §8.6: a visitor asks for voice (the form goes to the moderators), or a moderator
    /// answers such a request (`muc#request_allow`).
    pub(super) fn voice_request(
        &mut self,
        o: &mut Outcome,
        form: &Form,
        key: &str,
    ) -> Result<(), StanzaError> {
        use crate::forms::Field;
        let sender = &self.occupants[key];
        if form.kind == FormKind::Submit && form.get("muc#request_allow").is_some() {
            if sender.role != Role::Moderator {
                return Err(err(Cond::Forbidden));
            }
            let allow = form
                .boolean("muc#request_allow")
                .map_err(|e| err(Cond::BadRequest).with_text(e.0))?;
            let nick = form
                .single("muc#roomnick")
                .ok_or_else(|| err(Cond::BadRequest))?;
            let target = nick::key(nick);
            let visitor = self
                .occupants
                .get(&target)
                .is_some_and(|t| t.role == Role::Visitor);
            if allow == Some(true) && visitor {
                let actor = sender.nick.clone();
                self.apply_role(o, &target, Role::Participant, Some(&actor), None);
            }
            return Ok(());
        }
        if form
            .choice("muc#role", &["participant"])
            .map_err(|e| err(Cond::BadRequest).with_text(e.0))?
            .is_none()
        {
            return Err(err(Cond::BadRequest).with_text("muc#role must be participant"));
        }
        if sender.role != Role::Visitor {
            return Ok(()); // Nothing to ask for.
        }
        let request = Form::new(FormKind::Form)
            .title("Voice request")
            .instructions("To approve this request for voice, select \"Grant voice\" and submit.")
            .field(Field::form_type(NS_REQUEST))
            .field(
                Field::new("muc#role", "list-single")
                    .label("Requested role")
                    .value("participant"),
            )
            .field(
                Field::new("muc#jid", "jid-single")
                    .label("User ID")
                    .value(sender.bare.to_string()),
            )
            .field(
                Field::new("muc#roomnick", "text-single")
                    .label("Room nickname")
                    .value(sender.nick.clone()),
            )
            .field(
                Field::new("muc#request_allow", "boolean")
                    .label("Grant voice")
                    .boolean_value(false),
            );
        let message = Element::new("message", NS_CLIENT)
            .with_attr("from", self.jid.as_str())
            .with_child(request.to_element());
        for moderator in self
            .occupants
            .values()
            .filter(|m| m.role == Role::Moderator)
        {
            for s in &moderator.sessions {
                let mut m = message.clone();
                m.set_attr("to", s);
                o.out.push(m);
            }
        }
        Ok(())
    }

    /// §7.8.2 mediated invitations and §7.8.3 declines.
    pub(super) fn invitation(
        &mut self,
        o: &mut Outcome,
        x: &Element,
        from: &FullJid,
    ) -> Result<(), StanzaError> {
        let bare = from.to_bare();
        if let Some(decline) = x.get_child("decline", NS_USER) {
            let to = decline
                .attr("to")
                .and_then(|t| Jid::new(t).ok())
                .ok_or_else(|| err(Cond::BadRequest))?;
            // Only an invitation that was sent can be declined: the room relays nothing
            // else to an address a stranger picks.
            let pending = (bare.to_string(), to.to_bare().to_string());
            let Some(pos) = self.invited.iter().position(|p| *p == pending) else {
                return Err(err(Cond::NotAcceptable).with_text("no invitation to decline"));
            };
            self.invited.remove(pos);
            let mut d = Element::new("decline", NS_USER).with_attr("from", bare.as_str());
            if let Some(reason) = decline.get_child("reason", NS_USER) {
                d.push_child(reason.clone());
            }
            o.out.push(
                Element::new("message", NS_CLIENT)
                    .with_attr("from", self.jid.as_str())
                    .with_attr("to", to.as_str())
                    .with_child(Element::new("x", NS_USER).with_child(d)),
            );
            return Ok(());
        }
        let Some(key) = self.sessions.get(from.as_str()).cloned() else {
            return Err(err(Cond::NotAcceptable).with_text("you are not in the room"));
        };
        self.take_token(&key, self.now_ms)?;
        let inviter = &self.occupants[&key];
        let affiliation = self.affiliation(&bare);
        if self.config.members_only
            && affiliation < Affiliation::Admin
            && !(self.config.allow_invites && affiliation >= Affiliation::Member)
        {
            return Err(err(Cond::Forbidden)); // §9.5
        }
        if !self.config.members_only && !self.config.allow_invites && inviter.role < Role::Moderator
        {
            return Err(err(Cond::Forbidden));
        }
        let invites: Vec<&Element> = x.children().filter(|c| c.is("invite", NS_USER)).collect();
        if invites.is_empty() {
            return Err(err(Cond::BadRequest));
        }
        if invites.len() > MAX_INVITES {
            return Err(err(Cond::PolicyViolation).with_text("too many invitations at once"));
        }
        let mut targets = Vec::new();
        for invite in invites {
            let to = invite
                .attr("to")
                .and_then(|t| Jid::new(t).ok())
                .ok_or_else(|| err(Cond::JidMalformed))?;
            targets.push((to, invite));
        }
        for (to, invite) in targets {
            let mut i = Element::new("invite", NS_USER).with_attr("from", bare.as_str());
            for child in invite
                .children()
                .filter(|c| c.is("reason", NS_USER) || c.is("continue", NS_USER))
            {
                i.push_child(child.clone());
            }
            let mut ux = Element::new("x", NS_USER).with_child(i);
            if let Some(password) = &self.config.password {
                ux.push_child(Element::new("password", NS_USER).with_text(password.clone()));
            }
            let body = format!("{bare} invites you to the room {}", self.jid);
            o.out.push(
                Element::new("message", NS_CLIENT)
                    .with_attr("from", self.jid.as_str())
                    .with_attr("to", to.as_str())
                    .with_child(ux)
                    .with_child(Element::new("body", NS_CLIENT).with_text(body)),
            );
            let invitee = to.to_bare();
            if self.invited.len() >= MAX_PENDING_INVITES {
                self.invited.pop_front();
            }
            self.invited
                .push_back((invitee.to_string(), bare.to_string()));
            // §7.8.2: in a members-only room the invitee becomes a member.
            if self.config.members_only
                && self.affiliation(&invitee) < Affiliation::Member
                && self.affiliation(&invitee) != Affiliation::Outcast
                && self.has_room_for(invitee.as_str()).is_ok()
            {
                self.set_affiliation(invitee.as_str(), Affiliation::Member, None);
                o.changes.push(Change::Affiliation(invitee.to_string()));
            }
        }
        Ok(())
    }
}
