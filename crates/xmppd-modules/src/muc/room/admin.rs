//! Iqs to a room and its occupants: disco (§6), nick registration (§7.10), roles and
//! affiliations (§8–§10), configuration and destruction (§10), self-ping (XEP-0410) and
//! iqs forwarded to occupants.

use super::*;

impl Room {
    // ---- iq (disco, §8–§10 admin and owner, XEP-0410 self-ping) ----

    pub(super) fn iq(
        &mut self,
        o: &mut Outcome,
        stanza: &Stanza,
        from: &FullJid,
    ) -> Result<(), StanzaError> {
        let payload = stanza.iq_payload().ok_or_else(|| err(Cond::BadRequest))?;
        let get = stanza.stanza_type() == "get";
        let to_nick = stanza
            .to
            .as_ref()
            .and_then(|t| t.resource())
            .map(|r| r.as_str().to_string());
        if let Some(nick) = to_nick {
            // XEP-0410 §4: the service answers a self-ping for the occupant.
            let me = self
                .by_session(from.as_str())
                .ok_or_else(|| err(Cond::NotAcceptable))?;
            if payload.is("ping", NS_PING) && nick::key(&me.nick) == nick::key(&nick) {
                o.out.push(stanza.iq_result(None));
                return Ok(());
            }
            return self.forward_iq(o, stanza, from, &nick);
        }
        let result = match (payload.ns(), payload.name(), get) {
            (NS_DISCO_INFO, "query", true) if payload.attr("node").is_none() => {
                Some(self.disco_info())
            }
            (NS_DISCO_ITEMS, "query", true) => Some(Element::new("query", NS_DISCO_ITEMS)),
            (NS_PING, "ping", true) => None,
            (NS_ADMIN, "query", true) => Some(self.admin_list(payload, from)?),
            (NS_ADMIN, "query", false) => {
                self.admin_set(o, payload, from)?;
                None
            }
            (NS_REGISTER, "query", true) => Some(self.registration_form(from)),
            (NS_REGISTER, "query", false) => {
                self.register(o, payload, from)?;
                None
            }
            (NS_OWNER, "query", true) => {
                self.require_owner(from)?;
                Some(
                    Element::new("query", NS_OWNER)
                        .with_child(self.config.to_form(FormKind::Form).to_element()),
                )
            }
            (NS_OWNER, "query", false) => {
                self.require_owner(from)?;
                // The reply goes first: after a destroy, the owner's client still expects it.
                return self.owner_set(o, stanza, payload);
            }
            _ => return Err(err(Cond::ServiceUnavailable)),
        };
        o.out.push(stanza.iq_result(result));
        Ok(())
    }

    /// An iq for another occupant goes from the sender's occupant JID, under an id of the
    /// room's own so the answer finds its way back without either side learning the
    /// other's real JID (§17.4). A vCard request goes to the occupant's bare JID, whose
    /// server answers it (XEP-0054 §3.2), so every session of a multi-session occupant
    /// shows the same vCard; any other iq goes to the occupant's first session.
    pub(super) fn forward_iq(
        &mut self,
        o: &mut Outcome,
        stanza: &Stanza,
        from: &FullJid,
        nick: &str,
    ) -> Result<(), StanzaError> {
        let key = self
            .sessions
            .get(from.as_str())
            .cloned()
            .ok_or_else(|| err(Cond::NotAcceptable))?;
        // Like messages, so that the room relays no more than it is sent.
        self.take_token(&key, self.now_ms)?;
        let sender = &self.occupants[&key];
        let target = self
            .occupants
            .get(&nick::key(nick))
            .ok_or_else(|| err(Cond::ItemNotFound))?;
        let first = target
            .sessions
            .first()
            .ok_or_else(|| err(Cond::ItemNotFound))?;
        let vcard = stanza
            .iq_payload()
            .is_some_and(|p| p.is("vCard", crate::vcard::NS));
        let to = if vcard {
            target.bare.to_string()
        } else {
            first.clone()
        };
        let (sender_jid, target_jid) = (
            self.occupant_jid(&sender.nick),
            self.occupant_jid(&target.nick),
        );
        self.next_forward += 1;
        let id = format!("muc-fwd-{}", self.next_forward);
        let mut el = stanza.element().clone();
        el.set_attr("id", id.as_str());
        el.set_attr("from", sender_jid);
        el.set_attr("to", to.as_str());
        let back = Forwarded {
            asked: to.clone(),
            id: stanza.id().unwrap_or_default().to_string(),
            to: from.to_string(),
            from: target_jid,
        };
        if self.forwards.len() >= MAX_FORWARDS {
            self.forwards.pop_front();
        }
        self.forwards.push_back((id, back));
        o.out.push(el);
        Ok(())
    }

