-- XEP-0060 §6.3 subscription options, as the pubsub module writes them (its XEP-0004 result
-- form); '' means the defaults. A pending subscription (§4.2, the authorize access model) is
-- a member row with subscription 'pending', so it needs no table of its own.
ALTER TABLE pubsub_members ADD COLUMN options TEXT NOT NULL DEFAULT '';
