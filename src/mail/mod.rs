//! Email: messages with a plain-text and an HTML body, sent over SMTP (`SMTP_URL`) with
//! `lettre`, from the outbox. Without `SMTP_URL` outside production the message is written
//! to the log instead (development); in production it stays in the outbox, retried until
//! `SMTP_URL` is set or it is given up.

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::config::Config;

mod break_glass;
pub use break_glass::{break_glass_notice, BreakGlassNotice};

/// One message, as the outbox keeps it until it is sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl Email {
    /// What the outbox keeps of a sent message: who and what, not the body (which may
    /// carry a one-use link).
    pub fn receipt(&self) -> serde_json::Value {
        serde_json::json!({ "to": self.to, "subject": self.subject })
    }
}

pub struct Mailer {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
    log_bodies: bool,
}

impl Mailer {
    pub fn from_config(config: &Config) -> anyhow::Result<Mailer> {
        let from: Mailbox = config.mail_from.parse().map_err(|_| {
            anyhow::anyhow!("MAIL_FROM is not an address such as Molar <no-reply@example.com>")
        })?;
        let transport = match &config.smtp_url {
            Some(url) => Some(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
                    .map_err(|_| {
                        anyhow::anyhow!("SMTP_URL is not a usable smtp:// or smtps:// URL")
                    })?
                    .timeout(Some(std::time::Duration::from_secs(30)))
                    .build(),
            ),
            None => {
                tracing::warn!("SMTP_URL is not set: email is written to the log, not sent");
                None
            }
        };
        if config.is_production() && !config.public_app_url.starts_with("https://") {
            tracing::warn!(url = %config.public_app_url, "PUBLIC_APP_URL is not an https:// address: links in emails will not be");
        }
        Ok(Mailer {
            transport,
            from,
            log_bodies: !config.is_production(),
        })
    }

    /// Sends one message; an error says why (for the outbox's record and its retry).
    pub async fn send(&self, email: &Email) -> Result<(), String> {
        let Some(transport) = &self.transport else {
            if self.log_bodies {
                tracing::info!(to = %email.to, subject = %email.subject, body = %email.text, "email (not sent: SMTP_URL is not set)");
                return Ok(());
            }
            // Production: kept and retried, so that it goes out once SMTP_URL is set.
            return Err("SMTP_URL is not set".into());
        };
        let to: Mailbox = email
            .to
            .parse()
            .map_err(|_| "the recipient's address is not valid".to_owned())?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject.clone())
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(email.text.clone()),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(email.html.clone()),
                    ),
            )
            .map_err(|e| format!("the message could not be built: {e}"))?;
        transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP: {e}"))
    }
}

/// Escapes text for an HTML body.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One paragraph of a message: text, or a link with its label (the plain-text part shows
/// the address itself).
enum Part<'a> {
    Text(String),
    Link { label: &'a str, href: &'a str },
}

/// A message greeting `name`, with the same paragraphs in its plain-text and HTML parts.
fn compose(to: &str, subject: &str, name: &str, parts: &[Part<'_>]) -> Email {
    let mut text = format!("Hello {name},\n");
    let mut html = format!("<p>Hello {},</p>", html_escape(name));
    for part in parts {
        match part {
            Part::Text(t) => {
                text.push_str(&format!("\n{t}\n"));
                html.push_str(&format!("<p>{}</p>", html_escape(t)));
            }
            Part::Link { label, href } => {
                text.push_str(&format!("\n{href}\n"));
                html.push_str(&format!(
                    "<p><a href=\"{}\">{}</a></p>",
                    html_escape(href),
                    html_escape(label)
                ));
            }
        }
    }
    Email {
        to: to.to_owned(),
        subject: subject.to_owned(),
        text,
        html,
    }
}

/// The password-reset message: a link to the front-end with the token, valid 30 minutes.
pub fn password_reset(to: &str, name: &str, link: &str) -> Email {
    compose(
        to,
        "Reset your Molar password",
        name,
        &[
            Part::Text(
                "someone (hopefully you) asked to reset the password of your Molar account. \
                 Choose a new password here within 30 minutes:"
                    .into(),
            ),
            Part::Link {
                label: "Reset your password",
                href: link,
            },
            Part::Text(
                "The link works once. If you did not ask for this, ignore this message: your \
                 password stays as it is."
                    .into(),
            ),
        ],
    )
}

/// The verification message: a link to the front-end with the token, valid
/// `hours` hours, to the address being verified.
pub fn verify_email(to: &str, name: &str, link: &str, hours: i64) -> Email {
    compose(
        to,
        "Confirm your email address for Molar",
        name,
        &[
            Part::Text(format!(
                "please confirm that this address ({to}) is yours, to sign in to Molar with it:"
            )),
            Part::Link {
                label: "Confirm your address",
                href: link,
            },
            Part::Text(format!(
                "The link works once, for {hours} hours. If you did not expect this message, \
                 ignore it: the address is not used until it is confirmed."
            )),
        ],
    )
}

/// The notice to an old address that the account now signs in with another.
pub fn email_changed(to: &str, name: &str, new_address: &str) -> Email {
    compose(
        to,
        "Your Molar sign-in address has changed",
        name,
        &[
            Part::Text(format!(
                "your Molar account now signs in with {new_address} instead of this address."
            )),
            Part::Text("If you did not make this change, tell your clinic's owner at once.".into()),
        ],
    )
}

/// The notice that an owner turned a user's two-factor sign-in off.
pub fn mfa_reset(to: &str, name: &str, by: &str) -> Email {
    compose(
        to,
        "Two-factor sign-in was turned off for your Molar account",
        name,
        &[
            Part::Text(format!(
                "{by} turned off two-factor sign-in for your Molar account, and your sessions \
                 have ended. Sign in with your password and set it up again with your new device."
            )),
            Part::Text("If you did not ask for this, tell your clinic's owner at once.".into()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_links_are_escaped_in_html_only() {
        let e = password_reset(
            "a@b.example",
            "<Eve & Co>",
            "https://app.example/reset?token=x&y=\"z\"",
        );
        assert!(e.text.contains("Hello <Eve & Co>,"));
        assert!(e.html.contains("Hello &lt;Eve &amp; Co&gt;,"));
        assert!(e
            .html
            .contains("href=\"https://app.example/reset?token=x&amp;y=&quot;z&quot;\""));
        assert_eq!(
            e.receipt(),
            serde_json::json!({"to": "a@b.example", "subject": e.subject})
        );
    }
}
