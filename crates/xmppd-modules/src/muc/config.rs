//! A room's configuration and its `muc#roomconfig` form (XEP-0045 §10.2, §15.5.3), and the
//! `muc#roominfo` form of its disco#info (§15.5.4).

use crate::forms::{Field, Form, FormError, FormKind};

pub const ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
pub const ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";

/// Who sees occupants' real JIDs (§4.2 semi-anonymous / non-anonymous).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whois {
    Moderators,
    Anyone,
}

/// Who may send private messages (`muc#roomconfig_allowpm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowPm {
    Anyone,
    Participants,
    Moderators,
    Nobody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub persistent: bool,
    pub public: bool,
    pub members_only: bool,
    pub moderated: bool,
    /// `Some` when the room is password-protected.
    pub password: Option<String>,
    /// 0: the service's cap.
    pub max_users: usize,
    pub whois: Whois,
    /// Messages kept and sent on join (capped by the service).
    pub history_length: usize,
    pub change_subject: bool,
    pub allow_invites: bool,
    pub allow_pm: AllowPm,
    pub logging: bool,
    /// Roles whose presence is broadcast (`muc#roomconfig_presencebroadcast`).
    pub broadcast: Vec<String>,
    pub pubsub: String,
    /// XEP-0421 occupant ids on every presence and message (on unless the owner says).
    pub occupant_id: bool,
}

/// The room config field for XEP-0421, which registers none: named in Clark notation, as
/// services do for their own fields.
pub const OCCUPANT_ID_FIELD: &str = "{urn:xmpp:occupant-id:0}enabled";

