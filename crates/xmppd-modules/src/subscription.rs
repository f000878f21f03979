//! The presence subscription state machine of RFC 6121 §3 and Appendix A, as pure functions.

/// The subscription part of a roster item (RFC 6121 §2.1.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Sub {
    #[default]
    None,
    To,
    From,
    Both,
}

impl Sub {
    pub fn as_str(self) -> &'static str {
        match self {
            Sub::None => "none",
            Sub::To => "to",
            Sub::From => "from",
            Sub::Both => "both",
        }
    }

    pub fn parse(s: &str) -> Sub {
        match s {
            "to" => Sub::To,
            "from" => Sub::From,
            "both" => Sub::Both,
            _ => Sub::None,
        }
    }

    /// We receive the contact's presence.
    pub fn has_to(self) -> bool {
        matches!(self, Sub::To | Sub::Both)
    }

    /// The contact receives our presence.
    pub fn has_from(self) -> bool {
        matches!(self, Sub::From | Sub::Both)
    }

    fn with(to: bool, from: bool) -> Sub {
        match (to, from) {
            (false, false) => Sub::None,
            (true, false) => Sub::To,
            (false, true) => Sub::From,
            (true, true) => Sub::Both,
        }
    }
}

/// Everything the user's server knows about one contact's subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct State {
    pub sub: Sub,
    /// Our request to the contact is pending ("Pending Out").
    pub ask: bool,
    /// The contact's request to us is pending ("Pending In").
    pub pending_in: bool,
    /// A future request from the contact is pre-approved (§3.4).
    pub approved: bool,
}

/// The four subscription presence types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "subscribe" => Some(Kind::Subscribe),
            "subscribed" => Some(Kind::Subscribed),
            "unsubscribe" => Some(Kind::Unsubscribe),
            "unsubscribed" => Some(Kind::Unsubscribed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Subscribe => "subscribe",
            Kind::Subscribed => "subscribed",
            Kind::Unsubscribe => "unsubscribe",
            Kind::Unsubscribed => "unsubscribed",
        }
    }
}

/// What a subscription stanza does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub state: State,
    /// Outbound: send the stanza on to the contact.
    pub route: bool,
    /// Inbound: deliver the stanza to the user's resources.
    pub deliver: bool,
    /// Inbound: answer the contact on the user's behalf with this type.
    pub auto_reply: Option<Kind>,
}

impl Outcome {
    fn new(state: State) -> Self {
        Outcome {
            state,
            route: false,
            deliver: false,
            auto_reply: None,
        }
    }
}

/// The user sends `kind` to the contact (RFC 6121 §3.1.2, §3.1.5, §3.2.2, §3.3.2, §3.4).
pub fn outbound(state: State, kind: Kind) -> Outcome {
    let mut next = state;
    let mut route = true;
    match kind {
        // §3.1.2: set Pending Out unless we already receive the contact's presence.
        Kind::Subscribe => {
            if !state.sub.has_to() {
                next.ask = true;
            }
        }
        // §3.3.2: cancel our subscription (or our pending request).
        Kind::Unsubscribe => {
            next.sub = Sub::with(false, state.sub.has_from());
            next.ask = false;
        }
        Kind::Subscribed => {
            if state.sub.has_from() {
                // Already approved: nothing to do, nothing to send.
                route = false;
            } else if state.pending_in {
                // §3.1.5: approve the pending request.
                next.sub = Sub::with(state.sub.has_to(), true);
                next.pending_in = false;
                next.approved = false;
            } else {
                // §3.4: pre-approval is local state; the contact learns of it when it asks.
                next.approved = true;
                route = false;
            }
        }
        // §3.2.2: cancel or deny the contact's subscription, pending request or pre-approval.
        Kind::Unsubscribed => {
            next.sub = Sub::with(state.sub.has_to(), false);
            next.pending_in = false;
            next.approved = false;
        }
    }
    Outcome {
        route,
        ..Outcome::new(next)
    }
}

