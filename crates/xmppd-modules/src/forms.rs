//! XEP-0004 Data Forms: the one reader and writer every module with a form uses (MUC room
//! configuration, pubsub node configuration, publish-options, voice requests).
//!
//! Parsing is strict where a wrong value would change behaviour (booleans, list choices) and
//! lenient where XEP-0004 §3.2 lets the receiver decide (unknown fields are kept, labels
//! ignored), so each module validates the fields it knows and reports the rest.

use xmppd_core::Element;

pub const NS: &str = "jabber:x:data";

/// The `type` of a form (XEP-0004 §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormKind {
    Form,
    Submit,
    Cancel,
    Result,
}

impl FormKind {
    fn as_str(self) -> &'static str {
        match self {
            FormKind::Form => "form",
            FormKind::Submit => "submit",
            FormKind::Cancel => "cancel",
            FormKind::Result => "result",
        }
    }

    fn parse(s: &str) -> Option<FormKind> {
        Some(match s {
            "form" => FormKind::Form,
            "submit" => FormKind::Submit,
            "cancel" => FormKind::Cancel,
            "result" => FormKind::Result,
            _ => return None,
        })
    }
}

/// One `<field/>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Field {
    pub var: String,
    /// The `type` attribute as written (`text-single` when absent, §3.3).
    pub kind: Option<String>,
    pub label: Option<String>,
    pub desc: Option<String>,
    pub required: bool,
    pub values: Vec<String>,
    /// `(label, value)` of each `<option/>`.
    pub options: Vec<(Option<String>, String)>,
}

impl Field {
    /// A field of type `kind` (`boolean`, `list-single`, `jid-multi`, …).
    pub fn new(var: impl Into<String>, kind: &str) -> Field {
        Field {
            var: var.into(),
            kind: Some(kind.to_string()),
            ..Field::default()
        }
    }

    /// The hidden `FORM_TYPE` field naming the form's namespace (XEP-0068).
    pub fn form_type(ns: &str) -> Field {
        Field::new("FORM_TYPE", "hidden").value(ns)
    }

    pub fn label(mut self, label: impl Into<String>) -> Field {
        self.label = Some(label.into());
        self
    }

    pub fn value(mut self, value: impl Into<String>) -> Field {
        self.values.push(value.into());
        self
    }

    pub fn values<I: IntoIterator<Item = S>, S: Into<String>>(mut self, values: I) -> Field {
        self.values.extend(values.into_iter().map(Into::into));
        self
    }

    pub fn boolean_value(self, value: bool) -> Field {
        self.value(if value { "1" } else { "0" })
    }

    pub fn option(mut self, label: Option<&str>, value: impl Into<String>) -> Field {
        self.options.push((label.map(str::to_string), value.into()));
        self
    }

    pub fn required(mut self) -> Field {
        self.required = true;
        self
    }

    fn to_element(&self) -> Element {
        let mut e = Element::new("field", NS);
        if !self.var.is_empty() {
            e.set_attr("var", self.var.clone());
        }
        if let Some(kind) = &self.kind {
            e.set_attr("type", kind.clone());
        }
        if let Some(label) = &self.label {
            e.set_attr("label", label.clone());
        }
        if let Some(desc) = &self.desc {
            e.push_child(Element::new("desc", NS).with_text(desc.clone()));
        }
        if self.required {
            e.push_child(Element::new("required", NS));
        }
        for v in &self.values {
            e.push_child(Element::new("value", NS).with_text(v.clone()));
        }
        for (label, value) in &self.options {
            let mut o = Element::new("option", NS);
            if let Some(label) = label {
                o.set_attr("label", label.clone());
            }
            o.push_child(Element::new("value", NS).with_text(value.clone()));
            e.push_child(o);
        }
        e
    }

    fn parse(e: &Element) -> Field {
        Field {
            var: e.attr("var").unwrap_or_default().to_string(),
            kind: e.attr("type").map(str::to_string),
            label: e.attr("label").map(str::to_string),
            desc: e.get_child("desc", NS).map(Element::text),
            required: e.has_child("required", NS),
            values: e
                .children()
                .filter(|c| c.is("value", NS))
                .map(Element::text)
                .collect(),
            options: e
                .children()
                .filter(|c| c.is("option", NS))
                .map(|o| {
                    (
                        o.attr("label").map(str::to_string),
                        o.get_child("value", NS)
                            .map(Element::text)
                            .unwrap_or_default(),
                    )
                })
                .collect(),
        }
    }
}

/// Why a submitted form cannot be used; modules turn it into `bad-request` or
/// `not-acceptable` with the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormError(pub String);

