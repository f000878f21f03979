//! Public room logs (XEP-0045 §4.1 "Logging"): while a room's `muc#roomconfig_enablelogging`
//! is on (its occupants were told with status 170), what is said there is stored, and the
//! HTTP listeners serve it read-only, one XHTML page per UTC day:
//!
//! - `<logs_path>/<room JID>/`: the days with lines, newest first;
//! - `<logs_path>/<room JID>/YYYY-MM-DD`: that day's messages and subject changes.
//!
//! The room's disco#info gives the address as `muc#roominfo_logs` (§6.4). Turning logging off
//! stops new lines; what was logged stays until it is `log_days` old or the room is destroyed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use xmppd_core::BareJid;
use xmppd_server::config::Config;
use xmppd_server::registry::{Ctx, HttpPage, HttpPages};
use xmppd_storage::LogLine;

use super::Shared;

/// Most lines one day's page shows (a busy room's day is cut, and says so).
const MAX_LINES: usize = 10_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// Where clients reach the HTTP listeners: `http.public_url`, else the first listener.
pub enum WebBase {
    Public(String),
    Listener {
        scheme: &'static str,
        addr: SocketAddr,
    },
}

pub fn base_url(config: &Config) -> Option<WebBase> {
    let public = config.http.public_url.trim_end_matches('/');
    if !public.is_empty() {
        return Some(WebBase::Public(public.to_string()));
    }
    let https = config.listen.https.first().map(|a| ("https", *a));
    let (scheme, addr) = https.or_else(|| config.listen.http.first().map(|a| ("http", *a)))?;
    Some(WebBase::Listener { scheme, addr })
}

impl WebBase {
    /// The base URL for a served domain: a listener on every address is named by the
    /// domain, which is what clients of that domain resolve.
    pub fn for_domain(&self, domain: &str) -> String {
        match self {
            WebBase::Public(url) => url.clone(),
            WebBase::Listener { scheme, addr } if addr.ip().is_unspecified() => {
                format!("{scheme}://{domain}:{}", addr.port())
            }
            WebBase::Listener { scheme, addr } => format!("{scheme}://{addr}"),
        }
    }
}

/// The pages of every MUC service, by service domain.
pub struct LogPages(pub Arc<BTreeMap<String, Arc<Shared>>>);

#[async_trait]
impl HttpPages for LogPages {
    async fn get(&self, cx: &mut Ctx<'_>, rest: &str) -> HttpPage {
        let (jid, day) = rest.split_once('/').unwrap_or((rest, ""));
        let Some((room, service)) = BareJid::new(jid)
            .ok()
            .and_then(|j| Some((j.node()?.to_string(), j.domain().to_string())))
        else {
            return HttpPage::not_found("not a room address (room@service)");
        };
        if !self.0.contains_key(&service) {
            return HttpPage::not_found("no such chat service here");
        }
        let store = &cx.storage().muc;
        if day.is_empty() {
            return match store.log_days(&service, &room).await {
                Ok(days) if days.is_empty() => HttpPage::not_found("this room has no public log"),
                Ok(days) => xhtml(&format!("{room}@{service}"), &index(&days)),
                Err(e) => server_error(&e),
            };
        }
        let Some(from) = parse_day(day) else {
            return HttpPage::not_found("a day is YYYY-MM-DD");
        };
        match store
            .log(&service, &room, from, from + SECONDS_PER_DAY, MAX_LINES)
            .await
        {
            Ok(lines) if lines.is_empty() => HttpPage::not_found("nothing was logged that day"),
            Ok(lines) => xhtml(&format!("{room}@{service}, {day}"), &day_page(&lines)),
            Err(e) => server_error(&e),
        }
    }
}

fn server_error(e: &xmppd_storage::StorageError) -> HttpPage {
    tracing::error!(error = %e, "reading a room log failed");
    HttpPage {
        status: 500,
        content_type: "text/plain; charset=utf-8",
        body: "the log could not be read\n".into(),
    }
}

/// `YYYY-MM-DD` as the Unix time of its midnight (UTC), only when it reads back the same.
fn parse_day(day: &str) -> Option<i64> {
    let stamp = super::room::parse_iso8601(&format!("{day}T00:00:00Z"))?;
    (date(stamp) == day).then_some(stamp)
}

fn date(stamp: i64) -> String {
    xmppd_server::time::iso8601(stamp)[..10].to_string()
}

fn index(days: &[i64]) -> String {
    let mut body = String::from("<ul>\n");
    for day in days {
        let d = date(day * SECONDS_PER_DAY);
        let _ = writeln!(body, "<li><a href=\"{d}\">{d}</a></li>");
    }
    body.push_str("</ul>\n");
    body
}

fn day_page(lines: &[LogLine]) -> String {
    let mut body = String::from("<table>\n");
    for line in lines {
        let time = &xmppd_server::time::iso8601(line.stamp)[11..19];
        let (class, text) = if line.subject {
            ("subject", format!("set the subject to: {}", line.text))
        } else {
            ("message", line.text.clone())
        };
        let _ = writeln!(
            body,
            "<tr class=\"{class}\"><td class=\"time\">{time}</td><td class=\"nick\">{}</td>\
             <td class=\"text\">{}</td></tr>",
            escape(&line.nick),
            escape(&text)
        );
    }
    body.push_str("</table>\n");
    if lines.len() == MAX_LINES {
        let _ = writeln!(body, "<p>Only the first {MAX_LINES} lines are shown.</p>");
    }
    body
}

/// A well-formed XHTML page (so that it can be read as XML as well as shown).
fn xhtml(title: &str, body: &str) -> HttpPage {
    let title = escape(title);
    HttpPage {
        status: 200,
        content_type: "application/xhtml+xml; charset=utf-8",
        body: format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
             <html xmlns=\"http://www.w3.org/1999/xhtml\"><head><meta charset=\"utf-8\"/>\
             <title>{title}</title></head>\n<body><h1>{title}</h1>\n{body}</body></html>\n"
        ),
    }
}

fn escape(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    xmppd_xml::escape_text(&mut out, text);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_parse_only_when_they_are_dates() {
        assert_eq!(parse_day("1970-01-02"), Some(SECONDS_PER_DAY));
        assert_eq!(date(parse_day("2026-12-03").unwrap()), "2026-12-03");
        for bad in [
            "2026-13-01",
            "2026-02-30",
            "2026-1-01",
            "x",
            "",
            "2026-12-03x",
        ] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_day_page_escapes_what_occupants_wrote() {
        let lines = [LogLine {
            stamp: 3_661,
            nick: "<b>".into(),
            subject: false,
            text: "a & b </td>".into(),
        }];
        let page = day_page(&lines);
        assert!(page.contains("<td class=\"time\">01:01:01</td>"), "{page}");
        assert!(page.contains("&lt;b&gt;") && page.contains("a &amp; b &lt;/td&gt;"));
    }
}