impl RoomConfig {
    pub fn new(history_length: usize) -> RoomConfig {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: None,
            max_users: 0,
            whois: Whois::Moderators,
            history_length,
            change_subject: false,
            allow_invites: false,
            allow_pm: AllowPm::Anyone,
            logging: false,
            broadcast: ROLES.iter().map(|r| r.to_string()).collect(),
            pubsub: String::new(),
            occupant_id: true,
        }
    }

    pub fn broadcasts(&self, role: &str) -> bool {
        self.broadcast.iter().any(|r| r == role)
    }

    /// The form an owner fills in (`FormKind::Form`), or the same values as a submitted
    /// form, which is how a persistent room's configuration is stored.
    pub fn to_form(&self, kind: FormKind) -> Form {
        let full = kind == FormKind::Form;
        let boolean = |var: &str, label: &str, v: bool| {
            Field::new(var, "boolean").label(label).boolean_value(v)
        };
        let mut maxusers = Field::new("muc#roomconfig_maxusers", "list-single")
            .label("Maximum number of occupants (0: the service's limit)")
            .value(self.max_users.to_string());
        let mut whois = Field::new("muc#roomconfig_whois", "list-single")
            .label("Who may discover real JIDs")
            .value(match self.whois {
                Whois::Moderators => "moderators",
                Whois::Anyone => "anyone",
            });
        let mut allowpm = Field::new("muc#roomconfig_allowpm", "list-single")
            .label("Who may send private messages")
            .value(self.allow_pm.as_str());
        let mut broadcast = Field::new("muc#roomconfig_presencebroadcast", "list-multi")
            .label("Roles whose presence is broadcast")
            .values(self.broadcast.iter().cloned());
        if full {
            for n in ["0", "10", "20", "30", "50", "100", "200", "500", "1000"] {
                maxusers = maxusers.option(None, n);
            }
            whois = whois
                .option(Some("Moderators only"), "moderators")
                .option(Some("Anyone"), "anyone");
            for v in PM_CHOICES {
                allowpm = allowpm.option(None, v);
            }
            for r in ROLES {
                broadcast = broadcast.option(None, r);
            }
        }
        let mut form = Form::new(kind);
        if full {
            form = form.title("Room configuration").instructions(
                "Submit the form to configure the room; an empty submission keeps these defaults.",
            );
        }
        form.field(Field::form_type(ROOMCONFIG))
            .field(
                Field::new("muc#roomconfig_roomname", "text-single")
                    .label("Room name")
                    .value(self.name.clone()),
            )
            .field(
                Field::new("muc#roomconfig_roomdesc", "text-single")
                    .label("Description")
                    .value(self.description.clone()),
            )
            .field(boolean(
                "muc#roomconfig_persistentroom",
                "Persistent",
                self.persistent,
            ))
            .field(boolean(
                "muc#roomconfig_publicroom",
                "Listed publicly",
                self.public,
            ))
            .field(boolean(
                "muc#roomconfig_membersonly",
                "Members only",
                self.members_only,
            ))
            .field(boolean(
                "muc#roomconfig_moderatedroom",
                "Moderated",
                self.moderated,
            ))
            .field(boolean(
                "muc#roomconfig_passwordprotectedroom",
                "Password required",
                self.password.is_some(),
            ))
            .field(
                Field::new("muc#roomconfig_roomsecret", "text-private")
                    .label("Password")
                    .value(self.password.clone().unwrap_or_default()),
            )
            .field(maxusers)
            .field(whois)
            .field(
                Field::new("muc#maxhistoryfetch", "text-single")
                    .label("Messages of history sent on join")
                    .value(self.history_length.to_string()),
            )
            .field(boolean(
                "muc#roomconfig_changesubject",
                "Participants may change the subject",
                self.change_subject,
            ))
            .field(boolean(
                "muc#roomconfig_allowinvites",
                "Members may invite",
                self.allow_invites,
            ))
            .field(allowpm)
            .field(boolean(
                "muc#roomconfig_enablelogging",
                "Logged",
                self.logging,
            ))
            .field(broadcast)
            .field(
                Field::new("muc#roomconfig_pubsub", "text-single")
                    .label("Associated pubsub node")
                    .value(self.pubsub.clone()),
            )
            .field(boolean(
                OCCUPANT_ID_FIELD,
                "Occupant ids (XEP-0421)",
                self.occupant_id,
            ))
    }

    /// This configuration with the fields of a submitted form applied; fields left out keep
    /// their value. A value of the wrong type or outside its choices is an error and changes
    /// nothing. `max_history` caps the history length.
    pub fn apply(&self, form: &Form, max_history: usize) -> Result<RoomConfig, FormError> {
        if form.form_type().is_some_and(|t| t != ROOMCONFIG) {
            return Err(FormError("FORM_TYPE is not muc#roomconfig".into()));
        }
        let mut c = self.clone();
        let text = |var: &str, into: &mut String| {
            if let Some(v) = form.single(var) {
                *into = v.to_string();
            }
        };
        text("muc#roomconfig_roomname", &mut c.name);
        text("muc#roomconfig_roomdesc", &mut c.description);
        text("muc#roomconfig_pubsub", &mut c.pubsub);
        let flag = |var: &str, into: &mut bool| -> Result<(), FormError> {
            if let Some(v) = form.boolean(var)? {
                *into = v;
            }
            Ok(())
        };
        flag("muc#roomconfig_persistentroom", &mut c.persistent)?;
        flag("muc#roomconfig_publicroom", &mut c.public)?;
        flag("muc#roomconfig_membersonly", &mut c.members_only)?;
        flag("muc#roomconfig_moderatedroom", &mut c.moderated)?;
        flag("muc#roomconfig_changesubject", &mut c.change_subject)?;
        flag("muc#roomconfig_allowinvites", &mut c.allow_invites)?;
        flag("muc#roomconfig_enablelogging", &mut c.logging)?;
        flag(OCCUPANT_ID_FIELD, &mut c.occupant_id)?;
        let mut protected = c.password.is_some();
        flag("muc#roomconfig_passwordprotectedroom", &mut protected)?;
        let secret = form
            .single("muc#roomconfig_roomsecret")
            .map(str::to_string)
            .or(c.password.take())
            .unwrap_or_default();
        c.password = match (protected, secret.is_empty()) {
            (false, _) => None,
            (true, false) => Some(secret),
            (true, true) => {
                return Err(FormError(
                    "a password-protected room needs a password".into(),
                ))
            }
        };
        match form.single("muc#roomconfig_maxusers") {
            None => {}
            Some("none") => c.max_users = 0,
            Some(_) => {
                c.max_users = form.unsigned("muc#roomconfig_maxusers")?.unwrap_or(0) as usize
            }
        }
        if let Some(w) = form.choice("muc#roomconfig_whois", &["moderators", "anyone"])? {
            c.whois = if w == "anyone" {
                Whois::Anyone
            } else {
                Whois::Moderators
            };
        }
        if let Some(h) = form.unsigned("muc#maxhistoryfetch")? {
            c.history_length = (h as usize).min(max_history);
        }
        if let Some(pm) = form.choice("muc#roomconfig_allowpm", &PM_CHOICES)? {
            c.allow_pm = AllowPm::parse(pm).unwrap_or(AllowPm::Anyone);
        }
        if form.get("muc#roomconfig_presencebroadcast").is_some() {
            let roles = form.multi("muc#roomconfig_presencebroadcast");
            if let Some(bad) = roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
                return Err(FormError(format!("{bad:?} is not a role")));
            }
            c.broadcast = roles.to_vec();
        }
        Ok(c)
    }

    /// The `muc_*` disco features that describe this room (§15.3).
    pub fn features(&self) -> [&'static str; 6] {
        let pick = |b: bool, yes: &'static str, no: &'static str| if b { yes } else { no };
        [
            pick(self.public, "muc_public", "muc_hidden"),
            pick(self.persistent, "muc_persistent", "muc_temporary"),
            pick(self.members_only, "muc_membersonly", "muc_open"),
            pick(self.moderated, "muc_moderated", "muc_unmoderated"),
            pick(
                self.whois == Whois::Anyone,
                "muc_nonanonymous",
                "muc_semianonymous",
            ),
            pick(
                self.password.is_some(),
                "muc_passwordprotected",
                "muc_unsecured",
            ),
        ]
    }
}