impl std::fmt::Display for FormError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A whole `<x xmlns='jabber:x:data'/>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Form {
    pub kind: FormKind,
    pub title: Option<String>,
    pub instructions: Vec<String>,
    pub fields: Vec<Field>,
}

impl Form {
    pub fn new(kind: FormKind) -> Form {
        Form {
            kind,
            title: None,
            instructions: Vec::new(),
            fields: Vec::new(),
        }
    }

    pub fn title(mut self, title: impl Into<String>) -> Form {
        self.title = Some(title.into());
        self
    }

    pub fn instructions(mut self, text: impl Into<String>) -> Form {
        self.instructions.push(text.into());
        self
    }

    pub fn field(mut self, field: Field) -> Form {
        self.fields.push(field);
        self
    }

    /// The first data form among `parent`'s children, parsed.
    pub fn find_in(parent: &Element) -> Option<Result<Form, FormError>> {
        parent.get_child("x", NS).map(Form::parse)
    }

    /// Parses `<x xmlns='jabber:x:data'/>`: a missing or unknown `type` is an error (§3.1).
    pub fn parse(x: &Element) -> Result<Form, FormError> {
        if !x.is("x", NS) {
            return Err(FormError("not a jabber:x:data form".into()));
        }
        let kind = x
            .attr("type")
            .and_then(FormKind::parse)
            .ok_or_else(|| FormError("the form has no valid type".into()))?;
        Ok(Form {
            kind,
            title: x.get_child("title", NS).map(Element::text),
            instructions: x
                .children()
                .filter(|c| c.is("instructions", NS))
                .map(Element::text)
                .collect(),
            fields: x
                .children()
                .filter(|c| c.is("field", NS))
                .map(Field::parse)
                .collect(),
        })
    }

    pub fn to_element(&self) -> Element {
        let mut x = Element::new("x", NS).with_attr("type", self.kind.as_str());
        if let Some(title) = &self.title {
            x.push_child(Element::new("title", NS).with_text(title.clone()));
        }
        for text in &self.instructions {
            x.push_child(Element::new("instructions", NS).with_text(text.clone()));
        }
        for f in &self.fields {
            x.push_child(f.to_element());
        }
        x
    }

    /// The value of the hidden `FORM_TYPE` field, if any.
    pub fn form_type(&self) -> Option<&str> {
        self.single("FORM_TYPE")
    }

    pub fn get(&self, var: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.var == var)
    }

    /// The first value of field `var`.
    pub fn single(&self, var: &str) -> Option<&str> {
        self.get(var)
            .and_then(|f| f.values.first())
            .map(String::as_str)
    }

    /// Every value of field `var` (empty when absent).
    pub fn multi(&self, var: &str) -> &[String] {
        self.get(var).map(|f| f.values.as_slice()).unwrap_or(&[])
    }

    /// Field `var` as a boolean: `1`/`true` and `0`/`false` (XEP-0004 §3.3); `None` when the
    /// field is absent, an error when its value is anything else.
    pub fn boolean(&self, var: &str) -> Result<Option<bool>, FormError> {
        match self.single(var) {
            None => Ok(None),
            Some(v) => parse_boolean(v)
                .map(Some)
                .ok_or_else(|| FormError(format!("{var}: {v:?} is not a boolean"))),
        }
    }

    /// Field `var` as a non-negative integer; `None` when absent.
    pub fn unsigned(&self, var: &str) -> Result<Option<u64>, FormError> {
        match self.single(var) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| FormError(format!("{var}: {v:?} is not a number"))),
        }
    }

    /// Field `var` when it must be one of `allowed` (a `list-single` choice).
    pub fn choice<'a>(&'a self, var: &str, allowed: &[&str]) -> Result<Option<&'a str>, FormError> {
        match self.single(var) {
            None => Ok(None),
            Some(v) if allowed.contains(&v) => Ok(Some(v)),
            Some(v) => Err(FormError(format!("{var}: {v:?} is not one of {allowed:?}"))),
        }
    }
}

/// An XEP-0004 boolean value.
pub fn parse_boolean(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_xml(xml: &str) -> Element {
        xmppd_xml::parse_fragment(xml, "jabber:client").expect("valid xml")
    }

    #[test]
    fn a_submitted_form_reads_back_its_typed_values() {
        let x = parse_xml(
            "<x xmlns='jabber:x:data' type='submit'>\
               <field var='FORM_TYPE' type='hidden'><value>urn:test</value></field>\
               <field var='persistent'><value>true</value></field>\
               <field var='max'><value> 30 </value></field>\
               <field var='owners'><value>a@x</value><value>b@x</value></field>\
               <field var='whois'><value>anyone</value></field>\
             </x>",
        );
        let form = Form::parse(&x).unwrap();
        assert_eq!(form.kind, FormKind::Submit);
        assert_eq!(form.form_type(), Some("urn:test"));
        assert_eq!(form.boolean("persistent"), Ok(Some(true)));
        assert_eq!(form.boolean("absent"), Ok(None));
        assert_eq!(form.unsigned("max"), Ok(Some(30)));
        assert_eq!(form.multi("owners"), ["a@x", "b@x"]);
        assert_eq!(
            form.choice("whois", &["moderators", "anyone"]),
            Ok(Some("anyone"))
        );
        assert!(form.choice("whois", &["moderators"]).is_err());
    }

    #[test]
    fn wrong_types_and_missing_form_type_are_errors() {
        let x = parse_xml(
            "<x xmlns='jabber:x:data' type='submit'>\
               <field var='persistent'><value>yes</value></field>\
               <field var='max'><value>-1</value></field></x>",
        );
        let form = Form::parse(&x).unwrap();
        assert!(form.boolean("persistent").is_err());
        assert!(form.unsigned("max").is_err());
        assert!(Form::parse(&parse_xml("<x xmlns='jabber:x:data'/>")).is_err());
        assert!(Form::parse(&parse_xml("<x xmlns='jabber:x:data' type='other'/>")).is_err());
    }

    #[test]
    fn a_built_form_parses_back_to_itself() {
        let form = Form::new(FormKind::Form)
            .title("Configure")
            .instructions("Fill it in")
            .field(Field::form_type("urn:test"))
            .field(
                Field::new("public", "boolean")
                    .label("Public?")
                    .boolean_value(true),
            )
            .field(
                Field::new("whois", "list-single")
                    .value("moderators")
                    .option(Some("Moderators"), "moderators")
                    .option(None, "anyone")
                    .required(),
            );
        let back = Form::parse(&parse_xml(&form.to_element().to_xml())).unwrap();
        assert_eq!(back, form);
    }
}