    /// The answer to an iq the room forwarded, back to whoever asked.
    pub(super) fn forwarded_answer(&mut self, o: &mut Outcome, stanza: &Stanza) {
        let Some(id) = stanza.id() else {
            return;
        };
        let from = stanza.from.as_ref().map(|f| f.as_str());
        let Some(pos) = self
            .forwards
            .iter()
            .position(|(i, f)| i == id && Some(f.asked.as_str()) == from)
        else {
            return;
        };
        let (_, back) = self.forwards.remove(pos).expect("found");
        let mut el = stanza.element().clone();
        el.set_attr("id", back.id);
        el.set_attr("from", back.from);
        el.set_attr("to", back.to);
        o.out.push(el);
    }

    /// §7.10: the form to reserve a nick, or `<registered/>` with it when there is one.
    pub(super) fn registration_form(&self, from: &FullJid) -> Element {
        use crate::forms::Field;
        let mut q = Element::new("query", NS_REGISTER);
        let reserved = self
            .affiliations
            .get(from.to_bare().as_str())
            .and_then(|e| e.nick.clone());
        if let Some(nick) = &reserved {
            q.push_child(Element::new("registered", NS_REGISTER));
            q.push_child(Element::new("username", NS_REGISTER).with_text(nick.clone()));
        }
        let form = Form::new(FormKind::Form)
            .title("Reserve a nickname")
            .field(Field::form_type(NS_REGISTER_FORM))
            .field(
                Field::new("muc#register_roomnick", "text-single")
                    .label("Nickname")
                    .values(reserved)
                    .required(),
            );
        q.push_child(form.to_element());
        q
    }

    /// §7.10: reserving a nick makes the user a member; `<remove/>` cancels both.
    pub(super) fn register(
        &mut self,
        o: &mut Outcome,
        payload: &Element,
        from: &FullJid,
    ) -> Result<(), StanzaError> {
        let bare = from.to_bare();
        let mine = self.affiliation(&bare);
        if mine == Affiliation::Outcast {
            return Err(err(Cond::Forbidden));
        }
        if payload.has_child("remove", NS_REGISTER) {
            if mine >= Affiliation::Admin {
                return Err(err(Cond::NotAllowed).with_text("admins and owners stay"));
            }
            self.set_affiliation(bare.as_str(), Affiliation::None, None);
            o.changes.push(Change::Affiliation(bare.to_string()));
            return Ok(());
        }
        let form = match Form::find_in(payload) {
            Some(Ok(f)) if f.kind == FormKind::Submit => f,
            Some(Err(e)) => return Err(err(Cond::BadRequest).with_text(e.0)),
            _ => return Err(err(Cond::BadRequest)),
        };
        if form.form_type().is_some_and(|t| t != NS_REGISTER_FORM) {
            return Err(err(Cond::BadRequest).with_text("FORM_TYPE is not muc#register"));
        }
        let requested = form.single("muc#register_roomnick").ok_or_else(|| {
            err(Cond::NotAcceptable).with_text("muc#register_roomnick is required")
        })?;
        let (nick, _) = nick::prepare(requested, self.limits.max_nick_chars)
            .ok_or_else(|| err(Cond::NotAcceptable).with_text("not an acceptable nickname"))?;
        if self.nick_taken(&nick, &bare) {
            return Err(err(Cond::Conflict));
        }
        self.has_room_for(bare.as_str())?;
        if mine < Affiliation::Member {
            self.set_affiliation(bare.as_str(), Affiliation::Member, None);
        }
        if let Some(e) = self.affiliations.get_mut(bare.as_str()) {
            e.nick = Some(nick);
        }
        o.changes.push(Change::Affiliation(bare.to_string()));
        Ok(())
    }