/// The contact's server delivers `kind` to the user (RFC 6121 §3.1.3, §3.1.6, §3.2.3, §3.3.3).
pub fn inbound(state: State, kind: Kind) -> Outcome {
    let mut out = Outcome::new(state);
    match kind {
        Kind::Subscribe => {
            if state.sub.has_from() {
                // §3.1.3: already subscribed: answer for the user, do not bother them.
                out.auto_reply = Some(Kind::Subscribed);
            } else if state.approved {
                // §3.4: pre-approved: accept for the user.
                out.state.sub = Sub::with(state.sub.has_to(), true);
                out.state.approved = false;
                out.auto_reply = Some(Kind::Subscribed);
            } else if !state.pending_in {
                out.state.pending_in = true;
                out.deliver = true;
            }
        }
        Kind::Subscribed => {
            // §3.1.6: only an answer to our pending request counts.
            if state.ask && !state.sub.has_to() {
                out.state.sub = Sub::with(true, state.sub.has_from());
                out.state.ask = false;
                out.deliver = true;
            }
        }
        Kind::Unsubscribe => {
            // §3.3.3: the contact stops receiving our presence (or withdraws its request).
            if state.sub.has_from() || state.pending_in {
                out.state.sub = Sub::with(state.sub.has_to(), false);
                out.state.pending_in = false;
                out.deliver = true;
            }
        }
        Kind::Unsubscribed => {
            // §3.2.3: the contact cancels or denies our subscription.
            if state.sub.has_to() || state.ask {
                out.state.sub = Sub::with(false, state.sub.has_from());
                out.state.ask = false;
                out.deliver = true;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every combination of the four state components.
    fn all_states() -> Vec<State> {
        let mut out = Vec::new();
        for sub in [Sub::None, Sub::To, Sub::From, Sub::Both] {
            for ask in [false, true] {
                for pending_in in [false, true] {
                    for approved in [false, true] {
                        out.push(State {
                            sub,
                            ask,
                            pending_in,
                            approved,
                        });
                    }
                }
            }
        }
        out
    }

    const KINDS: [Kind; 4] = [
        Kind::Subscribe,
        Kind::Subscribed,
        Kind::Unsubscribe,
        Kind::Unsubscribed,
    ];

    fn st(sub: Sub, ask: bool, pending_in: bool) -> State {
        State {
            sub,
            ask,
            pending_in,
            approved: false,
        }
    }

    /// RFC 6121 Appendix A.3 (inbound), the rows for states without pre-approval:
    /// (state, stanza) → (new state, delivered to the user).
    #[test]
    fn appendix_a3_inbound_table() {
        use Kind::*;
        use Sub::*;
        let rows = [
            (
                st(None, false, false),
                Subscribe,
                st(None, false, true),
                true,
            ),
            (st(None, true, false), Subscribe, st(None, true, true), true),
            (
                st(None, false, true),
                Subscribe,
                st(None, false, true),
                false,
            ),
            (st(None, true, true), Subscribe, st(None, true, true), false),
            (st(To, false, false), Subscribe, st(To, false, true), true),
            (st(To, false, true), Subscribe, st(To, false, true), false),
            (
                st(From, false, false),
                Subscribe,
                st(From, false, false),
                false,
            ),
            (
                st(From, true, false),
                Subscribe,
                st(From, true, false),
                false,
            ),
            (
                st(Both, false, false),
                Subscribe,
                st(Both, false, false),
                false,
            ),
            (
                st(None, false, false),
                Subscribed,
                st(None, false, false),
                false,
            ),
            (
                st(None, true, false),
                Subscribed,
                st(To, false, false),
                true,
            ),
            (st(None, true, true), Subscribed, st(To, false, true), true),
            (
                st(To, false, false),
                Subscribed,
                st(To, false, false),
                false,
            ),
            (
                st(From, true, false),
                Subscribed,
                st(Both, false, false),
                true,
            ),
            (
                st(From, false, false),
                Subscribed,
                st(From, false, false),
                false,
            ),
            (
                st(Both, false, false),
                Subscribed,
                st(Both, false, false),
                false,
            ),
            (
                st(None, false, false),
                Unsubscribe,
                st(None, false, false),
                false,
            ),
            (
                st(None, false, true),
                Unsubscribe,
                st(None, false, false),
                true,
            ),
            (
                st(None, true, true),
                Unsubscribe,
                st(None, true, false),
                true,
            ),
            (
                st(To, false, false),
                Unsubscribe,
                st(To, false, false),
                false,
            ),
            (st(To, false, true), Unsubscribe, st(To, false, false), true),
            (
                st(From, false, false),
                Unsubscribe,
                st(None, false, false),
                true,
            ),
            (
                st(From, true, false),
                Unsubscribe,
                st(None, true, false),
                true,
            ),
            (
                st(Both, false, false),
                Unsubscribe,
                st(To, false, false),
                true,
            ),
            (
                st(None, false, false),
                Unsubscribed,
                st(None, false, false),
                false,
            ),
            (
                st(None, true, false),
                Unsubscribed,
                st(None, false, false),
                true,
            ),
            (
                st(None, true, true),
                Unsubscribed,
                st(None, false, true),
                true,
            ),
            (
                st(To, false, false),
                Unsubscribed,
                st(None, false, false),
                true,
            ),
            (
                st(To, false, true),
                Unsubscribed,
                st(None, false, true),
                true,
            ),
            (
                st(From, false, false),
                Unsubscribed,
                st(From, false, false),
                false,
            ),
            (
                st(From, true, false),
                Unsubscribed,
                st(From, false, false),
                true,
            ),
            (
                st(Both, false, false),
                Unsubscribed,
                st(From, false, false),
                true,
            ),
        ];
        for (before, kind, after, delivered) in rows {
            let out = inbound(before, kind);
            assert_eq!(
                (out.state, out.deliver),
                (after, delivered),
                "{before:?} + {kind:?}"
            );
        }
    }

    /// RFC 6121 Appendix A.2 (outbound) for the state changes.
    #[test]
    fn appendix_a2_outbound_table() {
        use Kind::*;
        use Sub::*;
        let rows = [
            (st(None, false, false), Subscribe, st(None, true, false)),
            (st(None, false, true), Subscribe, st(None, true, true)),
            (st(To, false, false), Subscribe, st(To, false, false)),
            (st(From, false, false), Subscribe, st(From, true, false)),
            (st(Both, false, false), Subscribe, st(Both, false, false)),
            (st(None, true, false), Unsubscribe, st(None, false, false)),
            (st(To, false, false), Unsubscribe, st(None, false, false)),
            (st(From, true, false), Unsubscribe, st(From, false, false)),
            (st(Both, false, false), Unsubscribe, st(From, false, false)),
            (st(None, false, true), Subscribed, st(From, false, false)),
            (st(None, true, true), Subscribed, st(From, true, false)),
            (st(To, false, true), Subscribed, st(Both, false, false)),
            (st(From, false, false), Subscribed, st(From, false, false)),
            (st(None, false, true), Unsubscribed, st(None, false, false)),
            (st(To, false, true), Unsubscribed, st(To, false, false)),
            (st(From, false, false), Unsubscribed, st(None, false, false)),
            (st(Both, false, false), Unsubscribed, st(To, false, false)),
        ];
        for (before, kind, after) in rows {
            assert_eq!(outbound(before, kind).state, after, "{before:?} + {kind:?}");
        }
    }

    #[test]
    fn pre_approval() {
        let out = outbound(State::default(), Kind::Subscribed);
        assert!(out.state.approved && !out.route, "pre-approval stays local");
        let out = inbound(out.state, Kind::Subscribe);
        assert_eq!(out.state.sub, Sub::From);
        assert!(!out.state.approved && !out.deliver);
        assert_eq!(out.auto_reply, Some(Kind::Subscribed));
        // Denying clears a pre-approval.
        let approved = State {
            approved: true,
            ..State::default()
        };
        assert!(!outbound(approved, Kind::Unsubscribed).state.approved);
    }

    /// Properties that must hold from every state, for every stanza.
    #[test]
    fn invariants_over_all_states() {
        for state in all_states() {
            for kind in KINDS {
                let out = outbound(state, kind);
                // Only the user's own approval adds "from"; only the contact adds "to".
                if !state.sub.has_from() && out.state.sub.has_from() {
                    assert!(
                        kind == Kind::Subscribed && state.pending_in,
                        "{state:?} {kind:?}"
                    );
                }
                assert!(
                    !out.state.sub.has_to() || state.sub.has_to(),
                    "{state:?} {kind:?}"
                );
                let inb = inbound(state, kind);
                if inb.state.sub.has_to() && !state.sub.has_to() {
                    assert!(kind == Kind::Subscribed && state.ask, "{state:?} {kind:?}");
                }
                if inb.state.sub.has_from() && !state.sub.has_from() {
                    assert!(
                        kind == Kind::Subscribe && state.approved,
                        "{state:?} {kind:?}"
                    );
                }
                // An auto-reply is never also delivered to the user.
                assert!(
                    !(inb.deliver && inb.auto_reply.is_some()),
                    "{state:?} {kind:?}"
                );
                // Applying the same stanza twice changes nothing more (idempotence).
                assert_eq!(
                    inbound(inb.state, kind).state,
                    inb.state,
                    "{state:?} {kind:?}"
                );
                if kind != Kind::Subscribed || !state.pending_in {
                    assert_eq!(
                        outbound(out.state, kind).state,
                        out.state,
                        "{state:?} {kind:?}"
                    );
                }
            }
        }
    }

    /// A reference model of one direction of a subscription (A wants B's presence), written
    /// from RFC 6121 §3 and independent of the code above.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    struct Direction {
        requested: bool,
        subscribed: bool,
        /// B approved in advance (§3.4).
        preapproved: bool,
    }

    impl Direction {
        /// A sends `kind` to B about A receiving B's presence, or B answers.
        fn a_sends(&mut self, kind: Kind) {
            match kind {
                Kind::Subscribe if self.subscribed => {}
                Kind::Subscribe if self.preapproved => {
                    self.subscribed = true;
                    self.preapproved = false;
                }
                Kind::Subscribe => self.requested = true,
                Kind::Unsubscribe => {
                    self.subscribed = false;
                    self.requested = false;
                }
                _ => {}
            }
        }

        fn b_sends(&mut self, kind: Kind) {
            match kind {
                Kind::Subscribed if self.requested => {
                    self.subscribed = true;
                    self.requested = false;
                }
                Kind::Subscribed if !self.subscribed => self.preapproved = true,
                Kind::Unsubscribed => *self = Direction::default(),
                _ => {}
            }
        }
    }

    /// Two accounts whose servers run the state machine, every stanza delivered at once.
    struct Pair {
        /// [0]: A's item for B, [1]: B's item for A.
        items: [State; 2],
    }

    impl Pair {
        fn send(&mut self, from: usize, kind: Kind) {
            let to = 1 - from;
            let out = outbound(self.items[from], kind);
            self.items[from] = out.state;
            if out.route {
                let inb = inbound(self.items[to], kind);
                self.items[to] = inb.state;
                if let Some(reply) = inb.auto_reply {
                    // The server answers for its user, straight to the other side.
                    self.items[from] = inbound(self.items[from], reply).state;
                }
            }
        }
    }

    fn kinds() -> impl proptest::strategy::Strategy<Value = Kind> {
        proptest::prop_oneof![
            proptest::strategy::Just(Kind::Subscribe),
            proptest::strategy::Just(Kind::Subscribed),
            proptest::strategy::Just(Kind::Unsubscribe),
            proptest::strategy::Just(Kind::Unsubscribed),
        ]
    }

    proptest::proptest! {
        /// Any sequence of subscription stanzas from either side leaves both servers where
        /// the reference model says, and the two rosters agree with each other.
        #[test]
        fn both_sides_follow_the_reference_model(
            steps in proptest::collection::vec((0usize..2, kinds()), 0..40)
        ) {
            let mut pair = Pair { items: [State::default(); 2] };
            // [0]: A receives B's presence; [1]: B receives A's.
            let mut model = [Direction::default(); 2];
            for (from, kind) in steps {
                pair.send(from, kind);
                // `from` acts as A in the direction where it is the subscriber, as B in
                // the other.
                model[from].a_sends(kind);
                model[1 - from].b_sends(kind);
                for (me, dir) in [(0usize, 0usize), (1, 1)] {
                    let other = 1 - me;
                    let (mine, theirs) = (pair.items[me], pair.items[other]);
                    let d = model[dir];
                    proptest::prop_assert_eq!(mine.sub.has_to(), d.subscribed);
                    proptest::prop_assert_eq!(mine.ask, d.requested);
                    proptest::prop_assert_eq!(theirs.sub.has_from(), d.subscribed);
                    proptest::prop_assert_eq!(theirs.pending_in, d.requested);
                    proptest::prop_assert_eq!(theirs.approved, d.preapproved);
                }
            }
        }
    }
}