pub const ROLES: [&str; 3] = ["moderator", "participant", "visitor"];
const PM_CHOICES: [&str; 4] = ["anyone", "participants", "moderators", "none"];

impl AllowPm {
    fn as_str(self) -> &'static str {
        match self {
            AllowPm::Anyone => "anyone",
            AllowPm::Participants => "participants",
            AllowPm::Moderators => "moderators",
            AllowPm::Nobody => "none",
        }
    }

    fn parse(s: &str) -> Option<AllowPm> {
        Some(match s {
            "anyone" => AllowPm::Anyone,
            "participants" => AllowPm::Participants,
            "moderators" => AllowPm::Moderators,
            "none" => AllowPm::Nobody,
            _ => return None,
        })
    }
}

/// The status codes occupants hear when an owner changes the configuration (§10.2.1):
/// 104 always, 170/171 for logging, 172/173 for anonymity.
pub fn change_codes(old: &RoomConfig, new: &RoomConfig) -> Vec<u16> {
    let mut codes = vec![104];
    match (old.logging, new.logging) {
        (false, true) => codes.push(170),
        (true, false) => codes.push(171),
        _ => {}
    }
    match (old.whois, new.whois) {
        (Whois::Moderators, Whois::Anyone) => codes.push(172),
        (Whois::Anyone, Whois::Moderators) => codes.push(173),
        _ => {}
    }
    codes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(fields: &[(&str, &[&str])]) -> Form {
        fields
            .iter()
            .fold(Form::new(FormKind::Submit), |f, (var, values)| {
                f.field(Field::new(*var, "text-single").values(values.iter().copied()))
            })
    }

    #[test]
    fn the_stored_form_reads_back_to_the_same_configuration() {
        let mut c = RoomConfig::new(20);
        c.name = "Lounge".into();
        c.persistent = true;
        c.password = Some("s3cret".into());
        c.whois = Whois::Anyone;
        c.allow_pm = AllowPm::Moderators;
        c.broadcast = vec!["moderator".into()];
        c.occupant_id = false;
        let back = RoomConfig::new(5)
            .apply(&c.to_form(FormKind::Submit), 50)
            .unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn wrong_types_and_choices_are_refused_and_history_is_capped() {
        let base = RoomConfig::new(20);
        for bad in [
            submit(&[("muc#roomconfig_persistentroom", &["yes"])]),
            submit(&[("muc#roomconfig_maxusers", &["many"])]),
            submit(&[("muc#roomconfig_whois", &["everyone"])]),
            submit(&[("muc#roomconfig_presencebroadcast", &["owner"])]),
            submit(&[("muc#roomconfig_passwordprotectedroom", &["1"])]),
            submit(&[("FORM_TYPE", &["urn:other"])]),
        ] {
            assert!(base.apply(&bad, 50).is_err(), "{bad:?}");
        }
        let capped = base
            .apply(&submit(&[("muc#maxhistoryfetch", &["1000"])]), 50)
            .unwrap();
        assert_eq!(capped.history_length, 50);
        assert_eq!(base.apply(&Form::new(FormKind::Submit), 50).unwrap(), base);
    }

    #[test]
    fn configuration_changes_carry_their_status_codes() {
        let old = RoomConfig::new(20);
        let mut new = old.clone();
        new.logging = true;
        new.whois = Whois::Anyone;
        assert_eq!(change_codes(&old, &new), [104, 170, 172]);
        assert_eq!(change_codes(&new, &old), [104, 171, 173]);
    }
}