    /// The room's disco#info: identity, `muc_*` features and the roominfo form (§6.4).
    pub fn disco_info(&self) -> Element {
        let mut q = Element::new("query", NS_DISCO_INFO).with_child(
            Element::new("identity", NS_DISCO_INFO)
                .with_attr("category", "conference")
                .with_attr("type", "text")
                .with_attr(
                    "name",
                    if self.config.name.is_empty() {
                        self.jid.node().map(|n| n.as_str()).unwrap_or_default()
                    } else {
                        &self.config.name
                    },
                ),
        );
        let mut features = vec![
            NS_MUC,
            NS_SELF_PING,
            NS_STABLE_ID,
            NS_DISCO_INFO,
            NS_REGISTER,
        ];
        features.extend(self.config.features());
        if self.config.occupant_id {
            features.push(NS_OCCUPANT_ID);
        }
        for f in features {
            q.push_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", f));
        }
        let subject = self
            .subject
            .as_ref()
            .and_then(|s| s.get_child("subject", NS_CLIENT))
            .map(Element::text)
            .unwrap_or_default();
        use crate::forms::Field;
        let form = Form::new(FormKind::Result)
            .field(Field::form_type(config::ROOMINFO))
            .field(
                Field::new("muc#roominfo_description", "text-single")
                    .label("Description")
                    .value(self.config.description.clone()),
            )
            .field(
                Field::new("muc#roominfo_occupants", "text-single")
                    .label("Number of occupants")
                    .value(self.occupants.len().to_string()),
            )
            .field(
                Field::new("muc#roominfo_subject", "text-single")
                    .label("Subject")
                    .value(subject),
            )
            .field(
                Field::new("muc#roominfo_subjectmod", "boolean")
                    .label("Occupants may change the subject")
                    .boolean_value(self.config.change_subject),
            )
            .field(
                Field::new("muc#roomconfig_roomname", "text-single")
                    .label("Name")
                    .value(self.config.name.clone()),
            )
            .field(
                Field::new("muc#maxhistoryfetch", "text-single")
                    .label("Maximum history")
                    .value(self.config.history_length.to_string()),
            );
        let form = match (&self.limits.logs_url, self.config.logging) {
            (Some(base), true) => form.field(
                Field::new("muc#roominfo_logs", "text-single")
                    .label("URL for discussion logs")
                    .value(format!("{base}{}/", self.jid())),
            ),
            _ => form,
        };
        q.push_child(form.to_element());
        q
    }

    pub(super) fn require_owner(&self, from: &FullJid) -> Result<(), StanzaError> {
        if self.affiliation(&from.to_bare()) == Affiliation::Owner {
            Ok(())
        } else {
            Err(err(Cond::Forbidden))
        }
    }

    /// §10.1.2 instant room, §10.1.3 reserved room, §10.2 configuration, §10.9 destroy.
    pub(super) fn owner_set(
        &mut self,
        o: &mut Outcome,
        stanza: &Stanza,
        payload: &Element,
    ) -> Result<(), StanzaError> {
        if let Some(destroy) = payload.get_child("destroy", NS_OWNER) {
            o.out.push(stanza.iq_result(None));
            self.destroy(o, destroy);
            return Ok(());
        }
        let form = match Form::find_in(payload) {
            None => return Err(err(Cond::BadRequest)),
            Some(Err(e)) => return Err(err(Cond::BadRequest).with_text(e.0)),
            Some(Ok(f)) => f,
        };
        match form.kind {
            FormKind::Cancel => {
                o.out.push(stanza.iq_result(None));
                // §10.1.3: cancelling the configuration of a new room destroys it.
                if self.locked {
                    self.destroy(o, &Element::new("destroy", NS_OWNER));
                }
                return Ok(());
            }
            FormKind::Submit => {}
            _ => return Err(err(Cond::BadRequest)),
        }
        let new = self
            .config
            .apply(&form, self.limits.max_history)
            .map_err(|e| err(Cond::NotAcceptable).with_text(e.0))?;
        let old = std::mem::replace(&mut self.config, new);
        while self.history.len() > self.config.history_length {
            self.history.pop_front();
        }
        o.out.push(stanza.iq_result(None));
        o.changes.push(Change::Room);
        if self.locked {
            self.locked = false;
            return Ok(());
        }
        // §10.2.1: occupants hear what changed.
        let mut x = Element::new("x", NS_USER);
        for code in config::change_codes(&old, &self.config) {
            x.push_child(Element::new("status", NS_USER).with_attr("code", code.to_string()));
        }
        let notice = Element::new("message", NS_CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("from", self.jid.as_str())
            .with_child(x);
        self.fan_out(o, &notice);
        if self.config.members_only && !old.members_only {
            // 322 (§10.2): those who are not members leave.
            let out: Vec<String> = self
                .occupants
                .iter()
                .filter(|(_, occ)| self.affiliation(&occ.bare) < Affiliation::Member)
                .map(|(k, _)| k.clone())
                .collect();
            for key in out {
                self.remove_occupant(o, &key, 322, &ItemInfo::default());
            }
        }
        if old.whois != self.config.whois {
            // Who sees real JIDs changed: everyone gets the list again with or without them.
            let keys: Vec<String> = self.occupants.keys().cloned().collect();
            for k in keys {
                let occ = &self.occupants[&k];
                self.broadcast_presence(o, occ, false, &[], None, &ItemInfo::default());
            }
        }
        Ok(())
    }

    pub(super) fn destroy(&mut self, o: &mut Outcome, destroy: &Element) {
        let mut d = Element::new("destroy", NS_USER);
        if let Some(alt) = destroy.attr("jid") {
            d.set_attr("jid", alt);
        }
        for c in destroy
            .children()
            .filter(|c| c.name() == "reason" || c.name() == "password")
        {
            d.push_child(Element::new(c.name(), NS_USER).with_text(c.text()));
        }
        for occ in self.occupants.values() {
            for s in &occ.sessions {
                let item = Element::new("item", NS_USER)
                    .with_attr("affiliation", "none")
                    .with_attr("role", "none");
                o.out.push(
                    Element::new("presence", NS_CLIENT)
                        .with_attr("type", "unavailable")
                        .with_attr("from", self.occupant_jid(&occ.nick))
                        .with_attr("to", s)
                        .with_child(
                            Element::new("x", NS_USER)
                                .with_child(item)
                                .with_child(d.clone()),
                        ),
                );
            }
        }
        self.occupants.clear();
        self.sessions.clear();
        self.destroyed = true;
        o.changes.push(Change::Destroyed);
    }

    /// Takes an occupant out with a status code (307 kick, 301 ban, 321, 322): unavailable
    /// to everyone, itself included with 110.
    pub(super) fn remove_occupant(
        &mut self,
        o: &mut Outcome,
        key: &str,
        code: u16,
        info: &ItemInfo,
    ) {
        let Some(mut occ) = self.occupants.remove(key) else {
            return;
        };
        for s in &occ.sessions {
            self.sessions.remove(s);
        }
        occ.role = Role::None;
        self.broadcast_presence(o, &occ, true, &[code], Some(&[code]), info);
    }

    /// Role (by nick) and affiliation (by JID) lists (§8.5, §9.2, §9.5, §9.8, §10.5, §10.8).
    pub(super) fn admin_list(
        &self,
        payload: &Element,
        from: &FullJid,
    ) -> Result<Element, StanzaError> {
        let item = payload
            .get_child("item", NS_ADMIN)
            .ok_or_else(|| err(Cond::BadRequest))?;
        let me = from.to_bare();
        let mut q = Element::new("query", NS_ADMIN);
        if let Some(role) = item.attr("role") {
            let role = Role::parse(role).ok_or_else(|| err(Cond::BadRequest))?;
            let viewer = self
                .by_session(from.as_str())
                .filter(|v| v.role == Role::Moderator)
                .ok_or_else(|| err(Cond::Forbidden))?;
            for occ in self.occupants.values().filter(|o| o.role == role) {
                let mut i = Element::new("item", NS_ADMIN)
                    .with_attr("nick", &occ.nick)
                    .with_attr("role", role.as_str())
                    .with_attr("affiliation", self.affiliation(&occ.bare).as_str());
                if self.sees_jids(viewer) {
                    i.set_attr("jid", occ.bare.as_str());
                }
                q.push_child(i);
            }
            return Ok(q);
        }
        let affiliation = item
            .attr("affiliation")
            .and_then(Affiliation::parse)
            .ok_or_else(|| err(Cond::BadRequest))?;
        let mine = self.affiliation(&me);
        // §9.5: in a non-anonymous members-only room, members may read who belongs (clients
        // encrypting for every member need it); the ban list stays with admins.
        let member_may = self.config.members_only
            && self.config.whois == Whois::Anyone
            && mine >= Affiliation::Member
            && affiliation >= Affiliation::Member;
        if mine < Affiliation::Admin && !member_may {
            return Err(err(Cond::Forbidden));
        }
        let mut list: Vec<(&String, &AffiliationEntry)> = self
            .affiliations
            .iter()
            .filter(|(_, e)| e.affiliation == affiliation)
            .collect();
        list.sort_by(|a, b| a.0.cmp(b.0));
        for (jid, e) in list {
            let mut i = Element::new("item", NS_ADMIN)
                .with_attr("jid", jid)
                .with_attr("affiliation", affiliation.as_str());
            if let Some(nick) = &e.nick {
                i.set_attr("nick", nick);
            }
            if let Some(reason) = &e.reason {
                i.push_child(Element::new("reason", NS_ADMIN).with_text(reason.clone()));
            }
            q.push_child(i);
        }
        Ok(q)
    }

    /// Role and affiliation changes (§8.2–§8.5, §9.1–§9.8, §10.3–§10.8), all or none.
    pub(super) fn admin_set(
        &mut self,
        o: &mut Outcome,
        payload: &Element,
        from: &FullJid,
    ) -> Result<(), StanzaError> {
        let items: Vec<&Element> = payload
            .children()
            .filter(|c| c.is("item", NS_ADMIN))
            .collect();
        if items.is_empty() {
            return Err(err(Cond::BadRequest));
        }
        let me = from.to_bare();
        let mine = self.affiliation(&me);
        let actor = self
            .by_session(from.as_str())
            .map(|a| (a.nick.clone(), a.role));
        let mut plan = Vec::new();
        for item in &items {
            let reason = item.get_child("reason", NS_ADMIN).map(Element::text);
            if let Some(role) = item.attr("role") {
                let role = Role::parse(role).ok_or_else(|| err(Cond::BadRequest))?;
                let nick = item.attr("nick").ok_or_else(|| err(Cond::BadRequest))?;
                let key = nick::key(nick);
                let target = self
                    .occupants
                    .get(&key)
                    .ok_or_else(|| err(Cond::ItemNotFound))?;
                let theirs = self.affiliation(&target.bare);
                let (_, my_role) = actor.clone().ok_or_else(|| err(Cond::Forbidden))?;
                if my_role != Role::Moderator {
                    return Err(err(Cond::Forbidden));
                }
                // §8.2–§8.4: admins and owners keep their role against moderators.
                if theirs >= Affiliation::Admin && role != Role::Moderator && theirs >= mine {
                    return Err(err(Cond::NotAllowed));
                }
                // §9.6/§9.7: moderator status comes and goes with admins only.
                if (role == Role::Moderator || target.role == Role::Moderator)
                    && mine < Affiliation::Admin
                {
                    return Err(err(Cond::Forbidden));
                }
                plan.push(Plan::Role(key, role, reason));
            } else if let Some(affiliation) = item.attr("affiliation") {
                let affiliation =
                    Affiliation::parse(affiliation).ok_or_else(|| err(Cond::BadRequest))?;
                let jid = item
                    .attr("jid")
                    .and_then(|j| Jid::new(j).ok())
                    .ok_or_else(|| err(Cond::JidMalformed))?;
                let jid = jid.to_bare();
                let theirs = self.affiliation(&jid);
                // §10.3–§10.8: owners manage owners and admins; admins the rest (§9).
                let needed = if affiliation >= Affiliation::Admin || theirs >= Affiliation::Admin {
                    Affiliation::Owner
                } else {
                    Affiliation::Admin
                };
                if mine < needed {
                    return Err(if mine >= Affiliation::Admin {
                        err(Cond::NotAllowed)
                    } else {
                        err(Cond::Forbidden)
                    });
                }
                if affiliation != Affiliation::None {
                    self.has_room_for(jid.as_str())?;
                }
                plan.push(Plan::Affiliation(jid, affiliation, reason));
            } else {
                return Err(err(Cond::BadRequest));
            }
        }
        // §10.4: a room keeps at least one owner.
        let mut owners: Vec<String> = self
            .affiliations
            .iter()
            .filter(|(_, e)| e.affiliation == Affiliation::Owner)
            .map(|(j, _)| j.clone())
            .collect();
        for p in &plan {
            if let Plan::Affiliation(jid, a, _) = p {
                owners.retain(|j| j != jid.as_str());
                if *a == Affiliation::Owner {
                    owners.push(jid.to_string());
                }
            }
        }
        if owners.is_empty() {
            return Err(err(Cond::Conflict).with_text("a room needs an owner"));
        }
        let actor_nick = actor.map(|a| a.0);
        for p in plan {
            match p {
                Plan::Role(key, role, reason) => {
                    self.apply_role(o, &key, role, actor_nick.as_deref(), reason.as_deref())
                }
                Plan::Affiliation(jid, a, reason) => {
                    self.apply_affiliation(o, &jid, a, actor_nick.as_deref(), reason.as_deref())
                }
            }
        }
        Ok(())
    }

    pub(super) fn apply_role(
        &mut self,
        o: &mut Outcome,
        key: &str,
        role: Role,
        actor: Option<&str>,
        reason: Option<&str>,
    ) {
        let info = ItemInfo {
            nick: None,
            actor,
            reason,
        };
        if role == Role::None {
            return self.remove_occupant(o, key, 307, &info); // §8.2 kick
        }
        let Some(occ) = self.occupants.get_mut(key) else {
            return;
        };
        occ.role = role;
        let occ = &self.occupants[key];
        self.broadcast_presence(o, occ, false, &[], Some(&[]), &info);
    }

    pub(super) fn apply_affiliation(
        &mut self,
        o: &mut Outcome,
        jid: &BareJid,
        a: Affiliation,
        actor: Option<&str>,
        reason: Option<&str>,
    ) {
        self.set_affiliation(jid.as_str(), a, reason);
        o.changes.push(Change::Affiliation(jid.to_string()));
        let info = ItemInfo {
            nick: None,
            actor,
            reason,
        };
        let keys: Vec<String> = self
            .occupants
            .iter()
            .filter(|(_, occ)| occ.bare == *jid)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if a == Affiliation::Outcast {
                self.remove_occupant(o, &key, 301, &info); // §9.1 ban
            } else if a < Affiliation::Member && self.config.members_only {
                self.remove_occupant(o, &key, 321, &info); // §9.4
            } else {
                let role = self.default_role(a);
                let occ = self.occupants.get_mut(&key).expect("listed");
                occ.role = role;
                let occ = &self.occupants[&key];
                self.broadcast_presence(o, occ, false, &[], Some(&[]), &info);
            }
        }
    }
}

enum Plan {
    Role(String, Role, Option<String>),
    Affiliation(BareJid, Affiliation, Option<String>),
}
